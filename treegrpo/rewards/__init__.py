"""Rewards: images [L, 3, H, W] in [0, 1] + prompts -> scores [L] (registry ``REWARDS``)."""
from . import clip_family, combine, http, image_reward, image_stats, toy
from .base import Reward, RewardError, check_images, check_rewards
from .clip_family import Aesthetic, CLIPScore, HPSv2, PickScore
from .combine import WeightedSum
from .http import HTTPReward
from .image_reward import ImageReward
from .image_stats import Colorfulness, JPEGCompressibility, JPEGIncompressibility

__all__ = [
    "Aesthetic",
    "CLIPScore",
    "Colorfulness",
    "HPSv2",
    "HTTPReward",
    "ImageReward",
    "JPEGCompressibility",
    "JPEGIncompressibility",
    "PickScore",
    "Reward",
    "RewardError",
    "WeightedSum",
    "check_images",
    "check_rewards",
    "clip_family",
    "combine",
    "http",
    "image_reward",
    "image_stats",
    "toy",
]
