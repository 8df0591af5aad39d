"""Video rewards on synthetic clips [L, F, 3, H, W] with hand-computed scores."""
import pytest
import torch

from conftest import MeanBrightnessReward
from treegrpo.registry import REWARDS, build
from treegrpo.rewards import FrameAveragedReward, RewardError, TemporalConsistencyReward
from treegrpo.rewards.video import frame_indices


def clips(values: list[list[float]], side: int = 2) -> torch.Tensor:
    """One clip per row of per-frame grey levels -> [L, F, 3, side, side]."""
    levels = torch.tensor(values, dtype=torch.float32)
    return levels[:, :, None, None, None].expand(-1, -1, 3, side, side).contiguous()


@pytest.mark.parametrize("total,count,expected", [
    (5, 3, [0, 2, 4]), (8, 3, [0, 4, 7]), (4, 2, [0, 3]), (3, 5, [0, 1, 2]), (5, 1, [2]), (9, 4, [0, 3, 5, 8])])
def test_frame_indices_by_hand(total, count, expected):
    assert frame_indices(total, count) == expected


class Recorder:
    """Records what it is given; scores each image by its mean brightness."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, prompts, metadata=None):
        self.calls.append((images.shape, list(prompts), metadata))
        return images.mean(dim=(1, 2, 3))


def test_frame_averaged_reward_scores_the_sampled_frames():
    videos = clips([[0.0, 0.25, 0.5, 0.75, 1.0], [0.1, 0.9, 0.1, 0.9, 0.1]])
    inner = Recorder()
    reward = FrameAveragedReward(inner, num_frames=3)
    scores = reward(videos, ["a", "b"], metadata=[{"k": 1}, {"k": 2}])
    torch.testing.assert_close(scores, torch.tensor([0.5, 0.1]))  # frames 0, 2, 4 of each clip
    shape, prompts, metadata = inner.calls[0]
    assert shape == (6, 3, 2, 2) and prompts == ["a"] * 3 + ["b"] * 3
    assert metadata == [{"k": 1}] * 3 + [{"k": 2}] * 3
    # built from a config around a two-argument image reward (no metadata passed on)
    built = build(REWARDS, dict(type="FrameAveragedReward", reward=dict(type="MeanBrightnessReward"), num_frames=2))
    torch.testing.assert_close(built(videos, ["a", "b"]), torch.tensor([0.5, 0.1]))  # frames 0 and 4


def test_frame_averaged_reward_bad_inputs():
    reward = FrameAveragedReward(MeanBrightnessReward(), num_frames=2)
    with pytest.raises(ValueError, match=r"\[L, F, 3, H, W\]"):
        reward(torch.rand(2, 3, 4, 4), ["a", "b"])  # images, not clips
    with pytest.raises(ValueError, match="got 2 videos but 1 prompts"):
        reward(torch.rand(2, 3, 3, 4, 4), ["a"])
    with pytest.raises(ValueError, match="num_frames must be an int >= 1"):
        FrameAveragedReward(MeanBrightnessReward(), num_frames=0)
    with pytest.raises(ValueError, match="reward must be an image reward config"):
        FrameAveragedReward("Colorfulness")
    nan = FrameAveragedReward(lambda images, prompts: torch.full((images.shape[0],), float("nan")), 2)
    with pytest.raises(RewardError):
        nan(torch.rand(1, 3, 3, 4, 4), ["a"])


def test_temporal_consistency_by_hand():
    reward = TemporalConsistencyReward()
    videos = clips([[0.3, 0.3, 0.3], [0.0, 1.0, 0.0], [0.0, 0.2, 0.4]])
    torch.testing.assert_close(reward(videos, ["a"] * 3), torch.tensor([1.0, 0.0, 0.8]))
    # half the pixels flip by 0.5 between the two frames: mean change 0.25
    two = torch.zeros(1, 2, 3, 2, 2)
    two[0, 1, :, 0] = 0.5
    torch.testing.assert_close(reward(two, ["a"]), torch.tensor([0.75]))
    torch.testing.assert_close(reward(clips([[0.7]]), ["a"]), torch.tensor([1.0]))  # one frame
    with pytest.raises(ValueError, match=r"\[L, F, 3, H, W\]"):
        reward(torch.rand(1, 3, 4, 4), ["a"])
