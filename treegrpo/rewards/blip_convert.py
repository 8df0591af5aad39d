"""Convert the ImageReward checkpoint (THUDM/ImageReward ``ImageReward.pt``) to transformers' BLIP.

ImageReward-v1.0 is BLIP: a ViT-L/16 visual encoder (``blip.visual_encoder.*``, timm layout), a
BERT text encoder with cross-attention to the image tokens (``blip.text_encoder.*``, BLIP's
``med.py`` layout) and an MLP head (``mlp.layers.*``). This module maps those keys onto
:class:`transformers.BlipVisionModel` and :class:`transformers.BlipTextModel` (with
``add_pooling_layer=False``) and our :class:`ImageRewardHead` (same layout as the official MLP),
derives their configs from the tensor shapes, and writes a converted folder
(``model.safetensors`` + ``config.json``) so the pickle is read once.

Key mapping (ImageReward -> ours):

- ``blip.visual_encoder.cls_token / pos_embed / patch_embed.proj.*`` ->
  ``vision.embeddings.class_embedding / position_embedding / patch_embedding.*``
- ``blip.visual_encoder.blocks.{i}.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2`` ->
  ``vision.encoder.layers.{i}.layer_norm1 / self_attn.qkv / self_attn.projection / layer_norm2 /
  mlp.fc1 / mlp.fc2`` (the fused qkv stays fused: both reshape it as ``[3, heads, head_dim]``)
- ``blip.visual_encoder.norm`` -> ``vision.post_layernorm``
- ``blip.text_encoder.<name>`` -> ``text.<name>`` (BlipTextModel keeps med.py's names)
- ``mlp.layers.<name>`` -> ``head.layers.<name>``
- dropped: ``blip.text_encoder.embeddings.position_ids`` (an ``arange`` buffer) and
  ``blip.vision_proj.*`` / ``blip.text_proj.*`` (contrastive projections the score does not use).

Command line: ``python -m treegrpo.rewards.blip_convert ImageReward.pt OUT_DIR``.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from torch import nn

from .clip_convert import load_pickle_weights_only

StateDict = dict[str, torch.Tensor]

SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072
FORMAT_NAME = "treegrpo-image-reward"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
VISION_PREFIX = "blip.visual_encoder."
TEXT_PREFIX = "blip.text_encoder."
HEAD_PREFIX = "mlp.layers."
DROPPED_KEYS = ("blip.text_encoder.embeddings.position_ids",)
DROPPED_PREFIXES = ("blip.vision_proj.", "blip.text_proj.")
HEAD_DROPOUTS = (0.2, 0.2, 0.1)  # after the first three linears of the official MLP

# (ImageReward name, our BlipVisionModel name); "{i}" is a block index.
_VISION_NAMES = [
    ("cls_token", "embeddings.class_embedding"),
    ("pos_embed", "embeddings.position_embedding"),
    ("patch_embed.proj.weight", "embeddings.patch_embedding.weight"),
    ("patch_embed.proj.bias", "embeddings.patch_embedding.bias"),
    ("norm.weight", "post_layernorm.weight"),
    ("norm.bias", "post_layernorm.bias"),
]
_VISION_BLOCK_NAMES = [
    ("norm1", "layer_norm1"),
    ("attn.qkv", "self_attn.qkv"),
    ("attn.proj", "self_attn.projection"),
    ("norm2", "layer_norm2"),
    ("mlp.fc1", "mlp.fc1"),
    ("mlp.fc2", "mlp.fc2"),
]
_THEIR_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")
_OUR_BLOCK = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")


class ImageRewardHead(nn.Module):
    """The ImageReward MLP: ``[N, dims[0]] -> [N, 1]``, linears with no activation in between.

    ``layers`` has the official index layout (linear, dropout, linear, dropout, linear,
    dropout, linear, linear), so its keys are ``layers.{0,2,4,6,7}.{weight,bias}``.
    """

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        if len(dims) != 6 or dims[-1] != 1:
            raise ValueError(f"head dims must list 6 widths ending in 1 (e.g. [768, 1024, 128, "
                             f"64, 16, 1]), got {dims}")
        modules: list[nn.Module] = []
        for index in range(5):
            modules.append(nn.Linear(dims[index], dims[index + 1]))
            if index < len(HEAD_DROPOUTS):
                modules.append(nn.Dropout(HEAD_DROPOUTS[index]))
        self.layers = nn.Sequential(*modules)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, dims[0]] -> raw scores [N, 1]."""
        return self.layers(features)


