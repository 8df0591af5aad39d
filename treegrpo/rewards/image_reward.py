"""ImageReward-v1.0 (Xu et al. 2023, THUDM/ImageReward) on transformers' BLIP classes.

Score of one (image, prompt), as in the official ``ImageReward.score`` / ``inference_rank``:

1. image: resize the shorter side to 224 (bicubic), centre crop 224x224, normalise with the
   CLIP mean/std -> BLIP ViT-L/16 -> image tokens ``[B, 197, 1024]``;
2. prompt: bert-base-uncased tokens (plus the added ``[DEC]`` / ``[ENC]`` tokens), padded and
   truncated to 35 -> BERT text encoder with cross-attention to the image tokens;
3. hidden state of the first token (``[CLS]``, ``[B, 768]``) -> MLP 768-1024-128-64-16-1 ->
   ``(raw - 0.16717362830052426) / 1.0333394966054072``.

(The official scorer keeps ``[CLS]`` as the first token; it does not swap in ``[ENC]``.)

Weights: ``ImageReward.pt`` from the hub repo ``THUDM/ImageReward`` (a state dict, read with
``torch.load(weights_only=True)``), an ImageReward-layout ``.safetensors``, or a folder written by
``python -m treegrpo.rewards.blip_convert ImageReward.pt OUT_DIR`` (faster to load).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from treegrpo.registry import REWARDS
from treegrpo.rewards import blip_convert
from treegrpo.rewards.base import Reward, check_images
from treegrpo.rewards.blip_convert import ImageRewardHead
from treegrpo.rewards.clip_preprocess import OPENAI_CLIP_MEAN as CLIP_MEAN
from treegrpo.rewards.clip_preprocess import OPENAI_CLIP_STD as CLIP_STD
from treegrpo.rewards.clip_preprocess import clip_preprocess

MAX_TEXT_LENGTH = 35
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HUB_HINT = ("download ImageReward.pt from the Hugging Face hub repo 'THUDM/ImageReward' (e.g. "
            "`huggingface-cli download THUDM/ImageReward ImageReward.pt --local-dir DIR`)")


def preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, 3, H, W] float in [0, 1] -> normalised float32 pixels [B, 3, size, size]: the official
    ``Resize(size, BICUBIC), CenterCrop(size), Normalize(CLIP mean, std)`` in torch (see
    :func:`treegrpo.rewards.clip_preprocess.clip_preprocess`; no uint8 round trip)."""
    return clip_preprocess(images.float().clamp(0.0, 1.0), size, CLIP_MEAN, CLIP_STD, "round")


