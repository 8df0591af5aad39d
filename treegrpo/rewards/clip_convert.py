"""Checkpoint converters for the CLIP-family rewards.

(a) :func:`open_clip_to_transformers`: an open_clip ``CLIP`` state dict (the layout of the
    HPS-v2 / HPS-v2.1 checkpoints, ViT-H-14) -> a ``transformers.CLIPModel`` state dict and a
    ``CLIPConfig`` derived from the tensor shapes. Only the attention head counts and the
    activation cannot be read from shapes: they are arguments.
(b) :func:`aesthetic_mlp_from_state_dict`: the LAION improved-aesthetic-predictor MLP
    (``sac+logos+ava1-l14-linearMSE.pth``) -> :class:`AestheticMLP`.

Convert an HPS checkpoint once into a transformers folder (safetensors)::

    python -m treegrpo.rewards.clip_convert HPS_v2.1_compressed.pt weights/hps_v2.1
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from torch import nn

# open_clip ViT widths whose configs set ``head_width`` != 64 (ViT-H-14: 1280 / 80 = 16 heads,
# ViT-g-14: 1408 / 88 = 16, ViT-bigG-14: 1664 / 104 = 16). Other widths: 64 per head.
OPEN_CLIP_VISION_HEAD_WIDTH = {1280: 80, 1408: 88, 1664: 104}
ACTIVATIONS = ("gelu", "quick_gelu")
IGNORED_KEYS = ("attn_mask", "visual.attn_mask")
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_NAMES = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}


def load_pickle_weights_only(path: Path):
    """``torch.load(path, weights_only=True)``; a pickle holding more than tensors gets an error
    with the one-line command that re-saves it as safetensors (for a file the user trusts)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # the pickle holds something beyond tensors
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RuntimeError(
            f"{path} cannot be read with torch.load(weights_only=True) ({first_line}). If you trust "
            f"the file, re-save it as safetensors once and point the reward at that file: "
            f"python -c \"import torch; from safetensors.torch import save_file; "
            f"sd = torch.load('{path}', map_location='cpu', weights_only=False); "
            f"sd = sd.get('state_dict', sd); "
            f"save_file({{k: v.contiguous() for k, v in sd.items()}}, '{path.with_suffix('.safetensors')}')\""
        ) from error


