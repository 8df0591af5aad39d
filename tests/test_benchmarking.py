import math

import numpy as np
import pytest

from treegrpo.benchmarking import (bands_apart_from, first_crossing, markdown_table, mean_curve, seed_range, separation,
                                   speedup, summarize)


def test_first_crossing_interpolates_linearly():
    x = np.array([0.0, 10.0, 20.0])
    y = np.array([0.5, 0.6, 0.8])
    assert first_crossing(x, y, 0.7) == pytest.approx(15.0)
    assert first_crossing(x, y, 0.4) == 0.0  # reached at the start
    assert first_crossing(x, y, 0.9) is None


def test_mean_curve_on_common_grid():
    a = (np.array([0.0, 10.0]), np.array([0.0, 1.0]))
    b = (np.array([0.0, 5.0, 20.0]), np.array([0.0, 1.0, 1.0]))
    grid, mean, std = mean_curve([a, b], num=5)
    assert grid.tolist() == [0.0, 5.0, 10.0, 15.0, 20.0]  # up to the longer curve's end
    assert mean.tolist() == pytest.approx([0.0, 0.75, 1.0, 1.0, 1.0])  # a held at 1 after 10
    assert std.tolist() == pytest.approx([0.0, 0.25, 0.0, 0.0, 0.0])


def test_baseline_reaches_its_own_target_when_seeds_end_at_different_costs():
    # seeds end at 90 s and 110 s with finals 0.58 and 0.62; the target is their mean, 0.60.
    # After 90 s the fast seed is held at 0.58, so the mean curve is (0.5 + 0.12 t/110 + 0.58)/2,
    # which reaches 0.60 at t = 110 s: the baseline reaches its own target, at its end.
    slow = {"seconds": np.array([0.0, 110.0]), "nfe": np.array([0.0, 1000.0]),
            "edges": np.array([0.0, 10.0]), "reward": np.array([0.5, 0.62])}
    fast = {"seconds": np.array([0.0, 90.0]), "nfe": np.array([0.0, 1000.0]),
            "edges": np.array([0.0, 10.0]), "reward": np.array([0.5, 0.58])}
    row = summarize({"grpo": [slow, fast]}, baseline="grpo")[0]
    assert row.final_mean == pytest.approx(0.60)
    assert row.seconds_to_target == pytest.approx(110.0) and row.speedup_time == pytest.approx(1.0)
    assert row.nfe_to_target == pytest.approx(1000.0) and row.speedup_nfe == pytest.approx(1.0)


def linear_run(slope_per_second, nfe_per_second, seconds=100.0, start=0.5, edges_per_nfe=0.5):
    t = np.linspace(0.0, seconds, 11)
    return {"seconds": t, "nfe": t * nfe_per_second, "edges": t * nfe_per_second * edges_per_nfe,
            "reward": start + slope_per_second * t}


def test_summary_speedups_on_synthetic_curves():
    # baseline: reward 0.5 + 0.001 t -> final 0.6 at t = 100 s, 1000 forwards per second
    # tree: twice the slope with half the forwards per second -> reaches 0.6 at 50 s, 25,000 NFE
    runs = {
        "grpo": [linear_run(0.001, 1000), linear_run(0.001, 1000)],
        "tree": [linear_run(0.002, 500, edges_per_nfe=0.25), linear_run(0.002, 500, edges_per_nfe=0.25)],
    }
    rows = {r.name: r for r in summarize(runs, baseline="grpo")}
    assert rows["grpo"].final_mean == pytest.approx(0.6) and rows["grpo"].final_std == pytest.approx(0.0)
    assert rows["grpo"].seconds_to_target == pytest.approx(100.0)
    assert rows["tree"].seconds_to_target == pytest.approx(50.0)
    assert rows["tree"].speedup_time == pytest.approx(2.0)
    assert rows["tree"].nfe_to_target == pytest.approx(25_000)
    assert rows["tree"].speedup_nfe == pytest.approx(100_000 / 25_000)
    assert rows["tree"].edges_per_nfe == pytest.approx(0.25)
    table = markdown_table(list(rows.values()), target=0.6)
    # in forwards: tree 0.5 + 4e-6 n, grpo 0.5 + 1e-6 n, both without spread: apart from the first
    # grid point after 0 of the range both cover (0..50,000 in 50 points): 50,000 / 49 = 1020.4
    assert rows["tree"].bands_apart_nfe == pytest.approx(50_000 / 49)
    assert "| tree | 0.7000 +- 0.0000 | 50.0 | 25000 | 2.00 | 4.00 | 2.00 | 4.00 | above | 1020 | 0.250 |" in table
    assert "| grpo | 0.6000 +- 0.0000 | 100.0 | 100000 | 1.00 | 1.00 | - | - | baseline | - | 0.500 |" in table


