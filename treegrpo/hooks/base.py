"""Runner callbacks. A hook overrides any of the three methods; lower priority runs first."""
from __future__ import annotations


class Hook:
    priority: int = 50

    def before_run(self, runner) -> None:
        """Called once after set-up (and after resuming), before the first iteration."""

    def after_iter(self, runner, metrics: dict) -> None:
        """Called after each iteration with its metrics (hooks may add entries)."""

    def after_run(self, runner) -> None:
        """Called once after the last iteration."""
