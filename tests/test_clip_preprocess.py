"""CLIP image preprocessing in torch (treegrpo/rewards/clip_preprocess.py) against hand
computations and PIL's bicubic resize."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from treegrpo.rewards.clip_preprocess import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, center_crop_offsets,
                                              clip_preprocess, letterbox_padding, letterbox_preprocess,
                                              letterbox_shape, resized_shape)


def rand_images(num: int, height: int = 40, width: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(num, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_resized_shape_and_crop_offsets_by_hand():
    assert resized_shape(480, 640, 224) == (224, 298)  # int(224 * 640 / 480) = int(298.67)
    assert resized_shape(640, 480, 224) == (298, 224)
    assert resized_shape(224, 224, 224) == (224, 224)
    assert center_crop_offsets(224, 298, 224, "round") == (0, 37)
    assert center_crop_offsets(2, 5, 2, "round") == (0, 2)  # round(1.5) = 2 (torchvision)
    assert center_crop_offsets(2, 5, 2, "floor") == (0, 1)  # 3 // 2 = 1 (CLIPImageProcessor)
    assert center_crop_offsets(2, 7, 2, "round") == (0, 2)  # round(2.5) = 2 (banker's rounding)
    with pytest.raises(ValueError, match="crop_rounding"):
        center_crop_offsets(2, 5, 2, "ceil")


def test_preprocess_crop_and_normalisation_by_hand():
    image = torch.arange(30, dtype=torch.float32).reshape(1, 3, 2, 5) / 30.0  # no resize at size 2
    for rounding, left in (("round", 2), ("floor", 1)):
        out = clip_preprocess(image, size=2, crop_rounding=rounding)
        assert out.shape == (1, 3, 2, 2)
        for c in range(3):
            for i in range(2):
                for j in range(2):
                    value = (c * 10 + i * 5 + left + j) / 30.0
                    expected = (value - OPENAI_CLIP_MEAN[c]) / OPENAI_CLIP_STD[c]
                    assert out[0, c, i, j].item() == pytest.approx(expected, abs=1e-6)


def test_preprocess_resize_matches_pil_bicubic_and_keeps_constants():
    image = rand_images(1, 20, 30, seed=1)
    out = clip_preprocess(image, size=10)  # resized to 10 x 15, crop columns 2..12 (round(2.5)=2)
    for c in range(3):
        pil = Image.fromarray(image[0, c].numpy(), mode="F").resize((15, 10), Image.BICUBIC)
        ref = np.clip(np.asarray(pil), 0.0, 1.0)[:, 2:12]
        ref = (ref - OPENAI_CLIP_MEAN[c]) / OPENAI_CLIP_STD[c]
        np.testing.assert_allclose(out[0, c].numpy(), ref, atol=2e-5)
    grey = clip_preprocess(torch.full((2, 3, 37, 23), 0.25), size=16)
    expected = torch.tensor([(0.25 - m) / s for m, s in zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
    torch.testing.assert_close(grey, expected.view(1, 3, 1, 1).expand(2, 3, 16, 16), atol=1e-5, rtol=0)


def test_preprocess_is_differentiable():
    images = rand_images(2, 30, 20).requires_grad_(True)
    clip_preprocess(images, size=16).square().sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_clamp_flag_keeps_bicubic_overshoot():
    edge = torch.zeros(1, 3, 40, 40)
    edge[..., 20:] = 1.0  # a hard edge: bicubic over- and undershoots next to it
    clamped = clip_preprocess(edge, 16, mean=(0.0,) * 3, std=(1.0,) * 3)
    raw = clip_preprocess(edge, 16, mean=(0.0,) * 3, std=(1.0,) * 3, clamp=False)
    assert clamped.min() >= 0.0 and clamped.max() <= 1.0
    assert raw.min() < 0.0 and raw.max() > 1.0
    torch.testing.assert_close(raw.clamp(0, 1), clamped)


# --- HPS-v2's letterbox (open_clip ResizeMaxSize) ---------------------------------------------


def normalised(canvas: np.ndarray, channel: int) -> np.ndarray:
    return (canvas - OPENAI_CLIP_MEAN[channel]) / OPENAI_CLIP_STD[channel]


def test_letterbox_shape_and_padding_by_hand():
    assert letterbox_shape(100, 50, 224) == (224, 112)
    assert letterbox_shape(50, 100, 224) == (112, 224)
    assert letterbox_shape(640, 427, 224) == (224, 149)  # round(149.45)
    assert letterbox_shape(448, 225, 224) == (224, 112)  # round(112.5) = 112 (Python's rounding)
    assert letterbox_shape(448, 227, 224) == (224, 114)  # round(113.5) = 114
    assert letterbox_padding(224, 112, 224) == (56, 56, 0, 0)  # (left, right, top, bottom)
    assert letterbox_padding(149, 224, 224) == (0, 0, 37, 38)  # odd margin: the extra row at the bottom
    with pytest.raises(ValueError, match="too elongated"):
        letterbox_shape(1, 1000, 224)


def test_letterbox_equals_a_hand_built_padded_image():
    """A 100x50 image -> 224x112 (PIL's bicubic) pasted at column 56 of a black 224x224 canvas."""
    image = rand_images(1, 100, 50, seed=3)
    out = letterbox_preprocess(image, size=224)
    assert out.shape == (1, 3, 224, 224)
    for c in range(3):
        resized = np.asarray(Image.fromarray(image[0, c].numpy(), mode="F").resize((112, 224), Image.BICUBIC))
        canvas = np.zeros((224, 224), dtype=np.float32)
        canvas[:, 56:168] = resized  # not clamped: hpsv2 resizes the float tensor
        np.testing.assert_allclose(out[0, c].numpy(), normalised(canvas, c), atol=5e-5)  # float32 PIL
    # wide, odd margin, no resize: 8x5 at size 8 -> 1 black column left, 2 right
    small = rand_images(1, 5, 8, seed=4)
    out = letterbox_preprocess(small, size=8)
    for c in range(3):
        canvas = np.zeros((8, 8), dtype=np.float32)
        canvas[1:6] = small[0, c].numpy()
        np.testing.assert_allclose(out[0, c].numpy(), normalised(canvas, c), atol=1e-6)


def test_letterbox_is_not_the_crop_and_is_differentiable():
    image = rand_images(2, 60, 30, seed=5).requires_grad_(True)
    boxed = letterbox_preprocess(image, size=16)
    cropped = clip_preprocess(image, size=16, clamp=False)
    assert not torch.allclose(boxed, cropped)
    square = rand_images(1, 32, 32, seed=6)  # square images: the two transforms agree
    torch.testing.assert_close(letterbox_preprocess(square, 16), clip_preprocess(square, 16, clamp=False))
    boxed.square().sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
