"""AdaptiveWindow: the bandit pieces against hand computations, its checks, and the runner
integration (planned starts follow the bandit; a resume continues with the saved bandit state)."""
import math

import pytest
import torch

from conftest import read_log, write_config
from tools.train import main as train_main
from treegrpo.registry import SCHEDULES, build
from treegrpo.schedules import AdaptiveWindow, BranchPlan
from treegrpo.schedules.adaptive import choose_arm, tree_variances, ucb_scores, update_arm


def test_tree_variances_by_hand():
    rewards = torch.tensor([1.0, 3.0, 0.0, 0.0, 2.0, 5.0])
    group = torch.tensor([0, 0, 1, 1, 2, 2])
    # (1,3): mean 2, var 1; (0,0): 0; (2,5): mean 3.5, var 2.25
    assert torch.allclose(tree_variances(rewards, group, 3), torch.tensor([1.0, 0.0, 2.25]))
    # leaves of one tree need not be contiguous
    assert torch.allclose(tree_variances(torch.tensor([1.0, 0.0, 3.0, 0.0]), torch.tensor([0, 1, 0, 1]), 2),
                          torch.tensor([1.0, 0.0]))


def test_update_arm_sample_mean_and_running_mean():
    assert update_arm(0.0, 0, 0.4, None) == (0.4, 1)  # the first observation is the mean
    mean, n = update_arm(0.4, 1, 0.2, None)
    assert n == 2 and mean == pytest.approx(0.3)
    mean, n = update_arm(0.3, 2, 0.6, None)
    assert n == 3 and mean == pytest.approx(0.4)  # (0.4 + 0.2 + 0.6) / 3
    # alpha=0.5: steps 1, 1/2, then max(1/3, 0.5) = 0.5
    assert update_arm(0.0, 0, 0.4, 0.5) == (0.4, 1)
    assert update_arm(0.3, 2, 0.6, 0.5)[0] == pytest.approx(0.45)


def test_greedy_choice_and_ucb_bonus_by_hand():
    means, counts = [0.1, 0.5, 0.2], [1, 1, 1]
    assert choose_arm(means, counts, 0.0) == 1
    # N = 4 with counts [2, 1, 1]: bonus = c * max(m) * sqrt(ln 4 / n)
    counts = [2, 1, 1]
    scores = ucb_scores(means, counts, 1.0)
    assert scores[0] == pytest.approx(0.1 + 0.5 * math.sqrt(math.log(4) / 2))  # 0.5163
    assert scores[1] == pytest.approx(0.5 + 0.5 * math.sqrt(math.log(4)))  # 1.0887
    assert scores[2] == pytest.approx(0.2 + 0.5 * math.sqrt(math.log(4)))  # 0.7887
    assert choose_arm(means, counts, 1.0) == 1
    # a large bonus favours the less tried arm over a higher mean: arm 1 tried 10 times
    scores = ucb_scores([0.4, 0.5], [1, 10], 2.0)  # N = 11, ln 11 = 2.3979
    assert scores[0] == pytest.approx(0.4 + 1.0 * math.sqrt(math.log(11)))  # 1.9485
    assert scores[1] == pytest.approx(0.5 + 1.0 * math.sqrt(math.log(11) / 10))  # 0.9897
    assert choose_arm([0.4, 0.5], [1, 10], 2.0) == 0
    # untried arms first, in order; ties go to the lowest index
    assert choose_arm([0.0, 0.9, 0.0], [0, 1, 0], 1.0) == 0
    assert choose_arm([0.3, 0.3], [1, 1], 0.0) == 0


def test_plan_tries_every_start_then_follows_the_observed_variances():
    schedule = build(SCHEDULES, dict(type="AdaptiveWindow", depth=2, k=2, start_range=(0, 2), c=0.0))
    planned = []
    for it, value in enumerate([0.1, 0.5, 0.2]):
        plan = schedule.plan(it, num_steps=5)
        planned.append(plan.start)
        assert schedule.observe(plan, torch.tensor([value, value])) == pytest.approx(value)
    assert planned == [0, 1, 2]
    assert schedule.plan(3, 5) == BranchPlan(start=1, depth=2, k=2)  # greedy: the 0.5 arm
    assert schedule.state_dict() == {"starts": [0, 1, 2], "means": pytest.approx([0.1, 0.5, 0.2]),
                                     "counts": [1, 1, 1]}
    # the mean over trees is credited: (0.0 + 0.1) / 2 to start 1 -> (0.5 + 0.05) / 2
    schedule.observe(BranchPlan(start=1, depth=2, k=2), torch.tensor([0.0, 0.1]))
    assert schedule.means[1] == pytest.approx(0.275) and schedule.counts[1] == 2
    assert schedule.plan(4, 5).start == 1  # 0.275 still beats 0.2 and 0.1


