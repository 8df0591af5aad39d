"""Adaptive window placement: a bandit over window starts whose value is the measured within-tree
leaf-reward variance (trees whose leaves disagree give the advantages something to rank).

Each start position ``s`` in the inclusive ``start_range`` is an arm with a running mean ``m_s`` of
the observed values and a count ``n_s``. Every arm is tried once (in order lo..hi), then UCB1 with a
scale-free bonus picks ``argmax_s m_s + c * max_j(m_j) * sqrt(ln N / n_s)`` (N = total
observations; ties: the lowest start); with probability ``epsilon`` a uniform start is drawn
instead. The value of an iteration is the mean over all trees (all processes) of the population
variance of each tree's leaf rewards, so every process holds the same state and plans the same
window.
"""
from __future__ import annotations

import math

import torch

from ..registry import SCHEDULES
from .windows import BranchPlan, Schedule, _check_start_range


def tree_variances(rewards: torch.Tensor, leaf_group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Population variance of the leaf rewards of each tree.

    rewards: [L] float; leaf_group: [L] long in [0, num_groups); returns [num_groups] float32
    (0 for a group with one leaf; NaN for a group without leaves).
    """
    r = rewards.detach().double().flatten()
    g = leaf_group.to(r.device).long().flatten()
    count = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(0, g, torch.ones_like(r))
    mean = torch.zeros_like(count).index_add_(0, g, r) / count
    sq = torch.zeros_like(count).index_add_(0, g, (r - mean[g]) ** 2)
    return (sq / count).float()


def update_arm(mean: float, count: int, value: float, alpha: float | None) -> tuple[float, int]:
    """One observation of an arm: returns (new mean, new count). The mean moves by
    ``step * (value - mean)`` with ``step = 1 / (count + 1)`` (the sample mean), or
    ``max(1 / (count + 1), alpha)`` with ``alpha`` (a running mean that forgets: the policy moves,
    so do the variances)."""
    n = count + 1
    step = 1.0 / n if alpha is None else max(1.0 / n, alpha)
    return mean + step * (value - mean), n


def ucb_scores(means: list[float], counts: list[int], c: float) -> list[float]:
    """UCB1 score of every arm: ``m_s + c * max(m) * sqrt(ln N / n_s)``, N = sum(counts);
    ``inf`` for an untried arm (n_s = 0)."""
    total = sum(counts)
    scale = c * max(max(means), 0.0)
    return [math.inf if n == 0 else m + scale * math.sqrt(math.log(total) / n)
            for m, n in zip(means, counts)]


def choose_arm(means: list[float], counts: list[int], c: float) -> int:
    """Index of the arm to play: the first untried one, else the highest UCB score (lowest index
    on ties); with c = 0 the greedy choice."""
    scores = ucb_scores(means, counts, c)
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


@SCHEDULES.register_module()
class AdaptiveWindow(Schedule):
    """A window of ``depth`` steps whose start (in the inclusive ``start_range``, default
    ``(0, num_steps - depth)``) is chosen by a bandit on the within-tree leaf-reward variance.

    c: UCB bonus relative to the largest running mean (0: greedy after the first round);
    epsilon: probability of a uniform start instead (drawn with the plan generator);
    alpha: None for the sample mean of each arm, else the floor of the running-mean step in (0, 1].
    The runner calls :meth:`observe` after scoring and keeps :meth:`state_dict` in checkpoints.
    """

    def __init__(self, depth: int, k: int | list[int], start_range: tuple[int, int] | None = None,
                 c: float = 0.5, epsilon: float = 0.0, alpha: float | None = None) -> None:
        super().__init__(depth, k)
        self.start_range = _check_start_range(start_range)
        self.c = _check_float("c", c, 0.0, math.inf)
        self.epsilon = _check_float("epsilon", epsilon, 0.0, 1.0)
        self.alpha = None if alpha is None else _check_float("alpha", alpha, 0.0, 1.0, open_lo=True)
        self.starts: list[int] = []  # the arms, set at the first plan() (num_steps is known then)
        self.means: list[float] = []
        self.counts: list[int] = []

    def _arms(self, num_steps: int) -> None:
        lo, hi = self._start_bounds(num_steps, self.start_range)
        starts = list(range(lo, hi + 1))
        if not self.starts:
            self.starts, self.means, self.counts = starts, [0.0] * len(starts), [0] * len(starts)
        elif self.starts != starts:
            raise ValueError(f"AdaptiveWindow's arms are starts {self.starts} (from its state), but "
                             f"num_steps={num_steps}, start_range={self.start_range} give {starts}")

    def plan(self, iteration: int, num_steps: int, generator: torch.Generator | None = None) -> BranchPlan:
        self._arms(num_steps)
        if self.epsilon > 0 and torch.rand((), generator=generator).item() < self.epsilon:
            index = int(torch.randint(len(self.starts), (1,), generator=generator).item())
        else:
            index = choose_arm(self.means, self.counts, self.c)
        return BranchPlan(start=self.starts[index], depth=self.depth, k=self.k)

    def observe(self, plan: BranchPlan, variances: torch.Tensor) -> float:
        """Credit ``plan.start`` with the mean of ``variances`` [P_total] (every tree of the
        iteration, gathered over processes); returns that value."""
        if plan.start not in self.starts:
            raise ValueError(f"observe: start={plan.start} is not one of the planned starts {self.starts}")
        value = float(variances.double().mean())
        if not math.isfinite(value):
            raise ValueError(f"observe: the mean within-tree reward variance is {value}")
        i = self.starts.index(plan.start)
        self.means[i], self.counts[i] = update_arm(self.means[i], self.counts[i], value, self.alpha)
        return value

    def state_dict(self) -> dict:
        return {"starts": list(self.starts), "means": list(self.means), "counts": list(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        starts, means, counts = (list(state.get(key, [])) for key in ("starts", "means", "counts"))
        if not len(starts) == len(means) == len(counts):
            raise ValueError(f"AdaptiveWindow state needs starts, means, counts of one length, got {state!r}")
        self.starts, self.means, self.counts = [int(s) for s in starts], [float(m) for m in means], \
            [int(n) for n in counts]

    def __repr__(self) -> str:
        return (f"AdaptiveWindow(depth={self.depth}, k={self.k}, start_range={self.start_range}, "
                f"c={self.c}, epsilon={self.epsilon}, alpha={self.alpha})")


def _check_float(key: str, value: object, lo: float, hi: float, open_lo: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and not math.isnan(value)
          and (lo < value if open_lo else lo <= value) and value <= hi)
    if not ok:
        bounds = f"{'(' if open_lo else '['}{lo}, {hi}]"
        raise ValueError(f"{key} must be a number in {bounds}, got {key}={value!r}")
    return float(value)
