"""Rewards for video policies (Wan): inputs are clips ``[L, F, 3, H, W]`` in [0, 1].

Config::

    reward = dict(type='FrameAveragedReward', reward=dict(type='HPSv2', ...), num_frames=4)
    reward = dict(type='TemporalConsistencyReward')

Combine both with ``WeightedSum`` (its parts receive the clips unchanged).
"""
from __future__ import annotations

from typing import Any

import torch

from treegrpo.registry import REWARDS, build
from treegrpo.rewards.base import (Reward, check_metadata, check_rewards, check_videos, load_reward_weights,
                                   metadata_caller)


def frame_indices(total: int, count: int) -> list[int]:
    """``count`` evenly spaced frame indices of a ``total``-frame clip, first and last included
    (``round(i * (total - 1) / (count - 1))``); all frames when ``count >= total``; the middle
    frame when ``count == 1``."""
    if count >= total:
        return list(range(total))
    if count == 1:
        return [(total - 1) // 2]
    return [round(i * (total - 1) / (count - 1)) for i in range(count)]


def consecutive_frame_similarity(videos: torch.Tensor) -> torch.Tensor:
    """[L, F, 3, H, W] in [0, 1] -> [L]: ``1 - mean_t mean |x_{t+1} - x_t|`` over the F - 1
    consecutive pairs and all pixels (1 for a still clip or a single frame, 0 when every pixel
    flips between 0 and 1 each frame)."""
    if videos.shape[1] < 2:
        return torch.ones(videos.shape[0], dtype=torch.float32, device=videos.device)
    change = (videos[:, 1:].float() - videos[:, :-1].float()).abs()
    return 1.0 - change.mean(dim=(1, 2, 3, 4))


@REWARDS.register_module()
class FrameAveragedReward(Reward):
    """An image reward averaged over ``num_frames`` evenly sampled frames of each clip.

    ``reward(videos [L, F, 3, H, W], prompts [L], metadata=None) -> [L]``: the frames
    :func:`frame_indices` (F, num_frames) of each clip are scored as L * n images by the inner
    reward (each with its clip's prompt and metadata) and their scores averaged per clip.

    Args:
        reward: the image reward's config (``dict(type=...)``) or a built reward.
        num_frames: frames scored per clip (>= 1; all frames when the clip has fewer).
    """

    def __init__(self, reward: Any, num_frames: int = 4) -> None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be an int >= 1 (frames scored per clip), got {num_frames!r}")
        if reward is None or isinstance(reward, (str, bytes, list, tuple)):
            raise ValueError(f"reward must be an image reward config such as dict(type='Colorfulness'), "
                             f"got {reward!r}")
        self.reward = build(REWARDS, reward) if hasattr(reward, "keys") else reward
        self.inner_name = getattr(self.reward, "name", type(self.reward).__name__)
        self.num_frames = num_frames
        self._call = metadata_caller(self.reward)

    def load(self):
        load_reward_weights(self.reward)
        return self

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        check_videos(images, prompts, self.name)
        if metadata is not None:
            check_metadata(metadata, len(prompts), self.name)
        count, frames = images.shape[0], images.shape[1]
        index = frame_indices(frames, self.num_frames)
        picked = images[:, index].reshape(count * len(index), *images.shape[2:])
        repeat = lambda rows: [row for row in rows for _ in index]  # noqa: E731  (clip-major, as picked)
        scores = self._call(picked, repeat(prompts), None if metadata is None else repeat(metadata))
        scores = check_rewards(scores, count * len(index), self.inner_name)
        return scores.view(count, len(index)).mean(dim=1)

    def __repr__(self) -> str:
        return f"FrameAveragedReward(reward={self.reward!r}, num_frames={self.num_frames})"


@REWARDS.register_module()
class TemporalConsistencyReward(Reward):
    """Pixel-space smoothness of each clip: :func:`consecutive_frame_similarity`, in [0, 1]
    (higher: smaller changes between consecutive frames). A still clip scores 1, so use it as a
    weighted regulariser next to a content reward, not alone."""

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_videos(images, prompts, self.name)
        return consecutive_frame_similarity(images)
