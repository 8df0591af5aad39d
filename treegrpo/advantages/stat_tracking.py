"""Per-prompt reward statistics over iterations (Flow-GRPO's "per-prompt stat tracking").

With few images per prompt the group's own mean and std are noisy. The tracker keeps the last
``buffer_size`` rewards of every prompt string across iterations and normalises a prompt's new
rewards with the mean and std of that history (this iteration's rewards included) once it holds
``min_count`` values; before that, the group's own statistics are used.
"""
from __future__ import annotations

from collections import deque

import torch


class PromptStatTracker:
    """History of rewards per prompt; ``normalize`` adds the new rewards and normalises them.

    Args:
        buffer_size: rewards kept per prompt (the oldest drop out).
        min_count: history length from which the history's statistics are used.
        eps: added to the std.
    """

    def __init__(self, buffer_size: int = 32, min_count: int = 16, eps: float = 1e-6) -> None:
        if buffer_size < 1 or not 1 <= min_count <= buffer_size:
            raise ValueError(f"need buffer_size >= 1 and 1 <= min_count <= buffer_size, got "
                             f"buffer_size={buffer_size}, min_count={min_count}")
        self.buffer_size, self.min_count, self.eps = buffer_size, min_count, eps
        self.history: dict[str, deque[float]] = {}

    def normalize(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        """rewards [L] of the leaves of ``prompts`` (L strings) -> advantages [L] (rewards' dtype).

        A prompt whose rewards are all equal and whose history has no spread gets 0."""
        if len(prompts) != rewards.numel():
            raise ValueError(f"got {rewards.numel()} rewards but {len(prompts)} prompts")
        values = rewards.detach().double().cpu()
        adv = torch.zeros_like(values)
        for prompt in dict.fromkeys(prompts):
            rows = torch.tensor([i for i, p in enumerate(prompts) if p == prompt])
            history = self.history.setdefault(prompt, deque(maxlen=self.buffer_size))
            history.extend(values[rows].tolist())
            stats = torch.tensor(list(history), dtype=torch.float64) if len(history) >= self.min_count \
                else values[rows]
            mean, std = stats.mean(), stats.std(correction=0)
            if std > 0:
                adv[rows] = (values[rows] - mean) / (std + self.eps)
        return adv.to(dtype=rewards.dtype, device=rewards.device)

    def state_dict(self) -> dict:
        return {"history": {prompt: list(values) for prompt, values in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.history = {prompt: deque(values, maxlen=self.buffer_size)
                        for prompt, values in state["history"].items()}
