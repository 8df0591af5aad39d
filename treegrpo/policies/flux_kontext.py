"""FLUX.1 Kontext (image editing) policy: FLUX with the input image's tokens beside the target's.

Each prompt record names an input image (field ``image``, see :mod:`treegrpo.image_inputs`). The
policy resizes it to ``image_size`` x ``image_size``, encodes it once with the VAE (the latent
distribution's mode, shifted and scaled as ``FluxKontextPipeline`` does), packs it into 2x2
patches and keeps it in the conditioning as ``image_tokens [P, N_img, 64]`` (cached per file, like
the text embeddings). Every forward appends these tokens after the target's, with rotary ids
whose first coordinate is 1 (the target's is 0), and keeps only the target's ``N`` outputs, as the
pipeline does. The schedule's shift ``mu`` depends on the target's tokens only.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..embedding_cache import DEFAULT_CACHE_SIZE, EmbeddingCache
from ..image_inputs import (DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, file_key, load_image,
                            resolve_image_path)
from ..registry import POLICIES
from .flux import FluxPolicy, image_position_ids, pack_latents, unpack_latents


def condition_position_ids(height: int, width: int) -> torch.Tensor:
    """[(H/2)(W/2), 3] rotary ids of the input image's packed patches: (1, row, column)."""
    ids = image_position_ids(height, width)
    ids[:, 0] = 1.0
    return ids