def _vision_to_ours(name: str) -> str:
    """ImageReward visual-encoder key (without prefix) -> BlipVisionModel key."""
    for theirs, ours in _VISION_NAMES:
        if name == theirs:
            return ours
    match = _THEIR_BLOCK.fullmatch(name)
    if match:
        for theirs, ours in _VISION_BLOCK_NAMES:
            if match.group(2) == theirs:
                return f"encoder.layers.{match.group(1)}.{ours}.{match.group(3)}"
    raise ValueError(f"unknown ImageReward visual-encoder key {VISION_PREFIX + name!r}")


def _vision_to_theirs(name: str) -> str:
    """BlipVisionModel key -> ImageReward visual-encoder key (without prefix)."""
    for theirs, ours in _VISION_NAMES:
        if name == ours:
            return theirs
    match = _OUR_BLOCK.fullmatch(name)
    if match:
        for theirs, ours in _VISION_BLOCK_NAMES:
            if match.group(2) == ours:
                return f"blocks.{match.group(1)}.{theirs}.{match.group(3)}"
    raise ValueError(f"unknown BlipVisionModel key {name!r}")


def convert_image_reward_state_dict(sd: StateDict) -> tuple[StateDict, StateDict, StateDict]:
    """ImageReward-layout state dict -> ``(vision_sd, text_sd, head_sd)``.

    ``vision_sd`` loads into ``BlipVisionModel``, ``text_sd`` into
    ``BlipTextModel(add_pooling_layer=False)``, ``head_sd`` into :class:`ImageRewardHead`.
    Tensors are shared, not copied. Raises ValueError on keys it does not know.
    """
    vision, text, head = {}, {}, {}
    unknown = []
    for key, value in sd.items():
        if key in DROPPED_KEYS or key.startswith(DROPPED_PREFIXES):
            continue
        if key.startswith(VISION_PREFIX):
            vision[_vision_to_ours(key[len(VISION_PREFIX):])] = value
        elif key.startswith(TEXT_PREFIX):
            text[key[len(TEXT_PREFIX):]] = value
        elif key.startswith(HEAD_PREFIX):
            head["layers." + key[len(HEAD_PREFIX):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"not an ImageReward checkpoint: unknown keys {unknown[:10]} (expected "
                         f"prefixes {VISION_PREFIX!r}, {TEXT_PREFIX!r}, {HEAD_PREFIX!r})")
    for part, name in ((vision, "visual encoder"), (text, "text encoder"), (head, "MLP head")):
        if not part:
            raise ValueError(f"not an ImageReward checkpoint: no {name} weights found")
    return vision, text, head


def unconvert_image_reward_state_dict(vision_sd: StateDict, text_sd: StateDict,
                                      head_sd: StateDict) -> StateDict:
    """Inverse of :func:`convert_image_reward_state_dict` (without the dropped keys)."""
    sd = {VISION_PREFIX + _vision_to_theirs(k): v for k, v in vision_sd.items()}
    sd.update({TEXT_PREFIX + k: v for k, v in text_sd.items()})
    for key, value in head_sd.items():
        if not key.startswith("layers."):
            raise ValueError(f"unknown head key {key!r}; expected 'layers.<index>.<weight|bias>'")
        sd[HEAD_PREFIX + key[len("layers."):]] = value
    return sd


def _count_layers(sd: StateDict, pattern: str) -> int:
    indices = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    if indices != set(range(len(indices))):
        raise ValueError(f"layer indices {sorted(indices)} are not 0..n-1")
    return len(indices)


def _heads(width: int, head_dim: int, what: str) -> int:
    if width % head_dim:
        raise ValueError(f"{what} width {width} is not a multiple of head_dim={head_dim}")
    return width // head_dim


def vision_config_from_state_dict(vision_sd: StateDict, head_dim: int = 64) -> dict:
    """BlipVisionConfig kwargs read from the tensor shapes (heads = width / head_dim; the
    official ViT-L/16 has width 1024 and 16 heads of 64). LayerNorm eps is BLIP's 1e-6."""
    width = vision_sd["embeddings.class_embedding"].shape[-1]
    patch = vision_sd["embeddings.patch_embedding.weight"].shape[-1]
    grid = round((vision_sd["embeddings.position_embedding"].shape[1] - 1) ** 0.5)
    return dict(
        hidden_size=width,
        intermediate_size=vision_sd["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count_layers(vision_sd, r"encoder\.layers\.(\d+)\."),
        num_attention_heads=_heads(width, head_dim, "vision"),
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )


def text_config_from_state_dict(text_sd: StateDict, head_dim: int = 64) -> dict:
    """BlipTextConfig kwargs read from the shapes (the official med_config: BERT-base, 12 heads
    of 64, vocab 30524, cross-attention width 1024). ``is_decoder=True`` only makes
    transformers build the cross-attention layers; the reward calls it bidirectionally."""
    vocab, width = text_sd["embeddings.word_embeddings.weight"].shape
    return dict(
        vocab_size=vocab,
        hidden_size=width,
        encoder_hidden_size=text_sd["encoder.layer.0.crossattention.self.key.weight"].shape[1],
        intermediate_size=text_sd["encoder.layer.0.intermediate.dense.weight"].shape[0],
        num_hidden_layers=_count_layers(text_sd, r"encoder\.layer\.(\d+)\."),
        num_attention_heads=_heads(width, head_dim, "text"),
        max_position_embeddings=text_sd["embeddings.position_embeddings.weight"].shape[0],
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        is_decoder=True,
        use_cache=False,
    )


def head_dims_from_state_dict(head_sd: StateDict) -> list[int]:
    """Widths of the MLP head, e.g. [768, 1024, 128, 64, 16, 1]."""
    weights = [head_sd[f"layers.{i}.weight"] for i in (0, 2, 4, 6, 7)]
    return [weights[0].shape[1]] + [w.shape[0] for w in weights]


def load_image_reward_checkpoint(path: str | Path) -> StateDict:
    """Read an ImageReward-layout state dict from ``.pt`` (weights-only unpickling) or
    ``.safetensors``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = load_pickle_weights_only(path)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} holds a {type(sd).__name__}, expected a state dict")
    return sd


def save_converted(out_dir: str | Path, vision_sd: StateDict, text_sd: StateDict,
                   head_sd: StateDict, head_dim: int = 64) -> Path:
    """Write ``model.safetensors`` (keys ``vision.*``, ``text.*``, ``head.*``) and
    ``config.json`` (vision/text configs, head dims, score mean/std) into ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(
        format=FORMAT_NAME,
        vision_config=vision_config_from_state_dict(vision_sd, head_dim),
        text_config=text_config_from_state_dict(text_sd, head_dim),
        head_dims=head_dims_from_state_dict(head_sd),
        score_mean=SCORE_MEAN,
        score_std=SCORE_STD,
    )
    tensors = {}
    for prefix, part in (("vision.", vision_sd), ("text.", text_sd), ("head.", head_sd)):
        tensors.update({prefix + k: v.detach().cpu().contiguous() for k, v in part.items()})
    save_file(tensors, str(out / WEIGHTS_NAME))
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_converted(folder: str | Path) -> tuple[dict, StateDict, StateDict, StateDict]:
    """Read a folder written by :func:`save_converted` -> ``(config, vision_sd, text_sd, head_sd)``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    if config.get("format") != FORMAT_NAME:
        raise ValueError(f"{folder / CONFIG_NAME} is not a {FORMAT_NAME!r} config")
    parts: dict[str, StateDict] = {"vision.": {}, "text.": {}, "head.": {}}
    for key, value in load_file(str(folder / WEIGHTS_NAME)).items():
        prefix = key.split(".", 1)[0] + "."
        if prefix not in parts:
            raise ValueError(f"unexpected key {key!r} in {folder / WEIGHTS_NAME}")
        parts[prefix][key[len(prefix):]] = value
    return config, parts["vision."], parts["text."], parts["head."]


def convert_checkpoint(checkpoint: str | Path, out_dir: str | Path, head_dim: int = 64) -> Path:
    """ImageReward.pt (or .safetensors) -> converted folder ``out_dir``."""
    vision, text, head = convert_image_reward_state_dict(load_image_reward_checkpoint(checkpoint))
    return save_converted(out_dir, vision, text, head, head_dim)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="ImageReward.pt from the THUDM/ImageReward hub repo")
    parser.add_argument("out_dir", help="folder to write model.safetensors and config.json into")
    parser.add_argument("--head-dim", type=int, default=64, help="attention head width (64)")
    args = parser.parse_args(argv)
    out = convert_checkpoint(args.checkpoint, args.out_dir, args.head_dim)
    print(f"wrote {out / WEIGHTS_NAME} and {out / CONFIG_NAME}")


if __name__ == "__main__":
    main()
