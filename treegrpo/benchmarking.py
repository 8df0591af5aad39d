"""Pure helpers of tools/benchmark.py: learning curves over seeds, time-to-target, summary rows.

A curve is a pair of 1-D arrays (x, y): x is a cost axis (wall seconds, model forwards or trained
edges, increasing) and y the evaluation reward measured at that cost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def first_crossing(x: np.ndarray, y: np.ndarray, target: float, tol: float = 1e-9) -> float | None:
    """Smallest x at which the piecewise-linear curve reaches ``target`` (None if never)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    hits = np.nonzero(y >= target - tol)[0]
    if hits.size == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))


def mean_curve(curves: list[tuple[np.ndarray, np.ndarray]], num: int = 50) -> tuple[np.ndarray, ...]:
    """Average curves of several seeds on a common grid up to the longest curve's end.

    Each curve is interpolated linearly and held at its last value beyond its end (the reward
    reached so far), so the mean at the grid's end is the mean of the final rewards.
    Returns (grid [num], mean [num], std [num]).
    """
    end = max(float(np.max(x)) for x, _ in curves)
    start = max(float(np.min(x)) for x, _ in curves)
    grid = np.linspace(start, end, num)
    values = np.stack([np.interp(grid, np.asarray(x, float), np.asarray(y, float)) for x, y in curves])
    return grid, values.mean(axis=0), values.std(axis=0)


def bands_apart_from(curves: list[tuple[np.ndarray, np.ndarray]], base_curves: list[tuple[np.ndarray, np.ndarray]],
                     num: int = 50) -> float | None:
    """The first x from which the seed band (mean +- std over seeds, as the plots shade it) of
    ``curves`` stays clear of the baseline's band, above or below, to the end of the range both
    cover; None when the bands overlap at that end. Curves are read on a common ``num``-point grid
    over that range (linear interpolation, as :func:`mean_curve`)."""
    start = max(float(np.min(x)) for x, _ in [*curves, *base_curves])
    end = min(max(float(np.max(x)) for x, _ in curves), max(float(np.max(x)) for x, _ in base_curves))
    grid = np.linspace(start, end, num)

    def band(group):
        values = np.stack([np.interp(grid, np.asarray(x, float), np.asarray(y, float)) for x, y in group])
        mean, std = values.mean(axis=0), values.std(axis=0)
        return mean - std, mean + std

    (low, high), (base_low, base_high) = band(curves), band(base_curves)
    for apart in (low > base_high, high < base_low):
        if apart[-1]:
            together = np.nonzero(~apart)[0]
            return float(grid[0] if together.size == 0 else grid[together[-1] + 1])
    return None


@dataclass
class SummaryRow:
    name: str
    final_mean: float
    final_std: float
    seconds_to_target: float | None
    nfe_to_target: float | None
    speedup_time: float | None  # baseline seconds-to-target / this config's; inf: met at cost 0
    speedup_nfe: float | None
    edges_per_nfe: float
    # per seed: the baseline's (mean-curve) cost to target over this seed's own; None: never reached
    seed_speedups_time: tuple[float | None, ...] = ()
    seed_speedups_nfe: tuple[float | None, ...] = ()
    separated: str = ""  # 'above' / 'below': every seed's final beats / trails every baseline seed's
    bands_apart_nfe: float | None = None  # NFE from which the mean +- std bands stay apart (None: overlap)
    is_baseline: bool = False


def speedup(base: float | None, this: float | None) -> float | None:
    """The baseline's cost to target over this config's: None when either never reached it;
    a config that met the target at cost 0 is ``inf`` times faster (1.0 when both did)."""
    if base is None or this is None:
        return None
    if this == 0:
        return 1.0 if base == 0 else math.inf
    return base / this


def separation(finals: np.ndarray, base_finals: np.ndarray) -> str:
    """'above' when every value of ``finals`` exceeds every one of ``base_finals`` (the seed bands
    do not overlap), 'below' for the reverse, '' when they overlap."""
    if finals.min() > base_finals.max():
        return "above"
    if finals.max() < base_finals.min():
        return "below"
    return ""