def load_torch_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch pickle (``weights_only=True``; a nested
    ``'state_dict'`` entry, as in HPS / Lightning checkpoints, is unwrapped; ``module.``
    prefixes of DDP checkpoints are removed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = load_pickle_weights_only(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _heads(width: int, heads: int | None, head_width: int, what: str) -> int:
    if heads is None:
        if width % head_width:
            raise ValueError(f"{what}: cannot infer the head count of width {width}; pass it explicitly")
        heads = width // head_width
    if heads <= 0 or width % heads:
        raise ValueError(f"{what}={heads} must be a positive divisor of the width {width}")
    return heads


def _num_layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    indices = {int(m.group(2)) for k in state if (m := _BLOCK.match(k)) and k.startswith(prefix)}
    if not indices or indices != set(range(len(indices))):
        raise ValueError(f"no consecutive '{prefix}transformer.resblocks.N' blocks in the state dict")
    return len(indices)


def _require(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"the open_clip state dict has no key {key!r} (expected the plain CLIP "
                         f"layout: visual.conv1, visual.transformer.resblocks.N..., token_embedding...)")
    return state[key]


def open_clip_config(state: dict[str, torch.Tensor], vision_heads: int | None = None,
                     text_heads: int | None = None, hidden_act: str = "gelu"):
    """A ``transformers.CLIPConfig`` read from the shapes of an open_clip state dict.

    vision: width = conv1 out channels, patch = conv1 kernel, image size = patch *
    sqrt(#positions - 1), layers = #resblocks, MLP width = c_fc rows; text likewise (vocab from
    token_embedding, context from positional_embedding); projection dim from ``visual.proj``.
    Heads default to width / head_width (:data:`OPEN_CLIP_VISION_HEAD_WIDTH`, else 64).
    """
    from transformers import CLIPConfig

    if hidden_act not in ACTIVATIONS:
        raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, got {hidden_act!r}")
    conv = _require(state, "visual.conv1.weight")  # [width, 3, patch, patch]
    v_width, patch = conv.shape[0], conv.shape[-1]
    grid = round((_require(state, "visual.positional_embedding").shape[0] - 1) ** 0.5)
    proj = _require(state, "visual.proj")  # [width, embed_dim]
    vocab, t_width = _require(state, "token_embedding.weight").shape
    text_proj = _require(state, "text_projection")  # [text width, embed_dim]
    if text_proj.shape[1] != proj.shape[1]:
        raise ValueError(f"visual.proj {list(proj.shape)} and text_projection "
                         f"{list(text_proj.shape)} disagree on the embedding size")
    scale = state.get("logit_scale", torch.tensor(2.6592))
    vision = dict(
        hidden_size=v_width, patch_size=patch, image_size=grid * patch,
        num_hidden_layers=_num_layers(state, "visual."),
        intermediate_size=_require(state, "visual.transformer.resblocks.0.mlp.c_fc.weight").shape[0],
        num_attention_heads=_heads(v_width, vision_heads, OPEN_CLIP_VISION_HEAD_WIDTH.get(v_width, 64),
                                   "vision_heads"),
        hidden_act=hidden_act, layer_norm_eps=1e-5, projection_dim=proj.shape[1],
    )
    text = dict(
        vocab_size=vocab, hidden_size=t_width,
        max_position_embeddings=_require(state, "positional_embedding").shape[0],
        num_hidden_layers=_num_layers(state, "transformer."),
        intermediate_size=_require(state, "transformer.resblocks.0.mlp.c_fc.weight").shape[0],
        num_attention_heads=_heads(t_width, text_heads, 64, "text_heads"),
        hidden_act=hidden_act, layer_norm_eps=1e-5, projection_dim=proj.shape[1],
        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=proj.shape[1],
                      logit_scale_init_value=float(scale))


def _convert_block(name: str, tensor: torch.Tensor, out: str, result: dict[str, torch.Tensor]) -> None:
    """One resblock tensor (name relative to the block) into ``result`` under ``out`` (HF prefix)."""
    if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
        suffix = "weight" if name.endswith("weight") else "bias"
        for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
            result[f"{out}.self_attn.{part}.{suffix}"] = chunk.clone()
        return
    module, _, param = name.rpartition(".")
    if module not in _BLOCK_NAMES:
        raise ValueError(f"unsupported open_clip block parameter {name!r} (LayerScale, scaled "
                         f"cosine attention and other variants are not handled)")
    result[f"{out}.{_BLOCK_NAMES[module]}.{param}"] = tensor


def open_clip_to_transformers(state: dict[str, torch.Tensor], vision_heads: int | None = None,
                              text_heads: int | None = None, hidden_act: str = "gelu"):
    """open_clip ``CLIP`` state dict -> (``CLIPModel`` state dict, ``CLIPConfig``).

    In-projections ``[3 w, w]`` split into q / k / v; ``visual.proj`` / ``text_projection``
    ``[w, d]`` become the transposed ``Linear`` weights ``[d, w]``. A ``text.`` prefix (open_clip
    ``CustomTextCLIP``) is accepted; any key left unconverted raises ``ValueError``.
    """
    state = {(k[len("text."):] if k.startswith("text.") else k): v for k, v in state.items()
             if k not in IGNORED_KEYS}
    config = open_clip_config(state, vision_heads, text_heads, hidden_act)
    plain = {
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    }
    result: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in plain:
            result[plain[key]] = tensor
        elif key == "visual.proj":
            result["visual_projection.weight"] = tensor.t().contiguous()
        elif key == "text_projection":
            result["text_projection.weight"] = tensor.t().contiguous()
        elif match := _BLOCK.match(key):
            tower = "vision_model" if match.group(1) else "text_model"
            _convert_block(match.group(3), tensor, f"{tower}.encoder.layers.{match.group(2)}", result)
        else:
            raise ValueError(f"unexpected key {key!r} in the open_clip state dict")
    if "logit_scale" not in result:
        result["logit_scale"] = torch.tensor(config.logit_scale_init_value)
    return result, config


def clip_model_from_open_clip(state: dict[str, torch.Tensor], vision_heads: int | None = None,
                              text_heads: int | None = None, hidden_act: str = "gelu"):
    """A float32 ``transformers.CLIPModel`` (eval mode) holding the converted open_clip weights."""
    from transformers import CLIPModel

    converted, config = open_clip_to_transformers(state, vision_heads, text_heads, hidden_act)
    model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]  # buffers in old versions
    if missing or unexpected:
        raise ValueError(f"converted state dict does not fit CLIPModel: missing {missing}, "
                         f"unexpected {unexpected}")
    return model.float().eval()


class AestheticMLP(nn.Module):
    """The LAION improved-aesthetic-predictor head: [B, dim] L2-normalised CLIP image embeddings
    -> [B, 1]. Linear layers with no activation in between (the shipped ``linearMSE`` model);
    dropout is inactive in eval mode. Parameter names match the original (``layers.0.weight``...)."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def aesthetic_mlp_from_state_dict(state: dict[str, torch.Tensor]) -> AestheticMLP:
    """An :class:`AestheticMLP` (float32, eval) from the ``sac+logos+ava1-l14-linearMSE.pth``
    tensors (input size read from ``layers.0.weight``); wrong keys or shapes raise ValueError."""
    if "layers.0.weight" not in state:
        raise ValueError(f"not an aesthetic-predictor state dict: no 'layers.0.weight' "
                         f"(keys: {sorted(state)[:8]})")
    mlp = AestheticMLP(state["layers.0.weight"].shape[1])
    expected = mlp.state_dict()
    if set(state) != set(expected):
        raise ValueError(f"aesthetic MLP keys differ: missing {sorted(set(expected) - set(state))}, "
                         f"unexpected {sorted(set(state) - set(expected))}")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise ValueError(f"aesthetic MLP {key}: shape {list(tensor.shape)}, expected "
                             f"{list(expected[key].shape)}")
    mlp.load_state_dict({k: v.float() for k, v in state.items()})
    return mlp.eval()


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Convert an open_clip / HPS checkpoint into a "
                                                 "transformers CLIPModel folder (safetensors).")
    parser.add_argument("checkpoint", help="e.g. HPS_v2.1_compressed.pt")
    parser.add_argument("out_dir")
    parser.add_argument("--vision-heads", type=int, default=None)
    parser.add_argument("--text-heads", type=int, default=None)
    parser.add_argument("--hidden-act", choices=ACTIVATIONS, default="gelu")
    args = parser.parse_args(argv)
    model = clip_model_from_open_clip(load_torch_state_dict(args.checkpoint), args.vision_heads,
                                      args.text_heads, args.hidden_act)
    model.save_pretrained(args.out_dir, safe_serialization=True)
    print(f"wrote {args.out_dir}")
    return Path(args.out_dir)


if __name__ == "__main__":
    main()
