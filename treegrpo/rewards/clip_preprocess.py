"""CLIP image preprocessing in pure torch (differentiable, no PIL round trip, no torchvision).

The evaluation transform of open_clip / OpenAI ``clip`` / ``CLIPImageProcessor``:

1. resize so that the *shortest* side equals ``size`` (the long side becomes
   ``int(size * long / short)``, truncated, as torchvision and transformers compute it), bicubic
   with antialiasing (``F.interpolate(..., antialias=True)`` follows PIL's bicubic filter);
2. center crop ``size x size``; the crop offset is ``round((H - size) / 2)`` (Python's rounding,
   as torchvision's ``CenterCrop`` used by open_clip and OpenAI CLIP) or ``(H - size) // 2``
   (``floor``, as ``CLIPImageProcessor.center_crop``); the two differ only for odd margins;
3. normalise per channel with the OpenAI CLIP mean and std (also used by the LAION ViT-H-14).

Unlike the reference pipelines, images are not quantised to uint8 first; by default the resized
values are clamped to [0, 1] (what the uint8 PIL path does to bicubic overshoot); ``clamp=False``
for pipelines that resize the float tensor.

HPS-v2 does not crop: its evaluation transform (hpsv2's bundled open_clip, ``image_transform(...,
resize_longest_max=True)``: ``ToTensor``, ``ResizeMaxSize``, ``Normalize``) letterboxes, see
:func:`letterbox_preprocess`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CROP_ROUNDINGS = ("round", "floor")


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the shortest side to ``size`` (long side truncated)."""
    if height <= 0 or width <= 0 or size <= 0:
        raise ValueError(f"height, width and size must be positive, got {height}, {width}, {size}")
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_crop_offsets(height: int, width: int, size: int, rounding: str = "round") -> tuple[int, int]:
    """(top, left) of a centred ``size x size`` crop of a ``height x width`` image.

    ``rounding='round'``: ``int(round(margin / 2))`` (torchvision); ``'floor'``: ``margin // 2``
    (transformers' ``CLIPImageProcessor``).
    """
    if rounding not in CROP_ROUNDINGS:
        raise ValueError(f"crop_rounding must be one of {CROP_ROUNDINGS}, got {rounding!r}")
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from a {height}x{width} image")
    if rounding == "round":
        return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return (height - size) // 2, (width - size) // 2


def letterbox_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the *longest* side to ``size`` keeping the aspect ratio.

    As open_clip's ``ResizeMaxSize``: ``scale = size / float(max(H, W))``, each side
    ``round(side * scale)`` (Python's rounding). ValueError if a side would become 0.
    """
    if height <= 0 or width <= 0 or size <= 0:
        raise ValueError(f"height, width and size must be positive, got {height}, {width}, {size}")
    scale = size / float(max(height, width))
    new_h, new_w = round(height * scale), round(width * scale)
    if new_h == 0 or new_w == 0:
        raise ValueError(f"a {height}x{width} image is too elongated to letterbox into {size}x{size} "
                         f"(a side would be 0 pixels); crop it to a less extreme aspect ratio first")
    return new_h, new_w


def letterbox_padding(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) black border that centres a ``height x width`` image in
    ``size x size``: the smaller half of an odd margin goes left / top (``ResizeMaxSize`` pads
    ``[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2]``)."""
    pad_h, pad_w = size - height, size - width
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"cannot pad a {height}x{width} image to {size}x{size}")
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def letterbox_preprocess(
    images: torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """[B, 3, H, W] float in [0, 1] -> [B, 3, size, size]: HPS-v2's evaluation transform.

    hpsv2 (its bundled open_clip ``ResizeMaxSize`` after ``ToTensor``) resizes the float tensor
    so that the *longest* side is ``size`` (:func:`letterbox_shape`; bicubic, antialiased as
    torchvision's tensor resize, no clamping), pads it with 0 (black, before normalisation) to
    ``size x size`` with the image centred (:func:`letterbox_padding`), then normalises. One
    difference: ``ResizeMaxSize`` skips resize *and* padding when the longest side already is
    ``size``, which leaves a non-square tensor the ViT cannot take; here it is padded.
    Differentiable with respect to ``images``.
    """
    images = image_batch(images)
    new_h, new_w = letterbox_shape(*images.shape[-2:], size)
    images = resize_bicubic(images, (new_h, new_w))
    images = F.pad(images, letterbox_padding(new_h, new_w, size), mode="constant", value=0.0)
    return normalize(images, mean, std)


def image_batch(images: torch.Tensor) -> torch.Tensor:
    """Check the shape [B, 3, H, W] (a ValueError naming it otherwise); return float32 images."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [B, 3, H, W], got {list(images.shape)}")
    return images.float()


def resize_bicubic(images: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 3, *shape], bicubic with antialiasing (torchvision's tensor resize);
    unchanged when already of that shape."""
    if tuple(images.shape[-2:]) == tuple(shape):
        return images
    return F.interpolate(images, size=shape, mode="bicubic", align_corners=False, antialias=True)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[B, 3, H, W] -> (images - mean[c]) / std[c] per channel."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def clip_preprocess(
    images: torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    crop_rounding: str = "round",
    clamp: bool = True,
) -> torch.Tensor:
    """[B, 3, H, W] float in [0, 1] -> [B, 3, size, size] float32 CLIP pixel values.

    Resize (shortest side to ``size``, bicubic, antialias; skipped when already that size),
    clamp to [0, 1], center crop, normalise. Differentiable with respect to ``images``.
    ``clamp=False`` keeps the bicubic overshoot, as pipelines that resize float tensors (HPS's
    ``ToTensor`` before ``Resize``) do.
    """
    images = image_batch(images)
    new_h, new_w = resized_shape(*images.shape[-2:], size)
    if (new_h, new_w) != tuple(images.shape[-2:]):
        images = resize_bicubic(images, (new_h, new_w))
        if clamp:
            images = images.clamp(0.0, 1.0)
    top, left = center_crop_offsets(new_h, new_w, size, crop_rounding)
    images = images[:, :, top:top + size, left:left + size]
    return normalize(images, mean, std)