def summarize(runs: dict[str, list[dict]], baseline: str) -> list[SummaryRow]:
    """One row per config. ``runs[name]`` is a list (one per seed) of dicts with arrays
    ``seconds``, ``nfe``, ``edges``, ``reward`` (evaluation points, increasing cost).

    The target is the baseline's final mean reward; time/NFE-to-target are read off the
    seed-averaged curves; speed-ups are the baseline's cost to target over the config's, and
    per seed the baseline's (mean-curve) cost over that seed's own cost to the same target.
    """
    if baseline not in runs:
        raise KeyError(f"baseline {baseline!r} is not among the runs {sorted(runs)}")
    finals = {name: np.array([r["reward"][-1] for r in seeds]) for name, seeds in runs.items()}
    target = float(finals[baseline].mean())
    costs = {}
    for name, seeds in runs.items():
        costs[name] = {}
        for axis in ("seconds", "nfe"):
            grid, mean, _ = mean_curve([(r[axis], r["reward"]) for r in seeds])
            costs[name][axis] = first_crossing(grid, mean, target)
    rows = []
    for name, seeds in runs.items():
        total_edges = sum(r["edges"][-1] for r in seeds)
        total_nfe = sum(r["nfe"][-1] for r in seeds)
        rows.append(SummaryRow(
            name=name,
            final_mean=float(finals[name].mean()),
            final_std=float(finals[name].std()),
            seconds_to_target=costs[name]["seconds"],
            nfe_to_target=costs[name]["nfe"],
            speedup_time=speedup(costs[baseline]["seconds"], costs[name]["seconds"]),
            speedup_nfe=speedup(costs[baseline]["nfe"], costs[name]["nfe"]),
            edges_per_nfe=total_edges / total_nfe if total_nfe else 0.0,
            seed_speedups_time=tuple(speedup(costs[baseline]["seconds"], first_crossing(r["seconds"], r["reward"], target))
                                     for r in seeds),
            seed_speedups_nfe=tuple(speedup(costs[baseline]["nfe"], first_crossing(r["nfe"], r["reward"], target))
                                    for r in seeds),
            separated="" if name == baseline else separation(finals[name], finals[baseline]),
            bands_apart_nfe=None if name == baseline else bands_apart_from(
                [(r["nfe"], r["reward"]) for r in seeds], [(r["nfe"], r["reward"]) for r in runs[baseline]]),
            is_baseline=name == baseline,
        ))
    return rows


def seed_range(values: tuple[float | None, ...]) -> str:
    """Per-seed speed-ups as 'min-max', with 'k/n seeds' when some never reached the target."""
    reached = [v for v in values if v is not None]
    if not reached:
        return "not reached"
    low, high = f"{min(reached):.2f}", f"{max(reached):.2f}"
    text = low if low == high else f"{low}-{high}"
    return text if len(reached) == len(values) else f"{text} ({len(reached)}/{len(values)} seeds)"


def _cell(value: float | None, spec: str) -> str:
    if value is None:
        return "not reached"
    if math.isinf(value):
        return "inf (target met at cost 0)"
    return format(value, spec)


def markdown_table(rows: list[SummaryRow], target: float) -> str:
    """The summary as a markdown table: None as 'not reached'; a speed-up of a config that met
    the target at cost 0 (its first evaluation) while the baseline needed more as 'inf'; the
    per-seed speed-ups as 'min-max' ('-' for the baseline); 'bands' says whether the final rewards' seed bands are
    separated from the baseline's ('above' / 'below') or overlap ('overlap'): every seed's final against
    every baseline seed's; 'std bands apart from NFE': the forwards from which the mean +- std bands stay
    apart (:func:`bands_apart_from`), 'overlap' when they touch at the end."""
    lines = [
        f"Target reward = the baseline's final mean: {target:.4f}",
        "",
        "| config | final reward (mean +- std over seeds) | s to target | NFE to target | "
        "speed-up x (time) | speed-up x (NFE) | per seed x (time) | per seed x (NFE) | bands | "
        "std bands apart from NFE | edges per NFE |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bands = "baseline" if r.is_baseline else (r.separated or "overlap")
        apart = "-" if r.is_baseline else ("overlap" if r.bands_apart_nfe is None else f"{r.bands_apart_nfe:.0f}")
        lines.append(
            f"| {r.name} | {r.final_mean:.4f} +- {r.final_std:.4f} | {_cell(r.seconds_to_target, '.1f')} | "
            f"{_cell(r.nfe_to_target, '.0f')} | {_cell(r.speedup_time, '.2f')} | {_cell(r.speedup_nfe, '.2f')} | "
            f"{'-' if r.is_baseline else seed_range(r.seed_speedups_time)} | "
            f"{'-' if r.is_baseline else seed_range(r.seed_speedups_nfe)} | {bands} | {apart} | "
            f"{r.edges_per_nfe:.3f} |"
        )
    return "\n".join(lines) + "\n"


# Maximum scores the TreeGRPO paper normalises with, by reward type.
PAPER_REWARD_MAX = {"HPSv2": 1.0, "ImageReward": 2.0, "Aesthetic": 10.0, "CLIPScore": 1.0}


def normalized_reward(reward: float, base: float, maximum: float) -> float:
    """The paper's normalised reward ``(r - r_base) / (r_max - r_base)``: 0 for the untuned
    model, 1 at the reward's maximum. Raises ValueError when ``base >= maximum``."""
    if base >= maximum:
        raise ValueError(f"baseline reward {base} must be below the maximum {maximum}")
    return (reward - base) / (maximum - base)
