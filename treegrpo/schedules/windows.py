"""Branching schedules: which contiguous steps form the SDE window of an iteration, and how many
children each node gets there.

Steps ``[start, start + depth)`` are SDE steps (the tree levels); the steps before are the shared
ODE prefix and the steps after are the ODE suffix of every leaf. ``k`` is an int (the same number
of children at every depth) or a list/tuple of ``depth`` ints (``k[l]`` children per node of depth
``l``, e.g. ``k=[4, 2, 2]``: 4 children of each root, then 2 and 2, 16 leaves).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from ..registry import SCHEDULES


def _check_int(key: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {key}={value!r}")
    return value


def _check_k(k: object, depth: int) -> int | tuple[int, ...]:
    """``k`` as given if an int >= 1, else a tuple of ``depth`` ints >= 1 whose product is > 1."""
    if not isinstance(k, (tuple, list)):
        return _check_int("k", k, 1)
    if (
        len(k) != depth
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in k)
        or _prod(k) < 2
    ):
        raise ValueError(
            f"k must be an integer >= 1 or a list of depth={depth} integers >= 1 (children per "
            f"node at each depth) whose product is > 1, got k={k!r}"
        )
    return tuple(int(v) for v in k)


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


@dataclass(frozen=True)
class BranchPlan:
    """The SDE window of one iteration.

    start: first SDE step (0-based); depth: number of SDE steps (tree depth d);
    k: children per node inside the window (1 for flat GRPO chains), an int for every depth or a
    tuple of ``depth`` ints (a list is stored as a tuple); ``ks`` is always the per-depth tuple.
    """

    start: int
    depth: int
    k: int | tuple[int, ...]

    def __post_init__(self) -> None:
        _check_int("start", self.start, 0)
        _check_int("depth", self.depth, 1)
        object.__setattr__(self, "k", _check_k(self.k, self.depth))

    @property
    def ks(self) -> tuple[int, ...]:
        """Children per node at each depth ``0..depth-1``: ``(k,) * depth`` for an int k."""
        return self.k if isinstance(self.k, tuple) else (self.k,) * self.depth

    def width(self, level: int) -> int:
        """Nodes of one tree at depth ``level`` (0 = root): ``prod_{j<level} ks[j]``."""
        return _prod(self.ks[:level])

    @property
    def steps(self) -> range:
        """The SDE steps ``range(start, start + depth)``."""
        return range(self.start, self.start + self.depth)

    @property
    def stop(self) -> int:
        """One past the last SDE step (the first suffix step)."""
        return self.start + self.depth

    @property
    def num_leaves(self) -> int:
        """Leaves of one tree: ``prod_l ks[l]`` (``k ** depth`` for an int k)."""
        return self.width(self.depth)

    @property
    def num_parents(self) -> int:
        """Expanded nodes of one tree (one training forward each): ``sum_{l<depth} width(l)``."""
        return sum(self.width(level) for level in range(self.depth))

    @property
    def num_edges(self) -> int:
        """Edges (policy actions) of one tree: ``sum_{l=1..depth} width(l)``."""
        return sum(self.width(level) for level in range(1, self.depth + 1))


class Schedule(abc.ABC):
    """Base class: ``plan(iteration, num_steps, generator) -> BranchPlan``; ``k``: an int or a
    list of ``depth`` per-depth ints (see the module docstring)."""

    def __init__(self, depth: int, k: int | list[int]) -> None:
        self.depth = _check_int("depth", depth, 1)
        self.k = _check_k(k, self.depth)

    @abc.abstractmethod
    def plan(
        self, iteration: int, num_steps: int, generator: torch.Generator | None = None
    ) -> BranchPlan:
        """The window of training iteration ``iteration`` for a ``num_steps``-step sampler."""

    def _start_bounds(
        self, num_steps: int, start_range: tuple[int, int] | None
    ) -> tuple[int, int]:
        """Inclusive (lo, hi) of the window start, checked against ``num_steps``."""
        _check_int("num_steps", num_steps, 1)
        if self.depth > num_steps:
            raise ValueError(
                f"depth must be in [1, {num_steps}] for a {num_steps}-step sampler, "
                f"got depth={self.depth}"
            )
        latest = num_steps - self.depth
        if start_range is None:
            return 0, latest
        lo, hi = start_range
        if not 0 <= lo <= hi <= latest:
            raise ValueError(
                f"start_range must satisfy 0 <= lo <= hi <= {latest} (num_steps - depth = "
                f"{num_steps} - {self.depth}), got start_range={start_range!r}"
            )
        return lo, hi


def _check_start_range(start_range: object) -> tuple[int, int] | None:
    if start_range is None:
        return None
    if (
        not isinstance(start_range, (tuple, list))
        or len(start_range) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in start_range)
        or start_range[0] > start_range[1]
    ):
        raise ValueError(
            "start_range must be None or an inclusive pair (lo, hi) of integers with "
            f"0 <= lo <= hi, got start_range={start_range!r}"
        )
    return int(start_range[0]), int(start_range[1])


@SCHEDULES.register_module()
class RandomWindow(Schedule):
    """A window of ``depth`` steps whose start is drawn uniformly each iteration from the
    inclusive ``start_range`` (default ``(0, num_steps - depth)``) with the given generator."""

    def __init__(
        self, depth: int, k: int | list[int], start_range: tuple[int, int] | None = None
    ) -> None:
        super().__init__(depth, k)
        self.start_range = _check_start_range(start_range)

    def plan(
        self, iteration: int, num_steps: int, generator: torch.Generator | None = None
    ) -> BranchPlan:
        lo, hi = self._start_bounds(num_steps, self.start_range)
        start = int(torch.randint(lo, hi + 1, (1,), generator=generator).item())
        return BranchPlan(start=start, depth=self.depth, k=self.k)

    def __repr__(self) -> str:
        return f"RandomWindow(depth={self.depth}, k={self.k}, start_range={self.start_range})"


@SCHEDULES.register_module()
class FixedWindow(Schedule):
    """The same window ``[start, start + depth)`` every iteration."""

    def __init__(self, start: int, depth: int, k: int | list[int]) -> None:
        super().__init__(depth, k)
        self.start = _check_int("start", start, 0)

    def plan(
        self, iteration: int, num_steps: int, generator: torch.Generator | None = None
    ) -> BranchPlan:
        _, latest = self._start_bounds(num_steps, None)
        if self.start > latest:
            raise ValueError(
                f"start must be in [0, {latest}] (num_steps - depth = {num_steps} - {self.depth}), "
                f"got start={self.start}"
            )
        return BranchPlan(start=self.start, depth=self.depth, k=self.k)

    def __repr__(self) -> str:
        return f"FixedWindow(start={self.start}, depth={self.depth}, k={self.k})"


@SCHEDULES.register_module()
class SlidingWindow(Schedule):
    """A window that moves by ``shift`` steps every ``every`` iterations, wrapping around inside
    the inclusive ``start_range`` (lo, hi) (default ``(0, num_steps - depth)``):
    ``start = lo + ((iteration // every) * shift) % (hi - lo + 1)``.
    (The official TreeGRPO knobs: window size w = depth, shift s = shift, every tou = every.)
    """

    def __init__(
        self,
        depth: int,
        k: int | list[int],
        shift: int = 1,
        every: int = 1,
        start_range: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(depth, k)
        self.shift = _check_int("shift", shift, 0)
        self.every = _check_int("every", every, 1)
        self.start_range = _check_start_range(start_range)

    def plan(
        self, iteration: int, num_steps: int, generator: torch.Generator | None = None
    ) -> BranchPlan:
        _check_int("iteration", iteration, 0)
        lo, hi = self._start_bounds(num_steps, self.start_range)
        start = lo + ((iteration // self.every) * self.shift) % (hi - lo + 1)
        return BranchPlan(start=start, depth=self.depth, k=self.k)

    def __repr__(self) -> str:
        return (
            f"SlidingWindow(depth={self.depth}, k={self.k}, shift={self.shift}, "
            f"every={self.every}, start_range={self.start_range})"
        )


@SCHEDULES.register_module()
class EveryStep(Schedule):
    """SDE on every step (flat GRPO on the whole trajectory, DanceGRPO style): start 0,
    depth = num_steps. Use k = 1 (chains); k > 1 makes k ** num_steps leaves."""

    def __init__(self, k: int = 1) -> None:
        if isinstance(k, (tuple, list)):  # one k per depth needs the depth, known only in plan()
            raise ValueError(f"EveryStep's depth is num_steps (known only at plan time), so k must "
                             f"be one integer >= 1, not a per-depth list: got k={k!r}")
        self.k = _check_int("k", k, 1)

    def plan(
        self, iteration: int, num_steps: int, generator: torch.Generator | None = None
    ) -> BranchPlan:
        _check_int("num_steps", num_steps, 1)
        return BranchPlan(start=0, depth=num_steps, k=self.k)

    def __repr__(self) -> str:
        return f"EveryStep(k={self.k})"