class ImageRewardModel(nn.Module):
    """BLIP vision + cross-attending text encoder + MLP head, scoring image/prompt pairs."""

    def __init__(self, vision_config: dict, text_config: dict, head_dims: list[int],
                 score_mean: float = blip_convert.SCORE_MEAN,
                 score_std: float = blip_convert.SCORE_STD) -> None:
        super().__init__()
        from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        self.vision = BlipVisionModel(BlipVisionConfig(**vision_config))
        self.text = BlipTextModel(BlipTextConfig(**text_config), add_pooling_layer=False)
        self.head = ImageRewardHead(head_dims)
        self.score_mean = float(score_mean)
        self.score_std = float(score_std)

    @property
    def image_size(self) -> int:
        return int(self.vision.config.image_size)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, S, S] (normalised), input_ids / attention_mask [B, T] ->
        normalised scores [B] float32."""
        dtype = self.vision.embeddings.patch_embedding.weight.dtype
        image_embeds = self.vision(pixel_values=pixel_values.to(dtype)).last_hidden_state
        text_out = self.text(input_ids=input_ids, attention_mask=attention_mask,
                             encoder_hidden_states=image_embeds)
        features = text_out.last_hidden_state[:, 0, :].float()
        raw = self.head(features).squeeze(-1)
        return (raw - self.score_mean) / self.score_std


def build_image_reward_model(checkpoint: str | Path, head_dim: int = 64) -> ImageRewardModel:
    """ImageReward.pt / .safetensors (ImageReward layout) or a converted folder -> model (CPU,
    float32, eval). ``head_dim`` sets the attention heads of a non-converted checkpoint."""
    path = Path(checkpoint)
    if path.is_dir():
        config, vision_sd, text_sd, head_sd = blip_convert.load_converted(path)
        vision_config, text_config = config["vision_config"], config["text_config"]
        head_dims = config["head_dims"]
        stats = dict(score_mean=config["score_mean"], score_std=config["score_std"])
    else:
        sd = blip_convert.load_image_reward_checkpoint(path)
        vision_sd, text_sd, head_sd = blip_convert.convert_image_reward_state_dict(sd)
        vision_config = blip_convert.vision_config_from_state_dict(vision_sd, head_dim)
        text_config = blip_convert.text_config_from_state_dict(text_sd, head_dim)
        head_dims = blip_convert.head_dims_from_state_dict(head_sd)
        stats = {}
    model = ImageRewardModel(vision_config, text_config, head_dims, **stats)
    model.vision.load_state_dict(vision_sd, strict=True)
    model.text.load_state_dict(text_sd, strict=True)
    model.head.load_state_dict(head_sd, strict=True)
    return model.requires_grad_(False).eval()


def load_tokenizer(name_or_path: str):
    """bert-base-uncased tokenizer with BLIP's added tokens ('[DEC]' bos, '[ENC]')."""
    from transformers import BertTokenizer

    try:
        tokenizer = BertTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise OSError(
            f"ImageReward: cannot load the tokenizer {name_or_path!r} (config key 'tokenizer'); "
            f"give a local folder holding bert-base-uncased's vocab.txt or tokenizer.json (hub id "
            f"'google-bert/bert-base-uncased'): {error}"
        ) from error
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def _positive_int(value: int, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


@REWARDS.register_module()
class ImageReward(Reward):
    """``reward(images [L, 3, H, W] in [0, 1], prompts [L]) -> [L] float32`` (ImageReward-v1.0).

    Args:
        checkpoint: ``ImageReward.pt`` (hub repo ``THUDM/ImageReward``), an ImageReward-layout
            ``.safetensors`` file, or a folder converted by ``treegrpo.rewards.blip_convert``.
        tokenizer: local bert-base-uncased folder or hub id.
        device: where the model runs (None: the images' device); scores come back on the images'
            device.
        dtype: 'float32' | 'float16' | 'bfloat16' for the BLIP encoders (the head runs in float32).
        batch_size: images per forward pass.
        head_dim: attention head width used to read a non-converted checkpoint (64 for v1.0).

    Models load on the first call (or :meth:`load`).
    """

    def __init__(self, checkpoint: str | Path, tokenizer: str = "bert-base-uncased",
                 device: str | torch.device | None = None, dtype: str = "float32",
                 batch_size: int = 16, head_dim: int = 64) -> None:
        if not isinstance(checkpoint, (str, Path)) or not str(checkpoint):
            raise ValueError(f"checkpoint must be a path to ImageReward.pt or a converted folder, "
                             f"got {checkpoint!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.checkpoint = Path(checkpoint).expanduser()
        self.tokenizer_name = str(tokenizer)
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.head_dim = _positive_int(head_dim, "head_dim")
        self._model: ImageRewardModel | None = None
        self._tokenizer = None

    def load(self) -> None:
        """Load the weights and the tokenizer now (FileNotFoundError if the checkpoint is missing)."""
        if self._model is not None:
            return
        if not self.checkpoint.exists():
            raise FileNotFoundError(
                f"ImageReward checkpoint not found: {self.checkpoint} (config key 'checkpoint'). "
                f"{HUB_HINT}, then set checkpoint to the file, or convert it once with "
                f"`python -m treegrpo.rewards.blip_convert ImageReward.pt OUT_DIR` and set "
                f"checkpoint to OUT_DIR."
            )
        self._tokenizer = load_tokenizer(self.tokenizer_name)
        model = build_image_reward_model(self.checkpoint, self.head_dim)
        model.vision.to(DTYPES[self.dtype])
        model.text.to(DTYPES[self.dtype])
        self._model = model.to(self.device) if self.device is not None else model

    def _score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        model = self._model
        device = self.device if self.device is not None else images.device
        if next(model.parameters()).device != device:
            model.to(device)
        pixels = preprocess(images.to(device), model.image_size)
        tokens = self._tokenizer(prompts, padding="max_length", truncation=True,
                                 max_length=MAX_TEXT_LENGTH, return_tensors="pt")
        return model(pixels, tokens["input_ids"].to(device), tokens["attention_mask"].to(device))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts, self.name)
        self.load()
        scores = [self._score_batch(images[start:start + self.batch_size],
                                    list(prompts[start:start + self.batch_size]))
                  for start in range(0, len(prompts), self.batch_size)]
        if not scores:
            return torch.zeros(0, dtype=torch.float32, device=images.device)
        return torch.cat(scores).float().to(images.device)

    def __repr__(self) -> str:
        return (f"ImageReward(checkpoint={str(self.checkpoint)!r}, tokenizer={self.tokenizer_name!r},"
                f" dtype={self.dtype!r}, batch_size={self.batch_size})")
