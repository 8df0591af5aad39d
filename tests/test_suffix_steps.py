"""``suffix_steps``: a coarser ODE finish after the SDE window (cheaper leaves), tree and flat."""
import pytest
import torch
from test_samplers import PROMPTS, record_forward_rows, tree_nfe

from treegrpo.kernels import FlowMatchingKernel
from treegrpo.rollout import index_cond
from treegrpo.samplers import FlatSampler, TreeSampler
from treegrpo.samplers.common import suffix_levels
from treegrpo.schedules import BranchPlan

LEVELS = torch.linspace(1.0, 0.0, 11)  # T = 10: 1.0, 0.9, ..., 0.0


@pytest.mark.parametrize("stop,suffix_steps,expected", [
    (4, 2, [0.6, 0.3, 0.0]),   # schedule indices 4, 7, 10
    (4, 1, [0.6, 0.0]),        # one jump to the end
    (4, 3, [0.6, 0.4, 0.2, 0.0]),  # indices 4, 6, 8, 10
    (4, None, [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]),
    (4, 6, [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]),  # as many as the schedule has: all of them
    (4, 9, [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]),
    (10, 2, [0.0]),            # window ends at the last step: nothing to integrate
])
def test_suffix_levels_by_hand(stop, suffix_steps, expected):
    assert suffix_levels(LEVELS, stop, suffix_steps).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("start,depth,k,steps,suffix_steps", [(2, 3, 2, 8, 1), (1, 2, 3, 8, 2), (0, 1, 2, 4, 5)])
def test_tree_nfe_with_a_coarse_suffix(tiny_policy, start, depth, k, steps, suffix_steps):
    plan = BranchPlan(start=start, depth=depth, k=k)
    rollout = TreeSampler(num_steps=steps, suffix_steps=suffix_steps).sample(
        tiny_policy, FlowMatchingKernel(0.7), PROMPTS, plan, torch.Generator().manual_seed(0))
    suffix = min(steps - start - depth, suffix_steps)
    assert rollout.nfe == len(PROMPTS) * tree_nfe(start, depth, k, suffix)
    assert rollout.images.shape == (len(PROMPTS) * k**depth, 3, 4, 4)


def test_tree_suffix_forwards_are_the_leaves_only(tiny_policy):
    rows = record_forward_rows(tiny_policy)
    TreeSampler(num_steps=7, suffix_steps=1).sample(
        tiny_policy, FlowMatchingKernel(0.7), PROMPTS, BranchPlan(start=2, depth=3, k=2), torch.Generator())
    p = len(PROMPTS)
    assert rows == [p, p] + [p, 2 * p, 4 * p] + [8 * p]  # prefix, window, ONE suffix forward (was 2)


def test_one_suffix_step_of_a_flow_model_is_the_x0_prediction(tiny_policy):
    """Euler from sigma to 0 is x - sigma * v: the leaf's image is the decoded x0 prediction."""
    kernel, plan = FlowMatchingKernel(0.7), BranchPlan(start=1, depth=2, k=2)
    rollout = TreeSampler(num_steps=6, suffix_steps=1).sample(
        tiny_policy, kernel, PROMPTS, plan, torch.Generator().manual_seed(3))
    leaves = rollout.latents[rollout.leaf_nodes]
    step = torch.full((leaves.shape[0],), plan.stop)
    velocity = tiny_policy.predict(leaves, rollout.levels[step], index_cond(rollout.cond, rollout.leaf_prompt_index))
    x0 = kernel.predict_x0(leaves, velocity, rollout.levels, step)
    torch.testing.assert_close(rollout.images, tiny_policy.decode(x0).float())


def test_window_is_unchanged_and_full_suffix_is_the_default(tiny_policy):
    kernel, plan = FlowMatchingKernel(0.7), BranchPlan(start=1, depth=2, k=2)

    def sample(suffix_steps):
        return TreeSampler(num_steps=6, suffix_steps=suffix_steps).sample(
            tiny_policy, kernel, PROMPTS, plan, torch.Generator().manual_seed(5))

    default, same, coarse = sample(None), sample(3), sample(1)
    assert torch.equal(default.images, same.images)  # 3 = T - stop: the schedule's own steps
    # the trained part (nodes, log-probs) does not depend on the finish; only the scored images do
    assert torch.equal(coarse.latents, default.latents) and torch.equal(coarse.log_prob, default.log_prob)
    assert not torch.allclose(coarse.images, default.images)


def test_flat_nfe_and_forwards_with_a_coarse_suffix(tiny_policy):
    rows = record_forward_rows(tiny_policy)
    plan = BranchPlan(start=1, depth=2, k=1)
    rollout = FlatSampler(num_steps=8, group_size=3, suffix_steps=2).sample(
        tiny_policy, FlowMatchingKernel(0.7), PROMPTS, plan, torch.Generator().manual_seed(0))
    chains = len(PROMPTS) * 3
    assert rollout.nfe == chains * (1 + 2 + 2)  # prefix 1, window 2, suffix 2 of the 5 left
    assert rows == [chains] * 5
    full = FlatSampler(num_steps=8, group_size=3).sample(
        tiny_policy, FlowMatchingKernel(0.7), PROMPTS, plan, torch.Generator().manual_seed(0))
    assert torch.equal(full.log_prob, rollout.log_prob) and full.nfe == chains * 8


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_suffix_steps_is_refused(bad):
    for make in (lambda: TreeSampler(suffix_steps=bad), lambda: FlatSampler(group_size=2, suffix_steps=bad)):
        with pytest.raises(ValueError, match="suffix_steps must be None .* or an int >= 1"):
            make()


def test_layout_suffix1_config_changes_only_the_finish():
    from pathlib import Path

    from treegrpo.inference import load_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    base = load_config(str(configs / "treegrpo_toy_layout.py"), {})
    fast = load_config(str(configs / "treegrpo_toy_layout_suffix1.py"), {})
    assert fast.sampler.suffix_steps == 1 and base.sampler.get("suffix_steps") is None
    assert {k: v for k, v in fast.sampler.items() if k != "suffix_steps"} == dict(base.sampler)
    for key in set(base.keys()) | set(fast.keys()):
        if key not in ("sampler", "filename"):
            assert fast.get(key) == base.get(key), key
