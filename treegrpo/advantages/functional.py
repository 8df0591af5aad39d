"""Pure advantage math: group normalisation of leaf rewards and backup through a forest.

A forest is given node by node: ``parent [N]`` long (-1 for roots, parents listed before their
children), ``leaf_nodes [L]`` long (node index of each scored leaf). No I/O, no config, no state.
"""
from __future__ import annotations

import torch

WEIGHTINGS = ("mean", "prob", "sum")


def group_normalize(
    rewards: torch.Tensor,
    groups: torch.Tensor,
    eps: float = 1e-6,
    global_std: bool = False,
    all_rewards: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Normalise rewards inside their groups: ``(r - mean_group) / (std + eps)``.

    Args:
        rewards: [L] float rewards.
        groups: [L] long group id of each reward (any ids; need not be contiguous).
        eps: added to the std.
        global_std: divide by the population std of all rewards instead of the group's
            (the mean stays per group).
        all_rewards: with ``global_std``, the rewards the std is taken over (e.g. those of every
            process, [world_size * L]); default ``rewards``.

    Returns:
        ``(adv [L], zero_std_groups)``: advantages (same dtype as ``rewards``) and the number of
        groups whose rewards are all equal (population std 0); those groups get advantage 0.
    """
    if rewards.dim() != 1 or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a 1-D float tensor [L], got {tuple(rewards.shape)} "
                         f"{rewards.dtype}")
    if groups.shape != rewards.shape:
        raise ValueError(f"groups must have the shape of rewards {tuple(rewards.shape)}, "
                         f"got {tuple(groups.shape)}")
    if rewards.numel() == 0:
        return rewards.clone(), 0
    _, inverse = torch.unique(groups, return_inverse=True)
    num_groups = int(inverse.max()) + 1
    count = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device)
    count.index_add_(0, inverse, torch.ones_like(rewards))
    total = torch.zeros_like(count).index_add_(0, inverse, rewards)
    mean = total / count
    centered = rewards - mean[inverse]
    # Exact test for "all equal" (a float mean of equal values can differ from them by an ulp).
    gmax = torch.full_like(count, -torch.inf).scatter_reduce(0, inverse, rewards, reduce="amax")
    gmin = torch.full_like(count, torch.inf).scatter_reduce(0, inverse, rewards, reduce="amin")
    zero_std = gmax == gmin
    if global_std:
        pool = rewards if all_rewards is None else all_rewards.to(rewards)
        std = (pool - pool.mean()).pow(2).mean().sqrt()
        adv = centered / (std + eps)
    else:
        var = torch.zeros_like(count).index_add_(0, inverse, centered.pow(2)) / count
        adv = centered / (var.sqrt()[inverse] + eps)
    adv = torch.where(zero_std[inverse], torch.zeros_like(adv), adv)
    return adv, int(zero_std.sum())


def _check_forest(parent: torch.Tensor, leaf_nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a forest and return ``(depth [N] long, num_children [N] long)``.

    Raises ValueError unless parents come before children, leaves are distinct valid nodes,
    every leaf has no children and every non-leaf node has at least one child.
    """
    if parent.dim() != 1 or leaf_nodes.dim() != 1:
        raise ValueError(f"parent and leaf_nodes must be 1-D, got {tuple(parent.shape)} and "
                         f"{tuple(leaf_nodes.shape)}")
    num_nodes = parent.numel()
    index = torch.arange(num_nodes, device=parent.device)
    if bool(((parent < -1) | (parent >= index)).any()):
        raise ValueError("every parent must be -1 (root) or a node listed before its child")
    if bool(((leaf_nodes < 0) | (leaf_nodes >= num_nodes)).any()):
        raise ValueError(f"leaf_nodes must be node ids in [0, {num_nodes}), got {leaf_nodes.tolist()}")
    if torch.unique(leaf_nodes).numel() != leaf_nodes.numel():
        raise ValueError("leaf_nodes must be distinct")
    has_parent = parent >= 0
    num_children = torch.bincount(parent[has_parent], minlength=num_nodes)
    is_leaf = torch.zeros(num_nodes, dtype=torch.bool, device=parent.device)
    is_leaf[leaf_nodes] = True
    bad_leaf = is_leaf & (num_children > 0)
    if bool(bad_leaf.any()):
        raise ValueError(f"leaf nodes {index[bad_leaf].tolist()} have children")
    childless = ~is_leaf & (num_children == 0)
    if bool(childless.any()):
        raise ValueError(f"nodes {index[childless].tolist()} are not leaves and have no children, "
                         "so they get no advantage")
    # Depth by repeated parent lookup: one vectorised pass per level.
    depth = torch.zeros_like(parent)
    safe_parent = parent.clamp(min=0)
    for _ in range(num_nodes):
        new_depth = torch.where(has_parent, depth[safe_parent] + 1, torch.zeros_like(depth))
        if torch.equal(new_depth, depth):
            break
        depth = new_depth
    return depth, num_children


def backup_tree_advantages(
    parent: torch.Tensor,
    leaf_nodes: torch.Tensor,
    leaf_adv: torch.Tensor,
    log_prob: torch.Tensor,
    weighting: str = "mean",
    temperature: float = 1.0,
    num_elements: int | None = None,
) -> torch.Tensor:
    """Back leaf advantages up a forest: ``A(node) = sum_c w_c A(c)`` over its children.

    Args:
        parent: [N] long, -1 for roots, parents listed before children.
        leaf_nodes: [L] long node id of each leaf.
        leaf_adv: [L] float advantage of each leaf.
        log_prob: [N] float log-prob of the edge parent -> node (ignored for roots).
        weighting: ``'mean'`` (uniform ``w_c = 1/k``), ``'prob'`` (``w = softmax(log_prob / T)``
            over the siblings) or ``'sum'`` (``w = softmax(log_prob * num_elements / T)``).
            ``log_prob`` is a mean over the latent's elements (Flow-GRPO's convention), so sibling
            differences are ~1/sqrt(D) and 'prob' weights are within a few % of 1/k ('prob' ==
            'mean' in practice); 'sum' uses the summed log-prob, whose differences are ~sqrt(D),
            so its weights are near one-hot. ``T`` interpolates: T -> inf gives 'mean'.
        temperature: ``T > 0`` (``math.inf`` allowed) for 'prob' and 'sum'; 1.0 is the plain
            softmax (the result is then bit-identical to the function without a temperature).
        num_elements: elements per latent (``C*H*W``), required by 'sum'.

    Returns:
        node_adv [N] (dtype of ``leaf_adv``): leaves keep their advantage, internal nodes the
        weighted average of their children. The advantage of edge parent->n is ``node_adv[n]``.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if leaf_adv.shape != leaf_nodes.shape or not leaf_adv.is_floating_point():
        raise ValueError(f"leaf_adv must be float with the shape of leaf_nodes "
                         f"{tuple(leaf_nodes.shape)}, got {tuple(leaf_adv.shape)} {leaf_adv.dtype}")
    if log_prob.shape != parent.shape:
        raise ValueError(f"log_prob must have the shape of parent {tuple(parent.shape)}, "
                         f"got {tuple(log_prob.shape)}")
    if not bool(torch.isfinite(leaf_adv).all()):
        raise ValueError("leaf_adv must be finite")
    depth, _ = _check_forest(parent, leaf_nodes)
    if not (isinstance(temperature, (int, float)) and temperature > 0):  # also refuses NaN
        raise ValueError(f"temperature must be a number > 0 (math.inf allowed), got {temperature!r}")
    if weighting == "sum" and not (isinstance(num_elements, int) and num_elements > 0):
        raise ValueError(f"weighting='sum' needs num_elements, a positive int, got {num_elements!r}")
    if weighting != "mean" and not bool(torch.isfinite(log_prob[parent >= 0]).all()):
        raise ValueError(f"weighting={weighting!r} needs finite log_prob on every edge")

    num_nodes = parent.numel()
    node_adv = torch.zeros(num_nodes, dtype=leaf_adv.dtype, device=leaf_adv.device)
    node_adv[leaf_nodes] = leaf_adv
    max_depth = int(depth.max()) if num_nodes else 0
    for level in range(max_depth, 0, -1):
        child = torch.nonzero(depth == level).flatten()  # all children of depth level-1 nodes
        par = parent[child]
        if weighting == "mean":
            weight = torch.ones(child.numel(), dtype=leaf_adv.dtype, device=leaf_adv.device)
        else:
            lp = log_prob[child].to(leaf_adv.dtype)
            if weighting == "sum":
                lp = lp * num_elements
            if temperature != 1.0:  # skipped at 1.0 so the default stays bit-identical
                lp = lp / temperature  # inf -> all zeros -> uniform weights
            peak = torch.full((num_nodes,), -torch.inf, dtype=lp.dtype, device=lp.device)
            peak = peak.scatter_reduce(0, par, lp, reduce="amax")
            weight = torch.exp(lp - peak[par])  # stable softmax numerator, max term is 1
        norm = torch.zeros(num_nodes, dtype=weight.dtype, device=weight.device)
        norm = norm.index_add(0, par, weight)
        weight = weight / norm[par]
        # Internal nodes start at 0 and receive exactly the sum over their own children.
        node_adv = node_adv.index_add(0, par, weight * node_adv[child])
    return node_adv


def leaf_of_nodes(parent: torch.Tensor, leaf_nodes: torch.Tensor) -> torch.Tensor:
    """For flat (chain) rollouts: the position in ``leaf_nodes`` of the unique leaf below each node.

    Args:
        parent: [N] long, -1 for roots, parents listed before children.
        leaf_nodes: [L] long.

    Returns:
        [N] long in ``[0, L)``; ``leaf_nodes[result[n]]`` is the leaf below (or at) node ``n``.

    Raises ValueError if some node has more than one leaf below it.
    """
    depth, num_children = _check_forest(parent, leaf_nodes)
    if bool((num_children > 1).any()):
        raise ValueError("GroupNorm needs flat rollouts (one leaf below every node); use TreeBackup")
    result = torch.full_like(parent, -1)
    result[leaf_nodes] = torch.arange(leaf_nodes.numel(), device=parent.device)
    max_depth = int(depth.max()) if parent.numel() else 0
    for level in range(max_depth, 0, -1):
        child = torch.nonzero(depth == level).flatten()
        result[parent[child]] = result[child]  # one child per node: no write conflicts
    return result


def node_depth(parent: torch.Tensor, leaf_nodes: torch.Tensor) -> torch.Tensor:
    """[N] long depth of each node (roots 0) of a validated forest. The edge parent -> n lies at
    depth ``node_depth[n] - 1`` (edges leaving the roots are at depth 0)."""
    return _check_forest(parent, leaf_nodes)[0]


def node_groups(parent: torch.Tensor, leaf_nodes: torch.Tensor, leaf_groups: torch.Tensor) -> torch.Tensor:
    """[N] long group (prompt) of each node, taken from the leaves below it.

    Args:
        parent: [N] long; leaf_nodes: [L] long; leaf_groups: [L] long group of each leaf.

    Raises ValueError if two leaves below one node have different groups.
    """
    if leaf_groups.shape != leaf_nodes.shape:
        raise ValueError(f"leaf_groups must have the shape of leaf_nodes {tuple(leaf_nodes.shape)}, "
                         f"got {tuple(leaf_groups.shape)}")
    depth = node_depth(parent, leaf_nodes)
    lo = torch.full_like(parent, torch.iinfo(torch.long).max)
    hi = torch.full_like(parent, torch.iinfo(torch.long).min)
    lo[leaf_nodes] = leaf_groups.to(parent)
    hi[leaf_nodes] = leaf_groups.to(parent)
    for level in range(int(depth.max()) if parent.numel() else 0, 0, -1):
        child = torch.nonzero(depth == level).flatten()
        lo = lo.scatter_reduce(0, parent[child], lo[child], reduce="amin")
        hi = hi.scatter_reduce(0, parent[child], hi[child], reduce="amax")
    if bool((lo != hi).any()):
        raise ValueError("leaves of different groups share an ancestor")
    return lo


def normalize_per_group(
    values: torch.Tensor,
    groups: torch.Tensor,
    eps: float = 1e-6,
    pool_values: torch.Tensor | None = None,
    pool_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(v - mean_g) / (std_g + eps)`` with the population mean/std of each group ``g``.

    Args:
        values: [E] float; groups: [E] long group id of each value.
        pool_values, pool_groups: [M] the values the statistics are taken over (e.g. those of
            every process; must contain every group of ``groups``); default ``values, groups``.

    Returns:
        [E]; groups whose pooled values are all equal get 0.
    """
    if pool_values is None:
        pool_values, pool_groups = values, groups
    if values.numel() == 0:
        return values.clone()
    ids, inverse = torch.unique(torch.cat([groups, pool_groups.to(groups)]), return_inverse=True)
    own, pool = inverse[: groups.numel()], inverse[groups.numel():]
    pool_values = pool_values.to(values)
    count = torch.zeros(ids.numel(), dtype=values.dtype, device=values.device)
    count.index_add_(0, pool, torch.ones_like(pool_values))
    if bool((count[own] == 0).any()):
        raise ValueError("pool_groups must contain every group of groups")
    mean = torch.zeros_like(count).index_add_(0, pool, pool_values) / count.clamp(min=1)
    var = torch.zeros_like(count).index_add_(0, pool, (pool_values - mean[pool]).pow(2)) / count.clamp(min=1)
    gmax = torch.full_like(count, -torch.inf).scatter_reduce(0, pool, pool_values, reduce="amax")
    gmin = torch.full_like(count, torch.inf).scatter_reduce(0, pool, pool_values, reduce="amin")
    out = (values - mean[own]) / (var.sqrt()[own] + eps)
    return torch.where((gmax == gmin)[own], torch.zeros_like(out), out)


def scale_by_depth(node_adv: torch.Tensor, depth: torch.Tensor, depth_scale: list[float]) -> torch.Tensor:
    """Multiply the advantage of each edge parent -> n by ``depth_scale[depth[n] - 1]``.

    Args:
        node_adv: [N] float; depth: [N] long (:func:`node_depth`); depth_scale: one factor per
            edge depth, at least ``depth.max()`` of them. Roots (depth 0) are left unchanged.
    """
    max_depth = int(depth.max()) if depth.numel() else 0
    if len(depth_scale) < max_depth:
        raise ValueError(f"depth_scale has {len(depth_scale)} factors but the tree has edges at "
                         f"{max_depth} depths")
    factor = torch.tensor([1.0, *depth_scale], dtype=node_adv.dtype, device=node_adv.device)
    return node_adv * factor[depth]
