"""Reward base class, reward output checks, image-statistic rewards and the example plugin."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from treegrpo.registry import REWARDS, build
from treegrpo.rewards.base import Reward, RewardError, check_images, check_rewards
from treegrpo.rewards.image_stats import (
    Colorfulness,
    JPEGCompressibility,
    JPEGIncompressibility,
    colorfulness,
)


def noise_images(num: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num, 3, size, size, generator=generator)


# --- base and check_rewards -----------------------------------------------------------------


def test_reward_base_name_and_abstract_call():
    class Incomplete(Reward):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()

    class MyReward(Reward):
        def __call__(self, images, prompts):
            return images.mean(dim=(1, 2, 3))

    reward = MyReward()
    assert reward.name == "MyReward"
    assert reward(torch.ones(2, 3, 2, 2), ["p", "q"]).tolist() == [1.0, 1.0]


def test_check_rewards_returns_float32_cpu():
    out = check_rewards(torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64), 3, "R")
    assert out.dtype == torch.float32
    assert out.device.type == "cpu"
    assert out.tolist() == [1.5, -2.0, 0.25]
    assert check_rewards(torch.tensor([1, 2]), 2, "R").dtype == torch.float32


def test_check_rewards_nan_names_reward_count_and_indices():
    rewards = torch.tensor([0.0, float("nan"), 1.0, float("nan"), 2.0])
    with pytest.raises(RewardError) as err:
        check_rewards(rewards, 5, "HPSv2")
    message = str(err.value)
    assert "HPSv2" in message
    assert "2 NaN at indices [1, 3]" in message
    assert "inf" not in message


def test_check_rewards_inf_and_nan_together():
    rewards = torch.tensor([float("inf"), 0.0, float("-inf"), float("nan")])
    with pytest.raises(RewardError) as err:
        check_rewards(rewards, 4, "Aesthetic")
    message = str(err.value)
    assert "Aesthetic" in message
    assert "2 inf at indices [0, 2]" in message
    assert "1 NaN at indices [3]" in message
    assert "3 of 4" in message


def test_check_rewards_lists_at_most_ten_indices():
    rewards = torch.full((12,), float("nan"))
    listed = r"12 NaN at indices \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\.\]"
    with pytest.raises(RewardError, match=listed):
        check_rewards(rewards, 12, "R")


@pytest.mark.parametrize(
    ("rewards", "match"),
    [
        (torch.zeros(4, 1), r"shape \[4, 1\], expected \[4\]"),
        (torch.zeros(3), r"shape \[3\], expected \[4\]"),
        (torch.tensor(1.0), r"shape \[\], expected \[4\]"),
        ([0.0, 1.0, 2.0, 3.0], "returned list, expected a torch.Tensor"),
        (None, "returned NoneType"),
    ],
)
def test_check_rewards_bad_outputs_name_the_reward(rewards, match):
    with pytest.raises(RewardError, match=match) as err:
        check_rewards(rewards, 4, "PickScore")
    assert "PickScore" in str(err.value)
    assert isinstance(err.value, RuntimeError)


def test_check_images_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"Colorfulness: images must have shape \[L, 3, H, W\]"):
        check_images(torch.zeros(2, 1, 4, 4), ["a", "b"], "Colorfulness")
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        check_images(torch.zeros(2, 3, 4, 4), ["a"], "R")
    with pytest.raises(ValueError, match="float"):
        check_images(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), ["a", "b"], "R")


# --- JPEG compressibility --------------------------------------------------------------------


def pil_jpeg_kb(image: torch.Tensor, quality: int) -> float:
    """Size in kB of one [3, H, W] image in [0, 1] saved by PIL, computed independently."""
    array = (image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return len(buffer.getvalue()) / 1000.0


def test_jpeg_compressibility_equals_minus_pil_size():
    images = noise_images(3)
    expected = [-pil_jpeg_kb(image, 80) for image in images]
    rewards = JPEGCompressibility(quality=80)(images, ["p"] * 3)
    assert rewards.shape == (3,)
    assert rewards.dtype == torch.float32
    assert rewards.tolist() == pytest.approx(expected, rel=1e-6)
    incompress = JPEGIncompressibility(quality=80)(images, ["p"] * 3)
    assert incompress.tolist() == pytest.approx([-e for e in expected], rel=1e-6)


def test_jpeg_flat_image_more_compressible_than_noise():
    images = torch.cat([torch.full((1, 3, 32, 32), 0.4), noise_images(1)])
    rewards = JPEGCompressibility()(images, ["flat", "noise"])
    assert rewards[0] > rewards[1]
    assert rewards[1] < -1.0  # 32x32 noise at quality 95 takes well over 1 kB


def test_jpeg_lower_quality_gives_smaller_files():
    images = noise_images(2, seed=1)
    low = JPEGIncompressibility(quality=10)(images, ["a", "b"])
    high = JPEGIncompressibility(quality=95)(images, ["a", "b"])
    assert torch.all(low < high)


def test_jpeg_is_deterministic_and_builds_from_registry():
    reward = build(REWARDS, dict(type="JPEGCompressibility", quality=50))
    assert isinstance(reward, JPEGCompressibility)
    assert reward.quality == 50
    images = noise_images(2)
    assert torch.equal(reward(images, ["a", "b"]), reward(images.clone(), ["a", "b"]))


@pytest.mark.parametrize("quality", [0, 101, 95.5, True, "95"])
def test_jpeg_quality_validated(quality):
    with pytest.raises(ValueError, match="quality"):
        JPEGCompressibility(quality=quality)


# --- colourfulness ---------------------------------------------------------------------------


def test_colorfulness_by_hand_2x2():
    pixels = [(200, 40, 10), (30, 220, 90), (120, 120, 120), (250, 10, 60)]  # row-major
    image = torch.tensor(pixels, dtype=torch.float32).t().reshape(1, 3, 2, 2) / 255.0
    rg = [r - g for r, g, _ in pixels]  # [160, -190, 0, 240]
    yb = [0.5 * (r + g) - b for r, g, b in pixels]  # [110, 35, 0, 70]

    def mean(xs):
        return sum(xs) / len(xs)

    def pop_std(xs):
        return math.sqrt(sum((x - mean(xs)) ** 2 for x in xs) / len(xs))

    expected = math.sqrt(pop_std(rg) ** 2 + pop_std(yb) ** 2) + 0.3 * math.sqrt(
        mean(rg) ** 2 + mean(yb) ** 2
    )
    assert colorfulness(image).item() == pytest.approx(expected, rel=1e-5)
    assert Colorfulness()(image, ["p"]).item() == pytest.approx(expected, rel=1e-5)


def test_colorfulness_grey_is_zero_and_batch_is_per_image():
    grey = torch.full((1, 3, 4, 4), 0.3)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0  # flat pure red: rg = 255, yb = 127.5, no spread
    both = Colorfulness()(torch.cat([grey, red]), ["grey", "red"])
    assert both.shape == (2,)
    assert both[0].item() == pytest.approx(0.0, abs=1e-4)
    assert both[1].item() == pytest.approx(0.3 * math.hypot(255.0, 127.5), rel=1e-5)


# --- example plugin --------------------------------------------------------------------------


def test_example_plugin_registers_and_builds():
    import plugins.example_reward as example

    reward = build(REWARDS, dict(type="BrightnessReward", target=0.25))
    assert isinstance(reward, example.BrightnessReward)
    assert reward.name == "BrightnessReward"
    images = torch.stack([torch.full((3, 2, 2), 0.25), torch.full((3, 2, 2), 1.0)])
    images[0, 0] = 0.55  # red channel brighter: mean = (0.55 + 0.25 + 0.25) / 3 = 0.35
    rewards = check_rewards(reward(images, ["a", "b"]), 2, reward.name)
    assert rewards.tolist() == pytest.approx([-0.1, -0.75], abs=1e-6)
    assert build(REWARDS, dict(type="BrightnessReward")).target == 0.5
    with pytest.raises(ValueError, match="target"):
        example.BrightnessReward(target=2.0)
