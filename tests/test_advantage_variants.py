"""Tree variants of the advantage backup against hand computations: sibling-softmax temperature,
'sum' weighting, depth-wise normalisation and per-depth scaling (TreeBackup arguments)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from treegrpo.advantages import (
    TreeBackup,
    backup_tree_advantages,
    node_depth,
    node_groups,
    normalize_per_group,
    scale_by_depth,
)
from treegrpo.registry import ADVANTAGES, build

F64 = torch.float64

# One binary tree of depth 2: 0 -> (1, 2); 1 -> (3, 4); 2 -> (5, 6); leaves 3, 4, 5, 6.
PARENT = torch.tensor([-1, 0, 0, 1, 1, 2, 2])
LEAVES = torch.tensor([3, 4, 5, 6])
LOG_PROB = torch.tensor([0.0, -1.0, -1.5, -0.2, -0.9, -2.0, -0.5], dtype=F64)  # uneven siblings
LEAF_ADV = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=F64)


def pair_weight(a: float, b: float, scale: float) -> float:
    """Softmax weight of the sibling with logit ``a * scale`` against ``b * scale``, by hand."""
    return math.exp(a * scale) / (math.exp(a * scale) + math.exp(b * scale))


def hand_backup(scale: float) -> list[float]:
    """The tree above backed up with weights softmax(log_prob * scale), written out node by node."""
    w3 = pair_weight(-0.2, -0.9, scale)
    w5 = pair_weight(-2.0, -0.5, scale)
    a1 = w3 * 1.0 + (1 - w3) * -1.0
    a2 = w5 * 0.5 + (1 - w5) * -0.5
    w1 = pair_weight(-1.0, -1.5, scale)
    a0 = w1 * a1 + (1 - w1) * a2
    return [a0, a1, a2, 1.0, -1.0, 0.5, -0.5]


def old_backup(parent, leaf_nodes, leaf_adv, log_prob, weighting):
    """The backup as it was before the variants (commit d443e57), verbatim minus validation."""
    depth = node_depth(parent, leaf_nodes)
    num_nodes = parent.numel()
    node_adv = torch.zeros(num_nodes, dtype=leaf_adv.dtype, device=leaf_adv.device)
    node_adv[leaf_nodes] = leaf_adv
    for level in range(int(depth.max()), 0, -1):
        child = torch.nonzero(depth == level).flatten()
        par = parent[child]
        if weighting == "mean":
            weight = torch.ones(child.numel(), dtype=leaf_adv.dtype, device=leaf_adv.device)
        else:
            lp = log_prob[child].to(leaf_adv.dtype)
            peak = torch.full((num_nodes,), -torch.inf, dtype=lp.dtype, device=lp.device)
            peak = peak.scatter_reduce(0, par, lp, reduce="amax")
            weight = torch.exp(lp - peak[par])
        norm = torch.zeros(num_nodes, dtype=weight.dtype, device=weight.device)
        norm = norm.index_add(0, par, weight)
        weight = weight / norm[par]
        node_adv = node_adv.index_add(0, par, weight * node_adv[child])
    return node_adv


def two_trees(num_elements=None, latents=None):
    """Two prompts, each the tree above (nodes 0-6 prompt 0, 7-13 prompt 1), as a rollout-like object."""
    parent = torch.cat([PARENT, torch.where(PARENT >= 0, PARENT + 7, PARENT)])
    ns = SimpleNamespace(parent=parent, leaf_nodes=torch.cat([LEAVES, LEAVES + 7]),
                         log_prob=torch.cat([LOG_PROB, LOG_PROB.flip(0)]).float(),
                         leaf_prompt_index=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    if num_elements is not None:
        ns.num_elements = num_elements
    if latents is not None:
        ns.latents = latents
    return ns


REWARDS = torch.tensor([1.0, 0.2, 0.7, 0.0, 0.3, 0.9, 0.1, 0.4])


# --- weighting and temperature -----------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.1, 3.0])
def test_prob_weights_equal_hand_softmax(temperature):
    adv = backup_tree_advantages(PARENT, LEAVES, LEAF_ADV, LOG_PROB, "prob", temperature)
    assert torch.allclose(adv, torch.tensor(hand_backup(1 / temperature), dtype=F64), atol=1e-12)


def test_infinite_temperature_is_the_mean_backup():
    for weighting, extra in (("prob", {}), ("sum", {"num_elements": 1024})):
        adv = backup_tree_advantages(PARENT, LEAVES, LEAF_ADV, LOG_PROB, weighting, math.inf, **extra)
        assert torch.equal(adv, backup_tree_advantages(PARENT, LEAVES, LEAF_ADV, LOG_PROB, "mean"))
    # and a large finite temperature approaches it
    adv = backup_tree_advantages(PARENT, LEAVES, LEAF_ADV, LOG_PROB, "prob", 1e6)
    assert torch.allclose(adv, backup_tree_advantages(PARENT, LEAVES, LEAF_ADV, LOG_PROB, "mean"), atol=1e-6)


@pytest.mark.parametrize("num_elements,temperature", [(4, 1.0), (4, 2.0), (3, 0.5)])
def test_sum_weighting_multiplies_logits_by_element_count(num_elements, temperature):
    adv = backup_tree_advantages(PARENT, LEAVES, LEAF_ADV, LOG_PROB, "sum", temperature, num_elements)
    expected = torch.tensor(hand_backup(num_elements / temperature), dtype=F64)
    assert torch.allclose(adv, expected, atol=1e-12)


def test_sum_weighting_is_near_one_hot_at_latent_sizes():
    # Log-prob gap 0.7 between siblings 3 and 4: with D=1024 summed, weight exp(-716.8) ~ 0.
    adv = backup_tree_advantages(PARENT, LEAVES, LEAF_ADV, LOG_PROB, "sum", 1.0, 1024)
    assert adv[1].item() == 1.0 and adv[2].item() == -0.5  # the likelier child of each pair
    assert adv[0].item() == 1.0


def test_default_tree_backup_is_exactly_the_old_function():
    gen = torch.Generator().manual_seed(0)
    ro = two_trees()
    ro.log_prob = torch.randn(14, generator=gen) * 0.05 - 1.0  # float32, as the samplers store them
    rewards = torch.rand(8, generator=gen)
    for kwargs, weighting in (({}, "mean"), ({"weighting": "prob"}, "prob"),
                              ({"weighting": "prob", "temperature": 1.0}, "prob")):
        result = TreeBackup(**kwargs)(ro, rewards)
        assert torch.equal(result.node, old_backup(ro.parent, ro.leaf_nodes, result.leaf, ro.log_prob, weighting))


def test_estimator_element_count_from_attribute_or_latents():
    by_attr = TreeBackup(weighting="sum")(two_trees(num_elements=4), REWARDS)
    by_latents = TreeBackup(weighting="sum")(two_trees(latents=torch.zeros(14, 1, 2, 2)), REWARDS)
    assert torch.equal(by_attr.node, by_latents.node)
    expected = backup_tree_advantages(two_trees().parent, two_trees().leaf_nodes, by_attr.leaf,
                                      two_trees().log_prob, "sum", 1.0, 4)
    assert torch.equal(by_attr.node, expected)
    with pytest.raises(ValueError, match="latents .* or a num_elements attribute"):
        TreeBackup(weighting="sum")(two_trees(), REWARDS)


# --- depth normalisation and scaling -----------------------------------------------------

def test_node_depth_and_groups():
    ro = two_trees()
    assert node_depth(ro.parent, ro.leaf_nodes).tolist() == [0, 1, 1, 2, 2, 2, 2] * 2
    assert node_groups(ro.parent, ro.leaf_nodes, ro.leaf_prompt_index).tolist() == [0] * 7 + [1] * 7
    with pytest.raises(ValueError, match="different groups share an ancestor"):
        node_groups(PARENT, LEAVES, torch.tensor([0, 0, 0, 1]))


def test_normalize_per_group_by_hand():
    out = normalize_per_group(torch.tensor([1.0, 3.0, 5.0, 5.0], dtype=F64), torch.tensor([0, 0, 1, 1]), 0.0)
    assert out.tolist() == [-1.0, 1.0, 0.0, 0.0]  # group 0: mean 2, std 1; group 1 all equal
    pooled = normalize_per_group(torch.tensor([4.0], dtype=F64), torch.tensor([7]), 0.0,
                                 torch.tensor([0.0, 2.0, 4.0], dtype=F64), torch.tensor([7, 7, 7]))
    assert torch.allclose(pooled, torch.tensor([2.0 / math.sqrt(8 / 3)], dtype=F64))


@pytest.mark.parametrize("weighting", ["mean", "prob"])
def test_depth_norm_zero_mean_unit_std_per_depth(weighting):
    ro = two_trees()
    plain = TreeBackup(weighting=weighting, eps=0.0)(ro, REWARDS).node  # eps: leaves and depths
    normed = TreeBackup(weighting=weighting, depth_norm="depth", eps=0.0)(ro, REWARDS).node
    depth = node_depth(ro.parent, ro.leaf_nodes)
    for d in (1, 2):
        values = normed[depth == d]
        assert abs(values.mean().item()) < 1e-6
        assert abs(values.std(unbiased=False).item() - 1.0) < 1e-5
        base = plain[depth == d]  # an affine map of the plain advantages at that depth
        assert torch.allclose(values, (base - base.mean()) / base.std(unbiased=False), atol=1e-6)
    assert torch.equal(normed[depth == 0], plain[depth == 0])  # roots are no edges: unchanged


def test_prompt_depth_norm_per_prompt_and_depth():
    ro = two_trees()
    normed = TreeBackup(depth_norm="prompt_depth", eps=0.0)(ro, REWARDS).node
    plain = TreeBackup()(ro, REWARDS).node
    depth = node_depth(ro.parent, ro.leaf_nodes)
    prompt = torch.tensor([0] * 7 + [1] * 7)
    for p in (0, 1):
        for d in (1, 2):
            values = normed[(prompt == p) & (depth == d)]
            assert abs(values.mean().item()) < 1e-6
            assert abs(values.std(unbiased=False).item() - 1.0) < 1e-5
    # k=2: the two depth-1 edges of a tree become -1 and +1 (only the sign survives)
    assert torch.allclose(normed[[1, 2]], torch.sign(plain[[1, 2]] - plain[[1, 2]].mean()))


def test_depth_scale_multiplies_edges_of_each_depth():
    ro = two_trees()
    plain = TreeBackup(weighting="prob")(ro, REWARDS).node
    scaled = TreeBackup(weighting="prob", depth_scale=[2.0, 0.5])(ro, REWARDS).node
    factor = torch.tensor([1.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.5] * 2)
    assert torch.equal(scaled, plain * factor)
    both = TreeBackup(depth_norm="depth", depth_scale=[3, 1])(ro, REWARDS).node
    normed = TreeBackup(depth_norm="depth")(ro, REWARDS).node
    assert torch.equal(both, normed * torch.tensor([1.0, 3, 3, 1, 1, 1, 1] * 2))
    with pytest.raises(ValueError, match="depth_scale has 1 factors but the tree has edges at 2 depths"):
        TreeBackup(depth_scale=[2.0])(ro, REWARDS)
    assert torch.equal(scale_by_depth(plain, node_depth(ro.parent, ro.leaf_nodes), [1, 1, 9]), plain)


# --- validation and config ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    ({"weighting": "max"}, r"weighting must be one of \('mean', 'prob', 'sum'\)"),
    ({"temperature": 0}, "temperature must be a number > 0"),
    ({"temperature": -1.0}, "temperature must be a number > 0"),
    ({"temperature": float("nan")}, "temperature must be a number > 0"),
    ({"temperature": True}, "temperature must be a number > 0"),
    ({"depth_norm": "global"}, r"depth_norm must be one of \(None, 'depth', 'prompt_depth'\)"),
    ({"depth_scale": []}, "depth_scale must be None or a non-empty list"),
    ({"depth_scale": [1.0, float("inf")]}, "depth_scale must be None or a non-empty list"),
    ({"depth_scale": 2.0}, "depth_scale must be None or a non-empty list"),
])
def test_tree_backup_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TreeBackup(**kwargs)


def test_functional_validation():
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        backup_tree_advantages(PARENT, LEAVES, LEAF_ADV, LOG_PROB, "prob", 0.0)
    with pytest.raises(ValueError, match="weighting='sum' needs num_elements"):
        backup_tree_advantages(PARENT, LEAVES, LEAF_ADV, LOG_PROB, "sum")


def test_built_from_config():
    est = build(ADVANTAGES, dict(type="TreeBackup", weighting="prob", temperature=0.1,
                                 depth_norm="depth", depth_scale=[1.0, 0.5]))
    assert (est.weighting, est.temperature, est.depth_norm, est.depth_scale) == ("prob", 0.1, "depth", [1.0, 0.5])


class TwoRanks:
    """A RankGroup stand-in: this is rank 0 of 2; the other rank has the same trees and edge
    advantages larger by 1 (floats), the same depths (longs), or ``other_count`` edges."""

    world_size, rank = 2, 0

    def __init__(self, other_count=None):
        self.other_count = other_count

    def gather(self, tensor):
        if tensor.numel() == 1 and not tensor.is_floating_point() and self.other_count is not None:
            return torch.cat([tensor, torch.tensor([self.other_count])])
        return torch.cat([tensor, tensor + 1.0 if tensor.is_floating_point() else tensor])


def test_depth_norm_uses_the_edges_of_every_process():
    ro = two_trees()
    plain = TreeBackup(eps=0.0)(ro, REWARDS).node
    normed = TreeBackup(depth_norm="depth", eps=0.0)(ro, REWARDS, TwoRanks()).node
    depth = node_depth(ro.parent, ro.leaf_nodes)
    for d in (1, 2):
        base = plain[depth == d]  # pooled with base + 1: mean + 0.5, variance + 0.25
        expected = (base - base.mean() - 0.5) / (base.var(unbiased=False) + 0.25).sqrt()
        assert torch.allclose(normed[depth == d], expected, atol=1e-6)
    with pytest.raises(ValueError, match="processes have different numbers of edges"):
        TreeBackup(depth_norm="depth")(ro, REWARDS, TwoRanks(other_count=5))
