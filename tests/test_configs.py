"""Every shipped config (ablations included) loads, builds and trains for two iterations on the\nreal toy world."""
import json
from pathlib import Path

import pytest
import torch

from tools.train import load_config, main as train_main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in [*(ROOT / "configs").glob("*.py"),
                                                      *(ROOT / "configs" / "ablations").glob("*.py")])
SMALL = ["max_iters=2", "prompts_per_iter=2", "hooks.1.num_prompts=4", "hooks.1.interval=2",
         "sampler.num_steps=6"]


def test_main_configs_exist():
    assert "configs/treegrpo_toy_shapes.py" in CONFIGS and "configs/grpo_toy_shapes.py" in CONFIGS


@pytest.mark.parametrize("config", CONFIGS)
def test_config_trains_two_iterations(config, tmp_path):
    runner = train_main([str(ROOT / config), "--work-dir", str(tmp_path), "--cfg-options", *SMALL])
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/reward_mean" in r]
    train = [r for r in records if "reward/mean" in r]
    assert [r["iter"] for r in evals] == [0, 2] and len(train) == 2
    low, high = (-1.0, 0.0) if "brightness" in config else (0.0, 1.0)  # reward ranges
    assert all(low <= r["eval/reward_mean"] <= high for r in evals)
    assert all(torch.isfinite(torch.tensor(r["losses/loss"])) for r in train)
    assert (tmp_path / "eval" / "iter_000002.png").is_file()
    assert (tmp_path / "checkpoints" / "iter_2" / "model.safetensors").is_file()
    assert runner.iteration == 2


def test_grpo_baseline_has_the_tree_budget():
    """Same prompts, leaves per prompt (G = k**d), window, reward and optimizer as the tree."""
    tree = load_config(str(ROOT / "configs/treegrpo_toy_shapes.py"), {})
    flat = load_config(str(ROOT / "configs/grpo_toy_shapes.py"), {})
    assert flat.sampler.group_size == tree.schedule.k ** tree.schedule.depth
    assert flat.sampler.num_steps == tree.sampler.num_steps
    for key in ("schedule", "reward", "optimizer", "prompts_per_iter", "max_iters", "loss", "update", "policy"):
        assert flat[key] == tree[key], key
    assert (flat.sampler.type, flat.advantage.type) == ("FlatSampler", "GroupNorm")
    assert (tree.sampler.type, tree.advantage.type) == ("TreeSampler", "TreeBackup")
