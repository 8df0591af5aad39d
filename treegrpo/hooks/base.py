"""Runner callbacks. A hook overrides any of these methods; lower priority runs first."""
from __future__ import annotations

from pathlib import Path


class Hook:
    priority: int = 50

    def before_run(self, runner) -> None:
        """Called once after set-up (and after resuming), before the first iteration."""

    def after_iter(self, runner, metrics: dict) -> None:
        """Called after each iteration with its metrics (hooks may add entries)."""

    def after_run(self, runner) -> None:
        """Called once after the last iteration."""

    def save_to_checkpoint(self, runner, folder: Path) -> None:
        """Add files to a checkpoint folder before it is renamed into place (main process)."""

    def load_from_checkpoint(self, runner, folder: Path) -> None:
        """Restore this hook's state from a checkpoint folder when a run resumes."""
