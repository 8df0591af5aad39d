import pytest
import torch

from treegrpo.kernels import FlowMatchingKernel
from treegrpo.samplers import FlatSampler, TreeSampler
from treegrpo.schedules import BranchPlan
from treegrpo.update import children_of, edge_log_probs

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def tree_nfe(p, d, k, s):
    """Closed form of DESIGN.md: prefix + one forward per internal node + suffix per leaf."""
    return p + sum(k ** (level - 1) for level in range(1, d + 1)) + k**d * s


@pytest.mark.parametrize("start,depth,k,steps", [(0, 1, 2, 4), (2, 3, 2, 8), (1, 2, 3, 6), (3, 3, 4, 6)])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_tree_nfe_and_counts_match_closed_form(tiny_policy, start, depth, k, steps, guidance):
    sampler = TreeSampler(num_steps=steps, guidance_scale=guidance)
    plan = BranchPlan(start=start, depth=depth, k=k)
    rollout = sampler.sample(tiny_policy, FlowMatchingKernel(0.7), PROMPTS, plan, torch.Generator().manual_seed(0))
    suffix = steps - start - depth
    cfg_factor = 2 if guidance > 1 else 1
    assert rollout.nfe == len(PROMPTS) * tree_nfe(start, depth, k, suffix) * cfg_factor
    nodes_per_tree = sum(k**level for level in range(depth + 1))
    assert rollout.num_nodes == len(PROMPTS) * nodes_per_tree
    assert rollout.edge_nodes.numel() == len(PROMPTS) * (nodes_per_tree - 1)
    assert rollout.parent_nodes.numel() == len(PROMPTS) * (k**depth - 1) // (k - 1)
    assert rollout.leaf_nodes.numel() == len(PROMPTS) * k**depth
    assert rollout.images.shape == (len(PROMPTS) * k**depth, 3, 4, 4)
    # every leaf belongs to its tree's prompt, k**depth leaves per prompt
    assert torch.bincount(rollout.leaf_prompt_index).tolist() == [k**depth] * len(PROMPTS)
    # edges are taken at the window steps, children one step later
    edges = rollout.edge_nodes
    parent_steps = rollout.step[rollout.parent[edges]]
    assert set(parent_steps.tolist()) == set(range(start, start + depth))
    assert torch.equal(rollout.step[edges], parent_steps + 1)


def record_forward_rows(policy) -> list[int]:
    """A list that receives the row count of every ``policy.model_output`` call (a test spy on
    the instance)."""
    rows, original = [], policy.model_output

    def recording(latents, level, cond, model=None):
        rows.append(latents.shape[0])
        return original(latents, level, cond, model)

    policy.model_output = recording
    return rows


def test_tree_forwards_are_batched_per_depth(tiny_policy):
    """All nodes of one depth (across all trees) go through the model as ONE forward."""
    batch_sizes = record_forward_rows(tiny_policy)
    plan = BranchPlan(start=2, depth=3, k=2)
    TreeSampler(num_steps=7).sample(tiny_policy, FlowMatchingKernel(0.7), PROMPTS, plan, torch.Generator())
    p = len(PROMPTS)
    assert batch_sizes == [p, p] + [p, 2 * p, 4 * p] + [8 * p] * 2


def test_tree_leaves_share_prefix_and_eta_zero_gives_equal_leaves(tiny_policy):
    plan = BranchPlan(start=2, depth=2, k=3)
    sampler = TreeSampler(num_steps=6)
    rollout = sampler.sample(tiny_policy, FlowMatchingKernel(0.0), PROMPTS, plan, torch.Generator().manual_seed(1))
    for prompt in range(len(PROMPTS)):
        leaves = rollout.images[rollout.leaf_prompt_index == prompt]
        assert all(torch.equal(leaves[0], leaf) for leaf in leaves[1:])
    # with noise, leaves differ, but every node of a tree descends from one root whose state is the
    # shared prefix: identical bits to running the prefix alone for that prompt
    noisy = sampler.sample(tiny_policy, FlowMatchingKernel(0.7), PROMPTS, plan, torch.Generator().manual_seed(1))
    assert not torch.equal(noisy.images[0], noisy.images[1])
    roots = torch.nonzero(noisy.parent == -1).flatten()
    assert torch.equal(noisy.latents[roots], rollout.latents[roots])  # prefix independent of eta
    # the k children of one parent are drawn with different noise
    first_children = torch.nonzero(noisy.parent == roots[0]).flatten()
    assert first_children.numel() == 3
    assert not torch.equal(noisy.latents[first_children[0]], noisy.latents[first_children[1]])