def test_per_seed_speedups_and_band_separation():
    # baseline seeds end at 0.58 and 0.62 (target 0.60, reached by the mean curve at 100 s);
    # tree seeds: slope 0.002 reaches 0.60 at 50 s, slope 0.004 at 25 s -> x2 and x4 per seed;
    # a third config with one seed that never gets there
    base = [linear_run(0.0008, 1000), linear_run(0.0012, 1000)]
    runs = {"grpo": base, "tree": [linear_run(0.002, 1000), linear_run(0.004, 1000)],
            "mixed": [linear_run(0.002, 1000), linear_run(0.0, 1000, start=0.55)]}
    rows = {r.name: r for r in summarize(runs, baseline="grpo")}
    assert rows["tree"].seed_speedups_time == pytest.approx((2.0, 4.0))
    assert rows["tree"].seed_speedups_nfe == pytest.approx((2.0, 4.0))
    assert rows["tree"].separated == "above" and rows["mixed"].separated == ""
    assert rows["mixed"].seed_speedups_time[1] is None
    assert seed_range(rows["tree"].seed_speedups_nfe) == "2.00-4.00"
    assert seed_range(rows["mixed"].seed_speedups_nfe) == "2.00 (1/2 seeds)"
    assert seed_range((None, None)) == "not reached"
    assert separation(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == "below"
    assert separation(np.array([0.35]), np.array([0.3, 0.4])) == ""
    table = markdown_table(list(rows.values()), target=0.6)
    assert "| tree | 0.8000 +- 0.1000 |" in table and "| 2.00-4.00 | 2.00-4.00 | above |" in table
    assert "| 2.00 (1/2 seeds) | 2.00 (1/2 seeds) | overlap | overlap |" in table


def test_std_bands_apart_by_hand():
    x = np.linspace(0.0, 1000.0, 11)
    base = [(x, 0.49 + 1e-4 * x), (x, 0.51 + 1e-4 * x)]  # mean 0.5 + 1e-4 x, std 0.01
    tree = [(x, 0.49 + 3e-4 * x), (x, 0.51 + 3e-4 * x)]  # mean 0.5 + 3e-4 x, std 0.01
    # apart where 0.5 + 3e-4 x - 0.01 > 0.5 + 1e-4 x + 0.01, i.e. x > 100: first grid point 5 * 1000 / 49
    assert bands_apart_from(tree, base) == pytest.approx(5 * 1000 / 49)
    assert bands_apart_from(base, tree) == pytest.approx(5 * 1000 / 49)  # below, from the same point
    assert bands_apart_from(base, base) is None
    # apart from x = 100 on, then falling back: the means meet at x = 1000, so the bands overlap at the end
    fall = 3e-4 * np.minimum(x, 500) - 1e-4 * np.maximum(x - 500, 0)
    late = [(x, 0.49 + fall), (x, 0.51 + fall)]
    assert bands_apart_from(late, base) is None
    # only the range both cover counts: against a baseline that ends at x = 500 they are apart (grid
    # 0..500 in 50 points: first point above 100 is 10 * 500 / 49)
    short = [(x[:6], y[:6]) for x, y in base]
    assert bands_apart_from(late, short) == pytest.approx(10 * 500 / 49)


def test_summary_reports_unreached_target_and_unknown_baseline():
    runs = {"grpo": [linear_run(0.001, 1000)], "slow": [linear_run(0.0001, 1000)]}
    rows = {r.name: r for r in summarize(runs, baseline="grpo")}
    assert rows["slow"].seconds_to_target is None and rows["slow"].speedup_time is None
    assert "not reached" in markdown_table(list(rows.values()), target=0.6)
    with pytest.raises(KeyError, match="baseline 'tree'"):
        summarize(runs, baseline="tree")


def test_benchmark_smoke_run_writes_every_file(tmp_path):
    import json

    from tools.benchmark import main as benchmark_main

    out = benchmark_main(["--seeds", "1", "--budget-mode", "iters", "--budget", "2", "--eval-interval", "1",
                          "--eval-prompts", "4", "--out", str(tmp_path), "--save-final",
                          "--cfg-options", "prompts_per_iter=2", "sampler.num_steps=6"])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["results.json", "reward_vs_edges.png", "reward_vs_nfe.png", "reward_vs_seconds.png",
                     "runs", "summary.md"]
    results = json.loads((out / "results.json").read_text())["results"]
    assert sorted(results) == ["grpo_toy_shapes", "treegrpo_toy_shapes"]
    tree = results["treegrpo_toy_shapes"][0]
    assert tree["iter"] == [0, 1, 2] and tree["nfe"][0] == 0 and tree["nfe"][2] > tree["nfe"][1] > 0
    summary = (out / "summary.md").read_text()
    assert "| treegrpo_toy_shapes |" in summary and "| grpo_toy_shapes |" in summary
    assert "budget per run: 2 (iters)" in summary
    for name in ("treegrpo_toy_shapes_seed0", "grpo_toy_shapes_seed0"):  # --save-final: the last weights
        assert [p.name for p in (out / "runs" / name / "checkpoints").iterdir()] == ["iter_2"]


def test_target_met_at_cost_zero_is_reached_not_missing():
    # "good" starts above the baseline's final reward (0.6): met at 0 s / 0 NFE, infinitely faster;
    # "flat" (the baseline of the second case) never improves: it meets its own target at 0, x1.
    runs = {"grpo": [linear_run(0.001, 1000)], "good": [linear_run(0.0, 1000, start=0.7)]}
    rows = {r.name: r for r in summarize(runs, baseline="grpo")}
    assert rows["good"].seconds_to_target == 0.0 and rows["good"].nfe_to_target == 0.0
    assert rows["good"].speedup_time == math.inf and rows["good"].speedup_nfe == math.inf
    table = markdown_table(list(rows.values()), target=0.6)
    assert "| good | 0.7000 +- 0.0000 | 0.0 | 0 | inf (target met at cost 0) | inf (target met at cost 0) | inf | inf |" in table
    flat = {"flat": [linear_run(0.0, 1000, start=0.6)], "grpo": [linear_run(0.001, 1000)]}
    rows = {r.name: r for r in summarize(flat, baseline="flat")}
    assert rows["flat"].seconds_to_target == 0.0 and rows["flat"].speedup_time == 1.0
    assert rows["grpo"].seconds_to_target == pytest.approx(100.0) and rows["grpo"].speedup_time == 0.0
    assert "not reached" not in markdown_table(list(rows.values()), target=0.6)
    assert speedup(None, 3.0) is None and speedup(5.0, None) is None and speedup(6.0, 3.0) == 2.0


def test_merge_results_of_seeds_run_apart():
    from tools.benchmark import merge_results

    settings = {"budget": 10.0, "budget_mode": "nfe", "eval_interval": 5, "eval_prompts": 4, "cfg_options": {}}
    a = {"args": dict(settings, seeds=1, first_seed=0), "wall_seconds": 3.0,
         "results": {"tree": [{"seed": 0}], "grpo": [{"seed": 0}]}}
    b = {"args": dict(settings, seeds=2, first_seed=1), "wall_seconds": 4.5,
         "results": {"tree": [{"seed": 1}, {"seed": 2}], "grpo": [{"seed": 1}, {"seed": 2}]}}
    results, wall, args = merge_results([a, b])
    assert [r["seed"] for r in results["tree"]] == [0, 1, 2] and [r["seed"] for r in results["grpo"]] == [0, 1, 2]
    assert wall == 7.5 and args["seeds"] == 3 and args["budget"] == 10.0
    c = {"args": dict(settings, budget=20.0), "results": {}}
    with pytest.raises(ValueError, match=r"differ in \['budget'\]"):
        merge_results([a, c])
    # a variant run with --cfg-options joins under its label; unlabelled, its options must match
    variant = {"args": dict(settings, cfg_options={"schedule.depth": 2}), "results": {"tree": [{"seed": 0}]}}
    with pytest.raises(ValueError, match=r"differ in \['cfg_options'\].*FILE=NAME"):
        merge_results([a, variant])
    results, _, args = merge_results([a, variant], [None, "tree_depth2"])
    assert sorted(results) == ["grpo", "tree", "tree_depth2"] and results["tree_depth2"] == [{"seed": 0}]
    assert args["cfg_options_by_config"]["tree_depth2"] == {"schedule.depth": 2}
    with pytest.raises(ValueError, match="a label names the one config of a file"):
        merge_results([a, a], [None, "both"])
