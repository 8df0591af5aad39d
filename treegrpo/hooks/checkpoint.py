"""Periodic checkpoints with a cap on how many are kept."""
from __future__ import annotations

import shutil

from ..checkpoint import list_checkpoints
from ..registry import HOOKS
from .base import Hook


@HOOKS.register_module()
class CheckpointHook(Hook):
    """Save every ``interval`` iterations and at the end; keep the newest ``max_keep`` (0 = all)."""

    priority = 90

    def __init__(self, interval: int = 50, max_keep: int = 2, save_last: bool = True):
        if interval < 1:
            raise ValueError(f"CheckpointHook interval must be >= 1, got {interval}")
        self.interval, self.max_keep, self.save_last = interval, max_keep, save_last

    def after_iter(self, runner, metrics: dict) -> None:
        if runner.iteration % self.interval == 0:
            self._save(runner)

    def after_run(self, runner) -> None:
        if self.save_last and runner.last_checkpoint_iter != runner.iteration:
            self._save(runner)

    def _save(self, runner) -> None:
        runner.save_checkpoint()
        if runner.is_main and self.max_keep > 0:
            for old in list_checkpoints(runner.checkpoint_dir)[: -self.max_keep]:
                shutil.rmtree(old, ignore_errors=True)
