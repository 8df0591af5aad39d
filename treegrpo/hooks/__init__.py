"""Runner hooks: logging, checkpointing and evaluation."""
from .base import Hook
from .checkpoint import CheckpointHook
from .evaluation import EvalHook
from .logger import LoggerHook, MetricWriter

__all__ = ["CheckpointHook", "EvalHook", "Hook", "LoggerHook", "MetricWriter"]