@POLICIES.register_module()
class FluxKontextPolicy(FluxPolicy):
    """FLUX.1 Kontext-dev edit policy (``FluxKontextPipeline``); LoRA or full weights as FluxPolicy.

    Args (besides :class:`FluxPolicy`'s, e.g. ``guidance`` 2.5 as the Kontext model card uses):
        image_size: side in pixels the input image is resized to (a multiple of 16); None: the
            generation ``resolution``.
        image_root: folder that relative ``image`` paths are read from: the prompt file's folder.
        allow_absolute_image_paths: accept absolute ``image`` paths (refused by default).
        max_image_pixels / max_image_bytes: caps on an input image (also under Pillow's limit).
        image_cache_size: input images whose tokens are kept (least recently used dropped; CPU).
    """

    pipeline_class = "FluxKontextPipeline"
    reads_records = True

    def __init__(self, model_path: str, resolution: int = 512, image_size: int | None = None,
                 image_root: str | None = None, allow_absolute_image_paths: bool = False,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                 image_cache_size: int = DEFAULT_CACHE_SIZE, **flux_args) -> None:
        super().__init__(model_path, resolution=resolution, **flux_args)
        patch = 2 * self.pipe.vae_scale_factor
        image_size = resolution if image_size is None else image_size
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < patch or image_size % patch:
            raise ValueError(f"image_size must be a positive multiple of {patch} (pixels), got "
                             f"image_size={image_size!r}; None uses the resolution")
        for key, value in (("max_image_pixels", max_image_pixels), ("max_image_bytes", max_image_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if image_root is not None and not Path(image_root).is_dir():
            raise ValueError(f"image_root={image_root!r} is not a folder: set policy.image_root to the "
                             "prompt file's folder")
        self.image_size, self.image_root = image_size, image_root
        self.allow_absolute_image_paths = bool(allow_absolute_image_paths)
        self.max_image_pixels, self.max_image_bytes = max_image_pixels, max_image_bytes
        side = image_size // self.pipe.vae_scale_factor
        self.condition_ids = condition_position_ids(side, side)
        self.image_cache = EmbeddingCache(image_cache_size)

    # --- conditioning -------------------------------------------------------------------
    def image_paths(self, prompts: list[str], records: list[dict] | None) -> list[Path]:
        """One checked input-image path per prompt (errors name the row and the fix)."""
        if records is None or len(records) != len(prompts):
            raise ValueError(f"{type(self).__name__} needs one prompt record with an 'image' path per "
                             f"prompt (got {None if records is None else len(records)} records for "
                             f"{len(prompts)} prompts): use a jsonl prompt file with an 'image' field")
        paths = []
        for row, (prompt, record) in enumerate(zip(prompts, records)):
            where = f"prompt record {row} ({prompt[:60]!r})"
            if not isinstance(record, dict) or "image" not in record:
                raise ValueError(f"{where} has no 'image' field: give each jsonl row "
                                 '{"prompt": ..., "image": "<path relative to the prompt file>"}')
            paths.append(resolve_image_path(record["image"], self.image_root,
                                            self.allow_absolute_image_paths, where))
        return paths

    @torch.no_grad()
    def encode_images(self, paths: list[Path]) -> dict[str, torch.Tensor]:
        """Input images -> {'image_tokens': [P, N_img, 4C]} (VAE mode, shifted, scaled, packed)."""
        processor, size = self.pipe.image_processor, self.image_size
        pixels = []
        for row, path in enumerate(paths):
            image = load_image(path, f"input image {row}", self.max_image_pixels, self.max_image_bytes)
            pixels.append(processor.preprocess(processor.resize(image, size, size), size, size))
        batch = torch.cat(pixels).to(self.device, self.vae.dtype)
        latents = self.vae.encode(batch).latent_dist.mode()
        latents = (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor
        return {"image_tokens": pack_latents(latents)}

    @torch.no_grad()
    def encode(self, prompts: list[str], records: list[dict] | None = None) -> dict[str, torch.Tensor]:
        """Text conditioning (:meth:`encode_prompts`, cached per prompt) plus ``image_tokens``
        [P, N_img, 64] of each record's input image (cached per file: path, size, mtime)."""
        paths = self.image_paths(prompts, records)
        keys = [file_key(path) for path in paths]
        by_key = dict(zip(keys, paths))
        images = self.image_cache.encode(keys, lambda missing: self.encode_images([by_key[k] for k in missing]),
                                         self.device)
        return {**self.encode_prompts(prompts), **images}

    # --- model --------------------------------------------------------------------------
    def predict(self, latents, level, cond, guidance_scale: float = 1.0, model=None):
        """As :meth:`Policy.predict`; with true CFG the negative prompt keeps the input image."""
        if guidance_scale <= 1.0:
            return super().predict(latents, level, cond, guidance_scale, model)
        batch = latents.shape[0]
        null = {**self.null_condition(batch), "image_tokens": cond["image_tokens"]}
        both = {key: torch.cat([null[key], cond[key]]) for key in cond}
        self.nfe += 2 * batch
        out = self.model_output(torch.cat([latents, latents]), torch.cat([level, level]), both, model)
        uncond, conditional = out.chunk(2)
        return uncond + guidance_scale * (conditional - uncond)

    def model_output(self, latents, level, cond, model=None):
        """latents [B, C, H, W], level [B], cond with image_tokens [B, N_img, 4C] -> velocity
        [B, C, H, W] of the target tokens only."""
        if "image_tokens" not in cond:
            raise ValueError(f"{type(self).__name__} needs the input image's tokens: build the "
                             "conditioning with policy.encode(prompts, records), not encode_prompts")
        net = self.denoiser if model is None else model
        dtype = self.denoiser.dtype
        batch, _, height, width = latents.shape
        device = latents.device
        timestep, guidance = self.timestep_and_guidance(level, batch, device, dtype)
        target = pack_latents(latents.to(dtype))
        tokens = torch.cat([target, cond["image_tokens"].to(device, dtype)], dim=1)
        ids = torch.cat([image_position_ids(height, width), self.condition_ids]).to(device=device, dtype=dtype)
        embeds = cond["prompt_embeds"].to(dtype)
        packed = net(
            hidden_states=tokens, timestep=timestep, guidance=guidance,
            pooled_projections=cond["pooled"].to(dtype), encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, dtype=dtype, device=device), img_ids=ids,
            return_dict=False,
        )[0]
        return unpack_latents(packed[:, : target.shape[1]], height, width)