def test_state_dict_round_trip_and_checks():
    a = AdaptiveWindow(depth=2, k=2, c=0.5)
    for it, value in enumerate([0.3, 0.1, 0.2, 0.4]):
        a.observe(a.plan(it, 5), torch.tensor([value]))
    b = AdaptiveWindow(depth=2, k=2, c=0.5)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert [b.plan(i, 5).start for i in range(4, 8)] == [a.plan(i, 5).start for i in range(4, 8)]
    with pytest.raises(ValueError, match="arms are starts"):
        b.plan(8, 6)  # num_steps changed: other arms
    with pytest.raises(ValueError, match="not one of the planned starts"):
        b.observe(BranchPlan(start=4, depth=2, k=2), torch.tensor([0.1]))
    with pytest.raises(ValueError, match="one length"):
        b.load_state_dict({"starts": [0, 1], "means": [0.1], "counts": [1, 1]})
    for key, value in (("c", -1.0), ("epsilon", 1.5), ("alpha", 0.0), ("c", True)):
        with pytest.raises(ValueError, match=f"{key} must be a number"):
            AdaptiveWindow(depth=2, k=2, **{key: value})
    with pytest.raises(ValueError, match="start_range"):
        AdaptiveWindow(depth=2, k=2, start_range=(2, 1))


def test_epsilon_draws_from_the_plan_generator():
    def starts(seed):
        s = AdaptiveWindow(depth=1, k=2, c=0.0, epsilon=1.0)
        gen = torch.Generator().manual_seed(seed)
        return [s.plan(i, 8, gen).start for i in range(12)]

    assert starts(0) == starts(0) and len(set(starts(0))) > 1  # deterministic, not the greedy start


ADAPTIVE = "schedule = dict(type='AdaptiveWindow', depth=2, k=2, start_range=(0, 2), c=0.0)\n"


def test_runner_plans_follow_the_bandit_and_resume_keeps_its_state(tmp_path, monkeypatch):
    observed = []
    observe = AdaptiveWindow.observe

    def recording(self, plan, variances):
        observed.append((plan.start, variances.clone()))
        return observe(self, plan, variances)

    monkeypatch.setattr(AdaptiveWindow, "observe", recording)
    straight = train_main([write_config(tmp_path, iters=4, extra=ADAPTIVE), "--work-dir", str(tmp_path / "a")])
    starts = [r["rollout/window_start"] for r in read_log(tmp_path / "a")]
    assert [s for s, _ in observed] == starts
    assert starts[:3] == [0, 1, 2]  # every start once
    assert all(v.shape == (2,) for _, v in observed)  # one variance per tree (prompts_per_iter=2)
    first = [v.double().mean().item() for _, v in observed[:3]]
    assert len(set(first)) == 3 and min(first) > 0  # real, distinct measured variances
    assert starts[3] == max(range(3), key=lambda s: first[s])  # greedy (c=0) on the first round
    state = straight.schedule.state_dict()
    assert state["counts"] == [2 if s == starts[3] else 1 for s in range(3)]
    assert state["means"][starts[3]] == pytest.approx((first[starts[3]] + observed[3][1].double().mean().item()) / 2)

    train_main([write_config(tmp_path, name="b.py", iters=2, extra=ADAPTIVE), "--work-dir", str(tmp_path / "b")])
    saved = torch.load(tmp_path / "b" / "checkpoints" / "iter_2" / "training_state.pt", weights_only=True)
    assert saved["schedule"]["starts"] == [0, 1, 2] and saved["schedule"]["counts"] == [1, 1, 0]
    resumed = train_main([write_config(tmp_path, name="b.py", iters=4, extra=ADAPTIVE), "--work-dir",
                          str(tmp_path / "b"), "--resume", str(tmp_path / "b" / "checkpoints" / "iter_2")])
    assert [r["rollout/window_start"] for r in read_log(tmp_path / "b")] == starts
    assert resumed.schedule.state_dict() == state
    a, b = straight.policy.trainable_state_dict(), resumed.policy.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_old_checkpoint_without_schedule_state_still_resumes(tmp_path):
    train_main([write_config(tmp_path, iters=2), "--work-dir", str(tmp_path / "r")])
    path = tmp_path / "r" / "checkpoints" / "iter_2" / "training_state.pt"
    state = torch.load(path, weights_only=True)
    assert state.pop("schedule") is None  # RandomWindow has no state
    torch.save(state, path)
    resumed = train_main([write_config(tmp_path, iters=3), "--work-dir", str(tmp_path / "r"),
                          "--resume", str(path.parent)])
    assert resumed.iteration == 3
