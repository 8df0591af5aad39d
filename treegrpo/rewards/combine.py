"""A weighted sum of several rewards (multi-reward training, e.g. HPS + CLIPScore).

Config::

    reward = dict(
        type='WeightedSum',
        rewards=[dict(type='HPSv2', checkpoint='...'), dict(type='CLIPScore', model='openai/clip-vit-large-patch14')],
        weights=[1.0, 0.5],
        names=['hps', 'clip'],      # optional; default: each part's type name
        normalize='none',           # or 'batch'
    )
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from treegrpo.registry import REWARDS, build
from treegrpo.rewards.base import (Reward, check_images, check_metadata, check_rewards, check_videos,
                                   load_reward_weights, metadata_caller)

NORMALIZE_MODES = ("none", "batch")
# names the runner already logs under reward/ (a part called so would overwrite them)
RESERVED_NAMES = ("mean", "std", "min", "max")


def weighted_sum(parts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """parts [N, L] (one row per reward), weights [N] -> [L] = sum_n weights[n] * parts[n]."""
    return (weights[:, None] * parts).sum(dim=0)


def batch_zscore(parts: torch.Tensor, eps: float) -> torch.Tensor:
    """Z-score each row of parts [N, L] over its L images: (x - mean) / (std + eps), with the
    population std (divide by L). A row of equal values (or L = 1) becomes all zeros."""
    mean = parts.mean(dim=1, keepdim=True)
    std = parts.std(dim=1, correction=0, keepdim=True)
    return (parts - mean) / (std + eps)


def _part_name(reward: Any, cfg: Any) -> str:
    if hasattr(cfg, "keys") and isinstance(cfg.get("type"), str):
        return cfg["type"]
    return getattr(reward, "name", type(reward).__name__)


@REWARDS.register_module()
class WeightedSum(Reward):
    """``reward(images [L, 3, H, W] in [0, 1], prompts [L], metadata=None) -> [L] float32``:
    ``sum_n weights[n] * f_n(part_n(images, prompts))``; ``metadata`` (L dicts) goes to the
    parts whose signature accepts it.

    Args:
        rewards: list of reward configs (``dict(type=..., ...)``) or built rewards; at least one.
        weights: one finite float per reward.
        names: optional distinct names used in logs and errors (default: each part's type name,
            with ``_<index>`` appended where two parts share one).
        normalize: ``'none'``: ``f_n`` is the identity (raw scores are weighted, so the weights
            must account for each reward's scale). ``'batch'``: each part is z-scored over the
            images of the call, ``(x - mean) / (std + eps)`` (population std), before weighting.
            'batch' makes a part's scale irrelevant but couples every score to the other images
            of the batch (and, under several processes, to the process's own batch): use it for
            training, not for evaluation, where a score must not depend on what else is scored.
        eps: added to the std in 'batch' mode (> 0).

    Every part's output goes through :func:`check_rewards` under its name, so a NaN in one part
    raises a RewardError naming that part. After each call :meth:`log_values` returns the mean
    raw score of each part.
    """

    def __init__(self, rewards: Sequence[Any], weights: Sequence[float],
                 names: Sequence[str] | None = None, normalize: str = "none",
                 eps: float = 1e-6) -> None:
        if isinstance(rewards, (str, bytes)) or not isinstance(rewards, Sequence) or not rewards:
            raise ValueError(f"rewards must be a non-empty list of reward configs, got {rewards!r}")
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
            raise ValueError(f"weights must be a list of numbers, got {weights!r}")
        if len(weights) != len(rewards):
            raise ValueError(
                f"weights must have one entry per reward: got {len(weights)} weights for "
                f"{len(rewards)} rewards"
            )
        for index, weight in enumerate(weights):
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"weights[{index}] must be a finite number, got {weight!r}")
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {list(NORMALIZE_MODES)}, got {normalize!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        self.parts = [build(REWARDS, cfg) for cfg in rewards]
        self.callers = [metadata_caller(part) for part in self.parts]  # metadata to parts that take it
        self.part_names = self._check_names(names, rewards)
        self.weights = [float(w) for w in weights]
        self.normalize = normalize
        self.eps = float(eps)
        self.last_means: dict[str, float] = {}

    def _check_names(self, names: Sequence[str] | None, cfgs: Sequence[Any]) -> list[str]:
        if names is None:
            defaults = [_part_name(reward, cfg) for reward, cfg in zip(self.parts, cfgs)]
            names = [name if defaults.count(name) == 1 else f"{name}_{i}"
                     for i, name in enumerate(defaults)]
        elif isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
            raise ValueError(f"names must be a list of strings, got {names!r}")
        if len(names) != len(self.parts):
            raise ValueError(
                f"names must have one entry per reward: got {len(names)} names for "
                f"{len(self.parts)} rewards"
            )
        for index, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise ValueError(f"names[{index}] must be a non-empty string, got {name!r}")
            if name in RESERVED_NAMES:
                raise ValueError(
                    f"names[{index}] = {name!r} is reserved (the runner logs reward/{name}); "
                    f"reserved names: {list(RESERVED_NAMES)}"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"names must be distinct, got {list(names)}")
        return list(names)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str],
                 metadata: list[dict] | None = None) -> torch.Tensor:
        # the parts see the input as it is: images [L, 3, H, W], or clips [L, F, 3, H, W] for video rewards
        (check_videos if isinstance(images, torch.Tensor) and images.dim() == 5 else check_images)(
            images, prompts, self.name)
        count = len(prompts)
        if metadata is not None:
            check_metadata(metadata, count, self.name)
        raw = torch.stack([
            check_rewards(call(images, prompts, metadata), count, name)
            for call, name in zip(self.callers, self.part_names)
        ])  # [N, L] float32 on CPU
        self.last_means = {name: raw[n].mean().item() for n, name in enumerate(self.part_names)}
        parts = batch_zscore(raw, self.eps) if self.normalize == "batch" else raw
        total = weighted_sum(parts, torch.tensor(self.weights, dtype=torch.float32))
        return total.to(images.device)

    def load(self) -> "WeightedSum":
        """Load every part's weights now (parts without ``load`` have none)."""
        for part in self.parts:
            load_reward_weights(part)
        return self

    def log_values(self) -> dict[str, float]:
        """``{'reward/<name>': mean raw score of that part in the last call}`` ({} before any)."""
        return {f"reward/{name}": value for name, value in self.last_means.items()}

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={part!r}" for name, part in zip(self.part_names, self.parts))
        return f"WeightedSum({parts}, weights={self.weights}, normalize={self.normalize!r})"
