"""Runner hooks: logging, checkpointing, evaluation and the weight EMA."""
from .base import Hook
from .checkpoint import CheckpointHook
from .ema import EMAHook
from .evaluation import EvalHook
from .logger import LoggerHook, MetricWriter

__all__ = ["CheckpointHook", "EMAHook", "EvalHook", "Hook", "LoggerHook", "MetricWriter"]
