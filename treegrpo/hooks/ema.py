"""Exponential moving average of the trainable weights, for evaluation and export."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import save_file

from ..checkpoint import check_state_dict, read_weights
from ..registry import HOOKS
from .base import Hook

EMA_FILE = "ema.safetensors"


@torch.no_grad()
def ema_update_(shadow: dict[str, torch.Tensor], params: dict[str, torch.Tensor], decay: float) -> None:
    """In place: ``shadow[n] = decay * shadow[n] + (1 - decay) * params[n]`` for every name."""
    for name, value in params.items():
        target = shadow[name]
        target.mul_(decay).add_(value.detach().to(target.device, target.dtype), alpha=1.0 - decay)


def warmup_decay(decay: float, updates: int) -> float:
    """``min(decay, (1 + u) / (10 + u))`` after ``u`` updates: early averages forget the
    untrained start quickly, later ones converge to ``decay``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


@HOOKS.register_module()
class EMAHook(Hook):
    """Keep a float32 EMA of the trainable tensors (LoRA or full), updated after every iteration.

    Args:
        decay: EMA decay per iteration (0.99 ~ a 100-iteration horizon).
        warmup: use :func:`warmup_decay` for the first updates.
        eval_with_ema: EvalHook evaluates with the EMA weights swapped in.
        device: where the float32 EMA lives (None: beside the weights; 'cpu' keeps a full
            fine-tune's EMA, twice the size of bf16 weights, off the GPU at a copy per iteration).

    Checkpoints get ``ema.safetensors`` (same tensor names as ``model.safetensors``), which resume
    restores and ``load_policy(..., ema=True)`` / ``tools/eval.py --ema`` load.
    """

    priority = 30  # after the update, before EvalHook (40) and CheckpointHook (90)

    def __init__(self, decay: float = 0.99, warmup: bool = True, eval_with_ema: bool = True,
                 device: str | None = None) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMAHook decay must be in (0, 1), got {decay}")
        self.decay, self.warmup, self.eval_with_ema = decay, warmup, eval_with_ema
        self.device = None if device is None else torch.device(device)
        self.shadow: dict[str, torch.Tensor] | None = None
        self.updates = 0

    @staticmethod
    def _params(runner) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in runner.policy.denoiser.named_parameters() if p.requires_grad}

    def before_run(self, runner) -> None:
        if self.shadow is None:
            self.shadow = {n: p.detach().to(self.device or p.device, torch.float32, copy=True)
                           for n, p in self._params(runner).items()}
        runner.ema = self

    def after_iter(self, runner, metrics: dict) -> None:
        decay = warmup_decay(self.decay, self.updates) if self.warmup else self.decay
        ema_update_(self.shadow, self._params(runner), decay)
        self.updates += 1
        metrics["ema/decay"] = decay

    def save_to_checkpoint(self, runner, folder: Path) -> None:
        tensors = {n: t.detach().cpu().contiguous() for n, t in self.shadow.items()}
        save_file(tensors, str(Path(folder) / EMA_FILE), metadata={"updates": str(self.updates)})

    def load_from_checkpoint(self, runner, folder: Path) -> None:
        path = Path(folder) / EMA_FILE
        if not path.is_file():
            warnings.warn(f"{folder} has no {EMA_FILE}: the EMA restarts from the resumed weights",
                          stacklevel=2)
            return
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as file:
            self.updates = int((file.metadata() or {}).get("updates", 0))
        device = self.device or next(iter(self._params(runner).values())).device
        state = read_weights(path)
        check_state_dict(state, self._params(runner), str(path), type(runner.policy).__name__)
        self.shadow = {n: t.float().to(device) for n, t in state.items()}

    @contextlib.contextmanager
    def applied(self, runner) -> Iterator[None]:
        """Within this context the trainable tensors hold the EMA values (restored after; the
        live weights wait on the CPU meanwhile)."""
        params = self._params(runner)
        saved = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(saved[name])
