"""Advantage math against hand computations: group normalisation, tree backup, estimators."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from treegrpo.advantages import (
    Advantages,
    GroupNorm,
    TreeBackup,
    backup_tree_advantages,
    group_normalize,
    leaf_of_nodes,
)
from treegrpo.registry import ADVANTAGES, build
from treegrpo.rollout import Rollout

EPS = 1e-6
F64 = torch.float64


def t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def long(values):
    return torch.tensor(values, dtype=torch.long)


def forest(parent, leaf_nodes, prompt_index, log_prob=None):
    """A minimal rollout-like object."""
    parent = long(parent)
    leaf_nodes = long(leaf_nodes)
    if log_prob is None:
        log_prob = torch.zeros(parent.numel(), dtype=F64)
    prompt_index = long(prompt_index)
    return SimpleNamespace(parent=parent, leaf_nodes=leaf_nodes, log_prob=log_prob,
                           leaf_prompt_index=prompt_index[leaf_nodes])


# --- group_normalize ---------------------------------------------------------------------

def test_group_normalize_per_group_std_by_hand():
    adv, zero = group_normalize(t([1, 2, 3, 5, 5, 5]), long([0, 0, 0, 1, 1, 1]), eps=EPS)
    # group 0: mean 2, population std sqrt(((-1)^2 + 0 + 1^2) / 3) = sqrt(2/3); group 1: all equal
    std0 = math.sqrt(2 / 3)
    expected = [-1 / (std0 + EPS), 0.0, 1 / (std0 + EPS), 0.0, 0.0, 0.0]
    torch.testing.assert_close(adv, t(expected), rtol=0, atol=1e-12)
    assert zero == 1


def test_group_normalize_global_std_by_hand():
    adv, zero = group_normalize(t([1, 2, 3, 5, 5, 5]), long([0, 0, 0, 1, 1, 1]), eps=EPS,
                                global_std=True)
    # mean of all 21/6 = 3.5; squared deviations 6.25 + 2.25 + 0.25 + 3 * 2.25 = 15.5
    std_all = math.sqrt(15.5 / 6)
    expected = [-1 / (std_all + EPS), 0.0, 1 / (std_all + EPS), 0.0, 0.0, 0.0]
    torch.testing.assert_close(adv, t(expected), rtol=0, atol=1e-12)
    assert zero == 1


def test_group_normalize_interleaved_non_contiguous_ids():
    # group 7: rewards [0, 2], mean 1, std 1; group 3: rewards [1, 5], mean 3, std 2
    adv, zero = group_normalize(t([0, 1, 2, 5]), long([7, 3, 7, 3]), eps=EPS)
    expected = [-1 / (1 + EPS), -2 / (2 + EPS), 1 / (1 + EPS), 2 / (2 + EPS)]
    torch.testing.assert_close(adv, t(expected), rtol=0, atol=1e-12)
    assert zero == 0


def test_group_normalize_equal_rewards_give_exact_zeros_and_count():
    # 0.1 three times: a float mean may differ by an ulp; still exactly zero advantages
    adv, zero = group_normalize(t([0.1, 0.1, 0.1, 0.7, 0.7, 3.0]), long([0, 0, 0, 1, 1, 2]))
    assert torch.equal(adv, torch.zeros(6, dtype=F64))
    assert zero == 3  # the singleton group 2 has std 0 too


def test_group_normalize_keeps_float32_dtype_and_rejects_bad_input():
    adv, _ = group_normalize(t([1, 3], torch.float32), long([0, 0]))
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv, t([-1, 1], torch.float32), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="groups must have the shape"):
        group_normalize(t([1, 2, 3]), long([0, 0]))
    with pytest.raises(ValueError, match="rewards must be a 1-D float"):
        group_normalize(long([1, 2]), long([0, 0]))


# --- backup ------------------------------------------------------------------------------

# depth-2 binary tree: root 0 -> a=1, b=2; a -> l1=3, l2=4; b -> l3=5, l4=6
BIN_PARENT = long([-1, 0, 0, 1, 1, 2, 2])
BIN_LEAVES = long([3, 4, 5, 6])
BIN_LEAF_ADV = t([1.0, -0.5, 2.0, 0.0])
BIN_LOG_PROB = t([0.0, -1.0, 0.5, 0.2, -0.3, 1.0, 1.0])


def test_backup_binary_tree_mean_by_hand():
    node = backup_tree_advantages(BIN_PARENT, BIN_LEAVES, BIN_LEAF_ADV, BIN_LOG_PROB, "mean")
    a = (1.0 - 0.5) / 2  # 0.25
    b = (2.0 + 0.0) / 2  # 1.0
    root = (a + b) / 2  # 0.625
    torch.testing.assert_close(node, t([root, a, b, 1.0, -0.5, 2.0, 0.0]), rtol=0, atol=1e-12)


def test_backup_binary_tree_prob_by_hand():
    node = backup_tree_advantages(BIN_PARENT, BIN_LEAVES, BIN_LEAF_ADV, BIN_LOG_PROB, "prob")
    w3 = math.exp(0.2) / (math.exp(0.2) + math.exp(-0.3))
    a = w3 * 1.0 + (1 - w3) * (-0.5)
    b = 0.5 * 2.0 + 0.5 * 0.0  # equal log-probs: uniform weights
    w1 = math.exp(-1.0) / (math.exp(-1.0) + math.exp(0.5))
    root = w1 * a + (1 - w1) * b
    torch.testing.assert_close(node, t([root, a, b, 1.0, -0.5, 2.0, 0.0]), rtol=0, atol=1e-12)
    assert not math.isclose(root, 0.625)  # differs from the uniform backup


def test_backup_k3_depth1_mean_and_prob():
    parent, leaves, leaf_adv = long([-1, 0, 0, 0]), long([1, 2, 3]), t([3.0, 0.0, -1.5])
    node = backup_tree_advantages(parent, leaves, leaf_adv, torch.zeros(4, dtype=F64), "mean")
    torch.testing.assert_close(node, t([0.5, 3.0, 0.0, -1.5]), rtol=0, atol=1e-12)
    # log-probs ln1, ln2, ln1 -> softmax weights 1/4, 1/2, 1/4: root = 3/4 + 0 - 1.5/4 = 0.375
    for offset in (0.0, 1000.0):  # a large common offset must not overflow the softmax
        log_prob = t([0.0, 0.0, math.log(2), 0.0]) + offset
        node = backup_tree_advantages(parent, leaves, leaf_adv, log_prob, "prob")
        torch.testing.assert_close(node, t([0.375, 3.0, 0.0, -1.5]), rtol=0, atol=1e-12)


def test_backup_forest_of_two_interleaved_trees():
    # tree A (binary, depth 2) and tree B (k=3, depth 1), nodes interleaved:
    # 0 rootA, 1 rootB, 2 a, 3 b, 4 5 6 children of rootB, 7 8 under a, 9 10 under b
    parent = long([-1, -1, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    leaves = long([9, 4, 7, 10, 5, 8, 6])  # leaves in an arbitrary order
    leaf_adv = t([2.0, 3.0, 1.0, 0.0, 0.0, -0.5, -1.5])
    node = backup_tree_advantages(parent, leaves, leaf_adv, torch.zeros(11, dtype=F64), "mean")
    a, b = (1.0 - 0.5) / 2, (2.0 + 0.0) / 2
    expected = [(a + b) / 2, 0.5, a, b, 3.0, 0.0, -1.5, 1.0, -0.5, 2.0, 0.0]
    torch.testing.assert_close(node, t(expected), rtol=0, atol=1e-12)


def test_backup_chain_gives_every_node_its_leaf_value():
    # two chains of three nodes: 0 -> 1 -> 2 and 3 -> 4 -> 5
    parent, leaves = long([-1, 0, 1, -1, 3, 4]), long([2, 5])
    log_prob = t([0.0, -3.0, 7.0, 0.0, 1.0, -2.0])
    for weighting in ("mean", "prob"):
        node = backup_tree_advantages(parent, leaves, t([0.7, -1.2]), log_prob, weighting)
        torch.testing.assert_close(node, t([0.7, 0.7, 0.7, -1.2, -1.2, -1.2]), rtol=0, atol=0)


def test_backup_errors():
    zeros3 = torch.zeros(3, dtype=F64)
    with pytest.raises(ValueError, match=r"leaf nodes \[1\] have children"):
        backup_tree_advantages(long([-1, 0, 1]), long([1, 2]), t([1.0, 2.0]), zeros3, "mean")
    with pytest.raises(ValueError, match=r"nodes \[2\] are not leaves and have no children"):
        backup_tree_advantages(long([-1, 0, 0]), long([1]), t([1.0]), zeros3, "mean")
    with pytest.raises(ValueError, match=r"weighting must be one of \('mean', 'prob', 'sum'\)"):
        backup_tree_advantages(long([-1, 0]), long([1]), t([1.0]), zeros3[:2], "max")
    with pytest.raises(ValueError, match="parents must|listed before its child"):
        backup_tree_advantages(long([1, -1]), long([0]), t([1.0]), zeros3[:2], "mean")
    with pytest.raises(ValueError, match="finite log_prob"):
        backup_tree_advantages(long([-1, 0, 0]), long([1, 2]), t([1.0, 2.0]),
                               t([0.0, -math.inf, -math.inf]), "prob")


def test_leaf_of_nodes_on_chains_and_error_on_tree():
    result = leaf_of_nodes(long([-1, -1, 0, 1, 2, 3]), long([5, 4]))
    # chains 0 -> 2 -> 4 (leaf position 1) and 1 -> 3 -> 5 (leaf position 0)
    assert result.tolist() == [1, 0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="GroupNorm needs flat rollouts"):
        leaf_of_nodes(BIN_PARENT, BIN_LEAVES)


# --- estimators --------------------------------------------------------------------------

def chains_rollout():
    """2 prompts x 2 chains x 3 nodes; rewards [1, 3 | 2, 2]."""
    parent = [-1, 0, 1, -1, 3, 4, -1, 6, 7, -1, 9, 10]
    prompt = [0] * 6 + [1] * 6
    log_prob = torch.linspace(-2.0, 2.0, 12, dtype=F64)
    return forest(parent, [2, 5, 8, 11], prompt, log_prob), t([1.0, 3.0, 2.0, 2.0])


def test_group_norm_estimator_on_chains():
    rollout, rewards = chains_rollout()
    out = GroupNorm(eps=EPS)(rollout, rewards)
    assert isinstance(out, Advantages)
    first = 1 / (1 + EPS)  # group 0: mean 2, std 1
    torch.testing.assert_close(out.leaf, t([-first, first, 0.0, 0.0]), rtol=0, atol=1e-12)
    expected = [-first] * 3 + [first] * 3 + [0.0] * 6
    torch.testing.assert_close(out.node, t(expected), rtol=0, atol=1e-12)
    assert out.zero_std_groups == 1
    for weighting in ("mean", "prob"):  # the tree backup of chains is the same
        tree = TreeBackup(weighting=weighting, eps=EPS)(rollout, rewards)
        torch.testing.assert_close(tree.node, out.node, rtol=0, atol=0)


def test_tree_backup_estimator_on_forest_with_normalisation():
    # tree 0 = the binary tree (nodes 0..6), tree 1 = k=3 depth-1 tree (nodes 7..10)
    parent = BIN_PARENT.tolist() + [-1, 7, 7, 7]
    rollout = forest(parent, [3, 4, 5, 6, 8, 9, 10], [0] * 7 + [1] * 4)
    rewards = t([1.0, 2.0, 3.0, 6.0, 4.0, 4.0, 4.0])
    out = TreeBackup(weighting="mean", eps=0.0)(rollout, rewards)
    # tree 0: mean 3, squared deviations 4 + 1 + 0 + 9 = 14, std sqrt(14/4)
    std = math.sqrt(3.5)
    l1, l2, l3, l4 = (-2 / std, -1 / std, 0.0, 3 / std)
    a, b = (l1 + l2) / 2, (l3 + l4) / 2
    expected = [(a + b) / 2, a, b, l1, l2, l3, l4, 0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(out.node, t(expected), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.leaf, t([l1, l2, l3, l4, 0, 0, 0]), rtol=0, atol=1e-12)
    assert out.zero_std_groups == 1
    assert abs(float(out.node[0])) < 1e-12  # mean backup of normalised leaves: root value 0


def test_estimators_work_on_a_real_rollout():
    parent = long([-1, 0, 0])
    rollout = Rollout(
        prompts=["p"], cond={}, levels=torch.linspace(1, 0, 3), latents=torch.zeros(3, 1, 2, 2),
        step=long([0, 1, 1]), parent=parent, log_prob=torch.zeros(3),
        prompt_index=long([0, 0, 0]), leaf_nodes=long([1, 2]), images=torch.zeros(2, 3, 4, 4),
        nfe=0,
    )
    out = build(ADVANTAGES, dict(type="TreeBackup", weighting="prob"))(rollout, t([0.0, 1.0]))
    value = 0.5 / (0.5 + 1e-6)  # mean 0.5, std 0.5: (1 - 0.5) / (0.5 + eps)
    torch.testing.assert_close(out.node, t([0.0, -value, value]), rtol=0, atol=1e-9)
    torch.testing.assert_close(out.node[rollout.edge_nodes], t([-value, value]), rtol=0, atol=1e-9)


def test_estimator_errors():
    rollout = forest(BIN_PARENT.tolist(), BIN_LEAVES.tolist(), [0] * 7)
    with pytest.raises(ValueError, match="GroupNorm needs flat rollouts"):
        GroupNorm()(rollout, t([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match=r"weighting must be one of \('mean', 'prob', 'sum'\), got 'max'"):
        TreeBackup(weighting="max")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        GroupNorm(eps=-1.0)
    with pytest.raises(ValueError, match=r"rewards must have shape \[L\]=\(4,\)"):
        TreeBackup()(rollout, t([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="rewards must be a float tensor"):
        TreeBackup()(rollout, long([1, 2, 3, 4]))


def test_prompt_stat_tracker_by_hand():
    from treegrpo.advantages.stat_tracking import PromptStatTracker

    tracker = PromptStatTracker(buffer_size=4, min_count=3, eps=0.0)
    # first call: 'a' has 2 values (< min_count): its own group's statistics; 'b' all equal: 0
    adv = tracker.normalize(["a", "a", "b"], torch.tensor([1.0, 3.0, 5.0]))
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 0.0]))
    # second call: 'a' history [1, 3, 5, 7] (>= 3): mean 4, population std sqrt(5)
    adv = tracker.normalize(["a", "a"], torch.tensor([5.0, 7.0]))
    torch.testing.assert_close(adv, torch.tensor([1.0, 3.0]) / 5 ** 0.5)
    # buffer_size 4: the oldest value (1) drops out -> history [3, 5, 7, 9], mean 6, std sqrt(5)
    adv = tracker.normalize(["a"], torch.tensor([9.0]))
    torch.testing.assert_close(adv, torch.tensor([3.0]) / 5 ** 0.5)
    restored = PromptStatTracker(buffer_size=4, min_count=3, eps=0.0)
    restored.load_state_dict(tracker.state_dict())
    assert {k: list(v) for k, v in restored.history.items()} == {"a": [3.0, 5.0, 7.0, 9.0], "b": [5.0]}
    with pytest.raises(ValueError, match="min_count <= buffer_size"):
        PromptStatTracker(buffer_size=2, min_count=3)


def test_estimators_with_stat_tracking_use_prompt_history():
    from types import SimpleNamespace

    chains = SimpleNamespace(  # two flat chains of one prompt: node 0 -> 1, node 2 -> 3
        parent=torch.tensor([-1, 0, -1, 2]), log_prob=torch.zeros(4),
        leaf_nodes=torch.tensor([1, 3]), leaf_prompt_index=torch.tensor([0, 0]), leaf_prompts=["p", "p"])
    tracked = GroupNorm(eps=0.0, stat_tracking=dict(buffer_size=8, min_count=4))
    tracked(chains, torch.tensor([0.0, 2.0]))                   # history [0, 2]: own group
    adv = tracked(chains, torch.tensor([4.0, 4.0]))             # history [0, 2, 4, 4]: mean 2.5
    std = torch.tensor([0.0, 2.0, 4.0, 4.0]).std(correction=0)
    torch.testing.assert_close(adv.leaf, torch.full((2,), 1.5) / std)
    assert adv.zero_std_groups == 1  # this iteration's rewards were all equal
    torch.testing.assert_close(adv.node, adv.leaf[torch.tensor([0, 0, 1, 1])])
    with pytest.raises(ValueError, match="stat_tracking and global_std"):
        TreeBackup(global_std=True, stat_tracking=dict(buffer_size=8, min_count=4))
