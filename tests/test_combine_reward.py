"""WeightedSum: hand-computed sums with and without batch z-scoring, per-part logs, errors."""
import math

import pytest
import torch

import treegrpo.rewards.combine  # noqa: F401  (registers WeightedSum)
from treegrpo.registry import REWARDS, build
from treegrpo.rewards.base import Reward, RewardError
from treegrpo.rewards.combine import WeightedSum, batch_zscore, weighted_sum


@REWARDS.register_module(force=True)
class CombineTestMeanPixel(Reward):
    """Mean pixel value times ``scale``: [L]."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def __call__(self, images, prompts):
        return self.scale * images.mean(dim=(1, 2, 3))


@REWARDS.register_module(force=True)
class CombineTestPromptLength(Reward):
    """Number of characters of each prompt: [L]."""

    def __call__(self, images, prompts):
        return torch.tensor([float(len(p)) for p in prompts])


@REWARDS.register_module(force=True)
class CombineTestNaN(Reward):
    """NaN for the second image, 0 elsewhere."""

    def __call__(self, images, prompts):
        out = torch.zeros(len(prompts))
        out[1] = float("nan")
        return out


def batch():
    """Three constant images (means 0.2, 0.4, 0.9) and prompts of 1, 2, 3 characters."""
    images = torch.tensor([0.2, 0.4, 0.9]).view(3, 1, 1, 1).expand(3, 3, 4, 4).contiguous()
    return images, ["a", "bb", "ccc"]


PARTS = [dict(type="CombineTestMeanPixel"), dict(type="CombineTestPromptLength")]


def test_no_normalisation_is_the_weighted_sum_of_raw_scores():
    reward = build(REWARDS, dict(type="WeightedSum", rewards=PARTS, weights=[2.0, -0.5]))
    out = reward(*batch())
    # 2 * [0.2, 0.4, 0.9] - 0.5 * [1, 2, 3]
    assert out.dtype == torch.float32 and out.shape == (3,)
    assert torch.allclose(out, torch.tensor([-0.1, -0.2, 0.3]), atol=1e-6)


def test_batch_normalisation_z_scores_each_part_before_weighting():
    reward = WeightedSum(PARTS, weights=[2.0, -0.5], normalize="batch", eps=1e-12)
    out = reward(*batch())
    std1 = math.sqrt((0.3 ** 2 + 0.1 ** 2 + 0.4 ** 2) / 3)  # mean 0.5, population std
    std2 = math.sqrt(2 / 3)  # mean 2
    expected = [2 * (-0.3 / std1) - 0.5 * (-1 / std2),
                2 * (-0.1 / std1) - 0.5 * 0.0,
                2 * (0.4 / std1) - 0.5 * (1 / std2)]
    assert torch.allclose(out, torch.tensor(expected), atol=1e-5)
    assert out.tolist() == pytest.approx([-1.425727, -0.679366, 2.105093], abs=1e-5)


def test_batch_normalisation_ignores_a_part_scale_but_none_does_not():
    scaled = [dict(type="CombineTestMeanPixel", scale=100.0), dict(type="CombineTestPromptLength")]
    base = WeightedSum(PARTS, weights=[1.0, 1.0], normalize="batch")(*batch())
    rescaled = WeightedSum(scaled, weights=[1.0, 1.0], normalize="batch")(*batch())
    assert torch.allclose(rescaled, base, atol=1e-5)
    raw = WeightedSum(scaled, weights=[1.0, 1.0])(*batch())
    assert torch.allclose(raw, torch.tensor([21.0, 42.0, 93.0]), atol=1e-4)


def test_zscore_of_a_constant_part_is_zero_and_helpers_match_hand_values():
    parts = torch.tensor([[3.0, 3.0, 3.0], [1.0, 2.0, 3.0]])
    z = batch_zscore(parts, eps=1e-6)
    assert torch.equal(z[0], torch.zeros(3))
    assert torch.allclose(z[1], torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3), atol=1e-5)
    assert weighted_sum(parts, torch.tensor([0.5, -1.0])).tolist() == [0.5, -0.5, -1.5]


def test_log_values_are_the_raw_part_means_of_the_last_call():
    reward = WeightedSum(PARTS, weights=[2.0, -0.5], names=["pix", "len"], normalize="batch")
    assert reward.log_values() == {}
    reward(*batch())
    logs = reward.log_values()
    assert set(logs) == {"reward/pix", "reward/len"}
    assert logs["reward/pix"] == pytest.approx(0.5, abs=1e-6)
    assert logs["reward/len"] == pytest.approx(2.0)
    images, prompts = batch()
    reward(images[:1], prompts[:1])
    assert reward.log_values() == pytest.approx({"reward/pix": 0.2, "reward/len": 1.0})


def test_default_names_are_type_names_made_distinct():
    reward = WeightedSum([*PARTS, dict(type="CombineTestMeanPixel", scale=2.0)], weights=[1, 1, 1])
    assert reward.part_names == [
        "CombineTestMeanPixel_0", "CombineTestPromptLength", "CombineTestMeanPixel_2"]


def test_a_nan_in_one_part_names_that_part():
    reward = WeightedSum([*PARTS, dict(type="CombineTestNaN")], weights=[1, 1, 1],
                         names=["pix", "len", "broken"])
    with pytest.raises(RewardError, match=r"'broken'.*1 NaN at indices \[1\]"):
        reward(*batch())


@pytest.mark.parametrize("kwargs, match", [
    (dict(rewards=[], weights=[]), "rewards must be a non-empty list"),
    (dict(rewards=PARTS, weights=[1.0]), "weights must have one entry per reward: got 1 weights for 2"),
    (dict(rewards=PARTS, weights=[1.0, float("nan")]), r"weights\[1\] must be a finite number"),
    (dict(rewards=PARTS, weights=[1.0, float("inf")]), r"weights\[1\] must be a finite number"),
    (dict(rewards=PARTS, weights=[1.0, "2"]), r"weights\[1\] must be a finite number"),
    (dict(rewards=PARTS, weights=[1, 1], names=["a"]), "names must have one entry per reward"),
    (dict(rewards=PARTS, weights=[1, 1], names=["a", "a"]), "names must be distinct"),
    (dict(rewards=PARTS, weights=[1, 1], names=["a", "mean"]), r"names\[1\] = 'mean' is reserved"),
    (dict(rewards=PARTS, weights=[1, 1], normalize="global"),
     r"normalize must be one of \['none', 'batch'\]"),
    (dict(rewards=PARTS, weights=[1, 1], eps=0.0), "eps must be a number > 0"),
])
def test_argument_errors_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WeightedSum(**kwargs)


def test_an_unknown_part_type_lists_the_registered_rewards():
    with pytest.raises(KeyError, match="unknown reward type 'NoSuchReward'.*JPEGCompressibility"):
        WeightedSum([dict(type="NoSuchReward")], weights=[1.0])
