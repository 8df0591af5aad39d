"""Rewards computed from image statistics alone (no model, no download).

- ``JPEGCompressibility`` / ``JPEGIncompressibility``: minus / plus the JPEG file size in kB
  (the compressibility rewards of DDPO, Black et al. 2023).
- ``Colorfulness``: the colourfulness metric of Hasler & Suesstrunk (2003) on the 0-255 scale.

All take images ``[L, 3, H, W]`` float in [0, 1] and return ``[L]`` float32 on the images' device.
"""
from __future__ import annotations

import io

import torch
from PIL import Image

from treegrpo.registry import REWARDS
from treegrpo.rewards.base import Reward, check_images


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[L, 3, H, W] float in [0, 1] -> [L, H, W, 3] uint8 on CPU (clamped, rounded)."""
    scaled = (images.detach().float().clamp(0.0, 1.0) * 255.0).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu()


def jpeg_sizes_kb(images: torch.Tensor, quality: int) -> torch.Tensor:
    """[L, 3, H, W] float in [0, 1] -> [L] float32: size in kB (1000 bytes) of each image
    encoded in memory as a JPEG by PIL at ``quality``."""
    sizes = []
    for pixels in to_uint8(images).numpy():
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


def colorfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler & Suesstrunk colourfulness of [L, 3, H, W] images in [0, 1] -> [L] float32.

    On the 0-255 scale: ``rg = R - G``, ``yb = 0.5 (R + G) - B``;
    ``sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2)`` with population std
    over the pixels of each image.
    """
    rgb = images.float() * 255.0
    red, green, blue = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    rg = (red - green).flatten(1)
    yb = (0.5 * (red + green) - blue).flatten(1)
    std = torch.sqrt(rg.var(dim=1, correction=0) + yb.var(dim=1, correction=0))
    mean = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
    return std + 0.3 * mean


def _check_quality(quality: int) -> int:
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer in 1..100, got {quality!r}")
    return quality


@REWARDS.register_module()
class JPEGCompressibility(Reward):
    """Reward = -(JPEG size in kB) at ``quality``: smaller files (simpler images) score higher."""

    sign = -1.0

    def __init__(self, quality: int = 95) -> None:
        self.quality = _check_quality(quality)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts, self.name)
        sizes = jpeg_sizes_kb(images, self.quality)
        return (self.sign * sizes).to(images.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(quality={self.quality})"


@REWARDS.register_module()
class JPEGIncompressibility(JPEGCompressibility):
    """Reward = +(JPEG size in kB) at ``quality``: larger files (more detail) score higher."""

    sign = 1.0


@REWARDS.register_module()
class Colorfulness(Reward):
    """Reward = Hasler & Suesstrunk colourfulness (0-255 scale); grey images score 0."""

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts, self.name)
        return colorfulness(images)
