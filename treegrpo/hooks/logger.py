"""Metric logging to ``log.jsonl``, tensorboard and optionally Weights & Biases (main process only)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..registry import HOOKS
from .base import Hook


def start_wandb(work_dir: Path, options: dict, run_config: dict | None):
    """``wandb.init(dir=work_dir, config=run_config, **options)``; a clear error without wandb."""
    try:
        import wandb
    except ImportError:
        raise ImportError("the config sets `wandb = dict(...)` but wandb is not installed: "
                          "pip install wandb (or remove the wandb key)") from None
    return wandb.init(dir=str(work_dir), config=run_config, **options)


def drop_records_after(path: Path, iteration: int) -> int:
    """Rewrite ``log.jsonl`` without the records of iterations after ``iteration`` (and without a
    torn last line); atomic (temporary file + rename). Returns how many lines were dropped."""
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("iter"), int) and record["iter"] > iteration:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


class MetricWriter:
    """Appends one JSON object per call to ``<work_dir>/log.jsonl`` and mirrors the finite scalars
    to tensorboard (``<work_dir>/tensorboard``) and, when ``wandb`` options are given (the config's
    ``wandb = dict(project=..., name=..., ...)``, passed to ``wandb.init``), to Weights & Biases."""

    def __init__(self, work_dir: str | Path, tensorboard: bool = True, wandb: dict | None = None,
                 run_config: dict | None = None, resumed_iteration: int | None = None):
        """``resumed_iteration``: the run continues after this iteration; records of later
        iterations (written before a crash, about to be redone) are dropped from ``log.jsonl``
        and purged from tensorboard."""
        self.path = Path(work_dir) / "log.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resumed_iteration is not None and self.path.is_file():
            drop_records_after(self.path, resumed_iteration)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resumed_iteration is None else resumed_iteration + 1
            self._tb = SummaryWriter(str(Path(work_dir) / "tensorboard"), purge_step=purge)
        self._wandb = None if wandb is None else start_wandb(Path(work_dir), dict(wandb), run_config)

    def write(self, step: int, metrics: dict) -> None:
        record = {"iter": step, **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


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
