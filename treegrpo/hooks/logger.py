"""Metric logging to ``log.jsonl`` and tensorboard (main process only)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..registry import HOOKS
from .base import Hook


class MetricWriter:
    """Appends one JSON object per call to ``<work_dir>/log.jsonl`` and mirrors scalars to
    tensorboard under ``<work_dir>/tensorboard``."""

    def __init__(self, work_dir: str | Path, tensorboard: bool = True):
        self.path = Path(work_dir) / "log.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(work_dir) / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        record = {"iter": step, **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


@HOOKS.register_module()
class LoggerHook(Hook):
    """Write the iteration metrics every ``interval`` iterations (the runner owns the files;
    ``tensorboard`` in the config switches the tensorboard mirror)."""

    priority = 80

    def __init__(self, interval: int = 1):
        if interval < 1:
            raise ValueError(f"LoggerHook interval must be >= 1, got {interval}")
        self.interval = interval

    def after_iter(self, runner, metrics: dict) -> None:
        if runner.iteration % self.interval == 0 or runner.iteration == runner.max_iters:
            runner.log(metrics)
