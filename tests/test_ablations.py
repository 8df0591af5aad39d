"""Each ablation config inherits the toy TreeGRPO config and changes exactly the intended keys."""
from pathlib import Path

import pytest
from mmengine.config import Config

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "treegrpo_toy_shapes.py"

EXPECTED = {
    "treegrpo_toy_shapes_k3.py": {"schedule.k": 3},
    "treegrpo_toy_shapes_k4.py": {"schedule.k": 4},
    "treegrpo_toy_shapes_depth1.py": {"schedule.depth": 1},
    "treegrpo_toy_shapes_depth2.py": {"schedule.depth": 2},
    "treegrpo_toy_shapes_fixed_window.py": {
        "schedule.type": "FixedWindow", "schedule.start": 0, "schedule.start_range": None},
    "treegrpo_toy_shapes_sliding_window.py": {
        "schedule.type": "SlidingWindow", "schedule.shift": 1, "schedule.every": 4},
    "treegrpo_toy_shapes_adaptive_window.py": {
        "schedule.type": "AdaptiveWindow", "schedule.c": 0.5, "schedule.alpha": 0.2},
    "treegrpo_toy_shapes_mean_backup.py": {"advantage.weighting": "mean"},
    "treegrpo_toy_shapes_prob_t01.py": {"advantage.temperature": 0.1},
    "treegrpo_toy_shapes_sum_backup.py": {"advantage.weighting": "sum"},
    "treegrpo_toy_shapes_depth_norm.py": {"advantage.depth_norm": "depth"},
    "treegrpo_toy_shapes_depth_scale.py": {
        "advantage.depth_scale.0": 1.5, "advantage.depth_scale.1": 1.0,
        "advantage.depth_scale.2": 0.5},
    "treegrpo_toy_shapes_eta05.py": {"kernel.eta": 0.5},
    "treegrpo_toy_shapes_eta1.py": {"kernel.eta": 1.0},
    "treegrpo_toy_shapes_prune50.py": {"update.prune.keep_fraction": 0.5},
    "treegrpo_toy_shapes_epochs2.py": {"update.num_inner_epochs": 2},
    "treegrpo_toy_shapes_overlap.py": {"overlap_reward": True},
    # per-depth k (a list replaces the base int k = 2)
    "treegrpo_toy_shapes_k422.py": {"schedule.k": None, "schedule.k.0": 4, "schedule.k.1": 2, "schedule.k.2": 2},
    "treegrpo_toy_shapes_leaves8_k222.py": {
        "schedule.k": None, "schedule.k.0": 2, "schedule.k.1": 2, "schedule.k.2": 2},
    "treegrpo_toy_shapes_leaves8_k42.py": {
        "schedule.depth": 2, "schedule.k": None, "schedule.k.0": 4, "schedule.k.1": 2},
    "treegrpo_toy_shapes_leaves8_k8.py": {"schedule.depth": 1, "schedule.k": None, "schedule.k.0": 8},
}

LEAVES = {"treegrpo_toy_shapes_k422.py": 16, "treegrpo_toy_shapes_leaves8_k222.py": 8,
          "treegrpo_toy_shapes_leaves8_k42.py": 8, "treegrpo_toy_shapes_leaves8_k8.py": 8}


def flatten(value, prefix=""):
    """Nested dicts/lists -> {'a.b.0.c': leaf}."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {prefix: value}
    flat = {}
    for key, sub in items:
        flat.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def test_every_ablation_file_is_listed():
    found = sorted(p.name for p in (ROOT / "configs" / "ablations").glob("*.py"))
    assert found == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ablation_changes_only_its_keys(name):
    base = flatten(Config.fromfile(str(BASE)).to_dict())
    child = flatten(Config.fromfile(str(ROOT / "configs" / "ablations" / name)).to_dict())
    changed = {key: child.get(key) for key in set(base) | set(child) if base.get(key) != child.get(key)}
    assert changed == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_per_depth_k_ablations_build_with_their_leaf_count(name):
    from treegrpo.registry import SCHEDULES, build

    cfg = Config.fromfile(str(ROOT / "configs" / "ablations" / name))
    plan = build(SCHEDULES, cfg.schedule).plan(0, cfg.sampler.num_steps)
    assert plan.num_leaves == LEAVES[name] and len(plan.ks) == plan.depth
