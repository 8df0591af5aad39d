"""Rewards: images [L, 3, H, W] in [0, 1] + prompts -> scores [L] (registry ``REWARDS``)."""
from . import image_stats, toy
from .base import Reward, RewardError, check_images, check_rewards
from .image_stats import Colorfulness, JPEGCompressibility, JPEGIncompressibility

__all__ = [
    "Colorfulness",
    "JPEGCompressibility",
    "JPEGIncompressibility",
    "Reward",
    "RewardError",
    "check_images",
    "check_rewards",
    "image_stats",
    "toy",
]