def test_flat_sampler_nfe_chains_and_shared_noise(tiny_policy):
    plan = BranchPlan(start=1, depth=3, k=5)  # k is ignored by the flat sampler
    sampler = FlatSampler(num_steps=6, group_size=4, guidance_scale=2.0)
    rollout = sampler.sample(tiny_policy, FlowMatchingKernel(0.7), PROMPTS, plan, torch.Generator().manual_seed(0))
    rows = len(PROMPTS) * 4
    assert rollout.nfe == rows * 6 * 2
    assert rollout.num_nodes == rows * 4 and rollout.edge_nodes.numel() == rows * 3
    assert rollout.leaf_nodes.numel() == rows
    # chains: every node has at most one child
    assert torch.bincount(rollout.parent[rollout.parent >= 0]).max() == 1
    shared = FlatSampler(num_steps=6, group_size=4, shared_noise=True).sample(
        tiny_policy, FlowMatchingKernel(0.7), PROMPTS, plan, torch.Generator().manual_seed(0))
    roots = shared.latents[:rows].reshape(len(PROMPTS), 4, -1)
    assert torch.equal(roots[:, 0], roots[:, 3])
    independent = rollout.latents[:rows].reshape(len(PROMPTS), 4, -1)
    assert not torch.equal(independent[:, 0], independent[:, 3])


