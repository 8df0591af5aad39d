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
    "treegrpo_toy_shapes_mean_backup.py": {"advantage.weighting": "mean"},
    "treegrpo_toy_shapes_prob_t01.py": {"advantage.temperature": 0.1},
    "treegrpo_toy_shapes_sum_backup.py": {"advantage.weighting": "sum"},
    "treegrpo_toy_shapes_depth_norm.py": {"advantage.depth_norm": "depth"},
    "treegrpo_toy_shapes_eta05.py": {"kernel.eta": 0.5},
    "treegrpo_toy_shapes_eta1.py": {"kernel.eta": 1.0},
}


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
