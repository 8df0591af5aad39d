"""Branching schedules: hand-checked windows, determinism, coverage, bounds errors, registry."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from treegrpo.registry import SCHEDULES, build, registered_names
from treegrpo.schedules import BranchPlan, EveryStep, FixedWindow, RandomWindow, SlidingWindow


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_branch_plan_steps_and_counts():
    plan = BranchPlan(start=2, depth=3, k=2)
    assert list(plan.steps) == [2, 3, 4] and plan.stop == 5
    assert plan.num_leaves == 8
    assert plan.num_parents == 1 + 2 + 4  # (k^d - 1) / (k - 1): one training forward each
    assert plan.num_edges == 2 + 4 + 8
    flat = BranchPlan(start=0, depth=4, k=1)
    assert (flat.num_leaves, flat.num_parents, flat.num_edges) == (1, 4, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.start = 0  # type: ignore[misc]
    with pytest.raises(ValueError, match="depth"):
        BranchPlan(start=0, depth=0, k=2)


def test_sliding_window_hand_checked_sequence():
    # num_steps 10, depth 3 -> starts in [0, 7] (8 positions); shift 3 every 2 iterations
    schedule = SlidingWindow(depth=3, k=2, shift=3, every=2)
    starts = [schedule.plan(i, 10, _gen()).start for i in range(12)]
    assert starts == [0, 0, 3, 3, 6, 6, 1, 1, 4, 4, 7, 7]
    plan = schedule.plan(5, 10, _gen())
    assert (plan.depth, plan.k) == (3, 2)


def test_sliding_window_with_start_range_wraps_inside_it():
    schedule = SlidingWindow(depth=2, k=3, shift=1, every=1, start_range=(2, 4))
    assert [schedule.plan(i, 8).start for i in range(7)] == [2, 3, 4, 2, 3, 4, 2]
    assert SlidingWindow(depth=2, k=2, shift=0).plan(9, 8).start == 0


def test_random_window_is_deterministic_for_a_seeded_generator():
    schedule = RandomWindow(depth=2, k=3)
    first = [schedule.plan(i, 10, _gen(123)).start for i in range(5)]
    gen_a, gen_b = _gen(7), _gen(7)
    seq_a = [schedule.plan(i, 10, gen_a).start for i in range(50)]
    seq_b = [schedule.plan(i, 10, gen_b).start for i in range(50)]
    assert seq_a == seq_b
    assert len(set(first)) == 1  # same fresh seed -> same draw
    assert len(set(seq_a)) > 1  # one generator moves on


def test_random_window_covers_the_whole_range_and_no_more():
    gen = _gen(0)
    starts = [RandomWindow(depth=3, k=2).plan(i, 10, gen).start for i in range(400)]
    assert set(starts) == set(range(0, 8))
    gen = _gen(1)
    starts = [RandomWindow(depth=2, k=2, start_range=(3, 5)).plan(i, 10, gen).start for i in range(200)]
    assert set(starts) == {3, 4, 5}
    plan = RandomWindow(depth=10, k=2).plan(0, 10, _gen())
    assert (plan.start, plan.depth) == (0, 10)


def test_fixed_window_and_every_step():
    assert FixedWindow(start=4, depth=2, k=3).plan(17, 10, _gen()) == BranchPlan(4, 2, 3)
    assert EveryStep().plan(0, 12, _gen()) == BranchPlan(start=0, depth=12, k=1)
    assert EveryStep(k=2).plan(3, 5, None) == BranchPlan(start=0, depth=5, k=2)


def test_bounds_errors_name_the_key_and_allowed_range():
    with pytest.raises(ValueError, match=r"depth must be in \[1, 4\]"):
        RandomWindow(depth=5, k=2).plan(0, 4, _gen())
    with pytest.raises(ValueError, match=r"start must be in \[0, 7\].*start=8"):
        FixedWindow(start=8, depth=3, k=2).plan(0, 10, _gen())
    with pytest.raises(ValueError, match=r"start_range must satisfy 0 <= lo <= hi <= 7"):
        RandomWindow(depth=3, k=2, start_range=(2, 9)).plan(0, 10, _gen())
    with pytest.raises(ValueError, match=r"start_range must satisfy 0 <= lo <= hi <= 7"):
        SlidingWindow(depth=3, k=2, start_range=(0, 8)).plan(0, 10, _gen())
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        EveryStep().plan(0, 0, _gen())


@pytest.mark.parametrize(
    "ctor, key",
    [
        (lambda: RandomWindow(depth=0, k=2), "depth"),
        (lambda: RandomWindow(depth=2, k=0), "k"),
        (lambda: RandomWindow(depth=2, k=2, start_range=(3, 1)), "start_range"),
        (lambda: RandomWindow(depth=2, k=2, start_range=(-1, 1)), "start_range"),
        (lambda: FixedWindow(start=-1, depth=2, k=2), "start"),
        (lambda: SlidingWindow(depth=2, k=2, every=0), "every"),
        (lambda: SlidingWindow(depth=2, k=2, shift=-1), "shift"),
        (lambda: EveryStep(k=0), "k"),
        (lambda: RandomWindow(depth=2.5, k=2), "depth"),
    ],
)
def test_constructor_validation(ctor, key):
    with pytest.raises(ValueError, match=rf"^{key} must"):
        ctor()


def test_every_schedule_builds_through_the_registry():
    assert {"RandomWindow", "FixedWindow", "SlidingWindow", "EveryStep"} <= set(
        registered_names(SCHEDULES)
    )
    cfgs = [
        dict(type="RandomWindow", depth=3, k=2),
        dict(type="FixedWindow", start=1, depth=3, k=2),
        dict(type="SlidingWindow", depth=3, k=2, shift=2, every=5),
        dict(type="EveryStep", k=1),
    ]
    expected = [RandomWindow, FixedWindow, SlidingWindow, EveryStep]
    for cfg, cls in zip(cfgs, expected):
        schedule = build(SCHEDULES, cfg)
        assert type(schedule) is cls
        plan = schedule.plan(0, 10, _gen())
        assert isinstance(plan, BranchPlan) and plan.stop <= 10


def test_branch_plan_per_depth_k_counts_by_hand():
    # k = [4, 2, 2]: widths 1, 4, 8, 16 -> 16 leaves, 1 + 4 + 8 parents, 4 + 8 + 16 edges
    plan = BranchPlan(start=1, depth=3, k=[4, 2, 2])
    assert plan.k == (4, 2, 2) and plan.ks == (4, 2, 2)  # a list is stored as a tuple
    assert [plan.width(level) for level in range(4)] == [1, 4, 8, 16]
    assert (plan.num_leaves, plan.num_parents, plan.num_edges) == (16, 13, 28)
    shallow = BranchPlan(start=0, depth=2, k=(1, 3))  # a chain step, then 3 children
    assert (shallow.num_leaves, shallow.num_parents, shallow.num_edges) == (3, 2, 4)
    # an int k is unchanged and its ks is the repeated tuple; the same tree counts as a list
    uniform, listed = BranchPlan(2, 3, 2), BranchPlan(2, 3, [2, 2, 2])
    assert uniform.k == 2 and uniform.ks == (2, 2, 2)
    counts = (uniform.num_leaves, uniform.num_parents, uniform.num_edges)
    assert counts == (listed.num_leaves, listed.num_parents, listed.num_edges) == (8, 7, 14)
    assert hash(listed) == hash(BranchPlan(2, 3, (2, 2, 2)))


@pytest.mark.parametrize("k", [[2, 2], [2, 2, 2, 2], [2, 0, 2], [1, 1, 1], [2, 2.0, 2], [True, 2, 2], "222"])
def test_per_depth_k_errors_name_the_key(k):
    with pytest.raises(ValueError, match=r"k must be an integer >= 1"):
        BranchPlan(start=0, depth=3, k=k)
    with pytest.raises(ValueError, match=r"k must be an integer >= 1"):
        RandomWindow(depth=3, k=k)


def test_schedules_pass_per_depth_k_and_keep_int_draws():
    gen_int, gen_list = _gen(5), _gen(5)
    ints = [RandomWindow(depth=3, k=2).plan(i, 10, gen_int) for i in range(20)]
    lists = [RandomWindow(depth=3, k=[4, 2, 2]).plan(i, 10, gen_list) for i in range(20)]
    assert [p.start for p in ints] == [p.start for p in lists]  # same random draws
    assert all(p.k == 2 for p in ints) and all(p.ks == (4, 2, 2) for p in lists)
    assert FixedWindow(start=1, depth=2, k=[4, 2]).plan(0, 5) == BranchPlan(1, 2, (4, 2))
    assert SlidingWindow(depth=1, k=[8]).plan(3, 4).ks == (8,)
    assert "k=(4, 2, 2)" in repr(RandomWindow(depth=3, k=[4, 2, 2]))
    with pytest.raises(ValueError, match=r"EveryStep.*k must be one integer"):
        EveryStep(k=[2, 2])
    built = build(SCHEDULES, dict(type="RandomWindow", depth=2, k=[3, 2]))
    assert built.plan(0, 4, _gen()).num_leaves == 6


def test_config_check_refuses_bad_per_depth_k_and_accepts_good():
    from pathlib import Path

    from treegrpo.config_check import check_window
    from treegrpo.inference import load_config

    toy = Path(__file__).resolve().parents[1] / "configs" / "treegrpo_toy_shapes.py"  # depth 3
    assert check_window(load_config(toy, {"schedule.k": [4, 2, 2]})) == []
    (wrong_length,) = check_window(load_config(toy, {"schedule.k": [4, 2]}))
    assert "list of depth=3 integers" in wrong_length and "k=[4, 2]" in wrong_length
    (single_leaf,) = check_window(load_config(toy, {"schedule.k": [1, 1, 1]}))
    assert "product is > 1" in single_leaf
    (int_one,) = check_window(load_config(toy, {"schedule.k": 1}))
    assert "schedule.k=1 with depth=3 gives 1 leaf" in int_one and "zero" in int_one
