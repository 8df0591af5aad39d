"""Rewards: images [L, 3, H, W] in [0, 1] (video rewards: clips [L, F, 3, H, W]) + prompts
(+ optional metadata) -> scores [L] (registry ``REWARDS``)."""
from . import (clip_family, combine, http, image_reward, image_stats, ocr, structured, structured_detectors, toy,
               video, vlm_judge)
from .base import (Reward, RewardError, accepts_metadata, check_images, check_rewards, check_videos,
                   metadata_caller)
from .clip_family import Aesthetic, CLIPScore, HPSv2, PickScore
from .combine import WeightedSum
from .http import HTTPReward
from .image_reward import ImageReward
from .image_stats import Colorfulness, JPEGCompressibility, JPEGIncompressibility
from .ocr import OCRReward
from .structured import StructuredReward
from .toy import ToyAlignmentReward, ToyMetadataReward
from .vlm_judge import VLMJudgeReward
from .video import FrameAveragedReward, TemporalConsistencyReward

__all__ = [
    "Aesthetic",
    "CLIPScore",
    "Colorfulness",
    "FrameAveragedReward",
    "HPSv2",
    "HTTPReward",
    "ImageReward",
    "JPEGCompressibility",
    "JPEGIncompressibility",
    "OCRReward",
    "PickScore",
    "Reward",
    "RewardError",
    "StructuredReward",
    "TemporalConsistencyReward",
    "ToyAlignmentReward",
    "ToyMetadataReward",
    "VLMJudgeReward",
    "WeightedSum",
    "accepts_metadata",
    "check_images",
    "check_rewards",
    "check_videos",
    "clip_family",
    "combine",
    "http",
    "image_reward",
    "image_stats",
    "metadata_caller",
    "ocr",
    "structured",
    "structured_detectors",
    "toy",
    "video",
    "vlm_judge",
]