@pytest.mark.parametrize("sampler", [TreeSampler(num_steps=6), FlatSampler(num_steps=6, group_size=3)])
def test_recomputed_log_probs_are_on_policy(tiny_policy, sampler):
    """The training recomputation gives the sampling log-probs (ratio 1 at the first step)."""
    kernel = FlowMatchingKernel(0.7)
    rollout = sampler.sample(tiny_policy, kernel, PROMPTS, BranchPlan(1, 3, 2), torch.Generator().manual_seed(3))
    parents = rollout.parent_nodes
    batch = edge_log_probs(tiny_policy, kernel, rollout, parents)
    assert batch.child.numel() == rollout.edge_nodes.numel()
    assert batch.forwards == parents.numel()  # one forward per parent, k edges each
    torch.testing.assert_close(batch.log_prob, rollout.log_prob[batch.child], rtol=0, atol=1e-6)
    # a shuffled subset of parents gives the same values for its children
    subset = parents[torch.randperm(parents.numel())[: max(1, parents.numel() // 2)]]
    part = edge_log_probs(tiny_policy, kernel, rollout, subset)
    torch.testing.assert_close(part.log_prob, rollout.log_prob[part.child], rtol=0, atol=1e-6)
    assert torch.isin(rollout.parent[part.child], subset).all()
    # gradients reach the denoiser
    part.log_prob.sum().backward()
    assert tiny_policy.denoiser.conv.weight.grad.abs().sum() > 0


def test_children_of_slots():
    parent = torch.tensor([-1, -1, 0, 0, 1, 1, 2, 2])
    child, slot = children_of(parent, torch.tensor([2, 0]))
    assert child.tolist() == [2, 3, 6, 7]
    assert slot.tolist() == [1, 1, 0, 0]


def test_sampler_argument_errors():
    with pytest.raises(ValueError, match="num_steps"):
        TreeSampler(num_steps=0)
    with pytest.raises(ValueError, match="guidance_scale"):
        TreeSampler(guidance_scale=0.5)
    with pytest.raises(ValueError, match="group_size"):
        FlatSampler(group_size=1)


def test_flat_shared_noise_starts_from_the_tree_initial_noise(tiny_policy):
    """For fair comparisons: with the same generator seed, FlatSampler(shared_noise=True) starts
    every trajectory of a prompt from exactly the tree's initial noise of that prompt."""
    plan = BranchPlan(start=0, depth=2, k=2)
    kernel = FlowMatchingKernel(0.7)
    tree = TreeSampler(num_steps=4).sample(tiny_policy, kernel, PROMPTS, plan, torch.Generator().manual_seed(9))
    flat = FlatSampler(num_steps=4, group_size=4, shared_noise=True).sample(
        tiny_policy, kernel, PROMPTS, plan, torch.Generator().manual_seed(9))
    tree_roots = tree.latents[tree.parent == -1]  # [P, ...]
    flat_roots = flat.latents[flat.parent == -1]  # [P * G, ...], prompt-major
    assert torch.equal(flat_roots, tree_roots.repeat_interleave(4, dim=0))


def test_plan_micro_batches_default_and_per_step():
    from treegrpo.update import plan_micro_batches

    parents = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8])
    step = torch.tensor([2, 2, 2, 3, 3, 3, 3, 3, 3])
    plan = plan_micro_batches(parents, step, 2, 2, torch.Generator().manual_seed(0))
    assert [[len(m) for m in mb] for mb in plan] == [[2, 2, 1], [2, 2]]  # 9 -> 5 + 4, micro of 2
    assert sorted(torch.cat([torch.cat(mb) for mb in plan]).tolist()) == parents.tolist()
    per_step = plan_micro_batches(parents, step, 1, 6, torch.Generator().manual_seed(0), per_step=True)
    groups = sorted((m.tolist() for mb in per_step for m in mb), key=len)
    assert groups == [[0, 1, 2], [3, 4, 5, 6, 7, 8]]  # whole steps in node order when they fit
    two_steps = plan_micro_batches(parents, step, 2, 6, torch.Generator().manual_seed(0), per_step=True)
    assert len(two_steps) == 2 and all(len(mb) == 1 for mb in two_steps)


def per_depth_tree_nfe(p, ks, s):
    """Closed form for per-depth k: prefix + one forward per internal node + suffix per leaf."""
    widths = [1]
    for k in ks:
        widths.append(widths[-1] * k)
    return p + sum(widths[:-1]) + widths[-1] * s


@pytest.mark.parametrize("start,ks,steps", [(1, (4, 2, 2), 6), (0, (3, 2), 4), (2, (1, 3), 5), (0, (8,), 3)])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_per_depth_k_nfe_counts_and_parents(tiny_policy, start, ks, steps, guidance):
    plan = BranchPlan(start=start, depth=len(ks), k=list(ks))
    rollout = TreeSampler(num_steps=steps, guidance_scale=guidance).sample(
        tiny_policy, FlowMatchingKernel(0.7), PROMPTS, plan, torch.Generator().manual_seed(0))
    p, suffix = len(PROMPTS), steps - start - len(ks)
    assert rollout.nfe == p * per_depth_tree_nfe(start, ks, suffix) * (2 if guidance > 1 else 1)
    assert rollout.leaf_nodes.numel() == p * plan.num_leaves
    assert rollout.parent_nodes.numel() == p * plan.num_parents
    assert rollout.edge_nodes.numel() == p * plan.num_edges
    assert torch.bincount(rollout.leaf_prompt_index).tolist() == [plan.num_leaves] * p
    # every node of depth l has exactly ks[l] children, taken at window step start + l
    children = torch.bincount(rollout.parent[rollout.parent >= 0], minlength=rollout.num_nodes)
    for level, k in enumerate(ks):
        at_level = torch.nonzero(rollout.step == start + level).flatten()
        at_level = at_level[torch.isin(at_level, rollout.parent_nodes)]
        assert at_level.numel() == p * plan.width(level)
        assert children[at_level].tolist() == [k] * at_level.numel()


def test_per_depth_k_hand_built_parents_and_batched_forwards(tiny_policy):
    """k = [3, 2], one prompt, no prefix/suffix: nodes 0 | 1 2 3 | 4..9, forwards of 1 and 3 rows."""
    batch_sizes = record_forward_rows(tiny_policy)
    rollout = TreeSampler(num_steps=2).sample(tiny_policy, FlowMatchingKernel(0.7), PROMPTS[:1],
                                              BranchPlan(0, 2, [3, 2]), torch.Generator().manual_seed(0))
    assert rollout.parent.tolist() == [-1, 0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert rollout.leaf_nodes.tolist() == [4, 5, 6, 7, 8, 9]
    assert rollout.step.tolist() == [0, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    assert batch_sizes == [1, 3] and rollout.nfe == 4


def test_int_k_and_the_same_per_depth_list_give_bitwise_equal_trees(tiny_policy):
    kernel, sampler = FlowMatchingKernel(0.7), TreeSampler(num_steps=6)
    a = sampler.sample(tiny_policy, kernel, PROMPTS, BranchPlan(1, 3, 2), torch.Generator().manual_seed(4))
    b = sampler.sample(tiny_policy, kernel, PROMPTS, BranchPlan(1, 3, [2, 2, 2]), torch.Generator().manual_seed(4))
    assert torch.equal(a.parent, b.parent) and torch.equal(a.latents, b.latents)
    assert torch.equal(a.images, b.images) and a.nfe == b.nfe


def test_per_depth_k_log_probs_recompute_and_group_by_parent(tiny_policy):
    kernel = FlowMatchingKernel(0.7)
    rollout = TreeSampler(num_steps=5).sample(tiny_policy, kernel, PROMPTS, BranchPlan(1, 3, [1, 3, 2]),
                                              torch.Generator().manual_seed(3))
    batch = edge_log_probs(tiny_policy, kernel, rollout, rollout.parent_nodes)
    assert batch.forwards == rollout.parent_nodes.numel() == len(PROMPTS) * (1 + 1 + 3)
    assert batch.child.numel() == len(PROMPTS) * (1 + 3 + 6)
    torch.testing.assert_close(batch.log_prob, rollout.log_prob[batch.child], rtol=0, atol=1e-6)


def test_one_runner_iteration_with_per_depth_k(tmp_path):
    """TreeBackup advantages and the update work unchanged on a k = [3, 2] tree."""
    from conftest import read_log, write_config
    from tools.train import main as train_main

    extra = "schedule = dict(type='RandomWindow', depth=2, k=[3, 2])\n"
    runner = train_main([write_config(tmp_path, iters=1, extra=extra), "--work-dir", str(tmp_path / "run")])
    (record,) = read_log(tmp_path / "run")
    start = record["rollout/window_start"]
    # 2 prompts, 5 steps: prefix start, 1 + 3 window forwards, 6 leaves x suffix (3 - start)
    assert record["rollout/nfe"] == 2 * (start + 4 + 6 * (3 - start))
    assert record["rollout/edges"] == 2 * (3 + 6)
    assert record["update/nfe"] == 2 * 2 * (1 + 3)  # 2 inner epochs x one forward per parent
    assert record["losses/onpolicy_ratio_max_dev"] < 1e-5
    assert torch.isfinite(torch.tensor(record["losses/policy_loss"])) and runner.iteration == 1
