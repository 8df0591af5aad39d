"""Advantage estimators: rewards of the leaves + rollout structure -> advantage of every node.

An estimator accepts any object with the attributes ``parent [N]``, ``log_prob [N]``,
``leaf_nodes [L]`` and ``leaf_prompt_index [L]`` (a :class:`treegrpo.rollout.Rollout`, or a
``types.SimpleNamespace`` in tests); ``TreeBackup(weighting='sum')`` also needs the number of
elements of one latent: the attribute ``num_elements`` if the object has one, else
``latents[0].numel()``. Groups for normalisation are the prompts of the leaves.
The advantage of the edge parent -> n is ``Advantages.node[n]``; the edges of a rollout are
``rollout.edge_nodes``, so the per-edge advantages are ``adv.node[rollout.edge_nodes]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from treegrpo.advantages.functional import (
    WEIGHTINGS,
    backup_tree_advantages,
    group_normalize,
    leaf_of_nodes,
    node_depth,
    node_groups,
    normalize_per_group,
    scale_by_depth,
)
from treegrpo.advantages.distributed import (SINGLE_PROCESS, RankGroup, gather_same_size, gathered_rewards,
                                             track_globally)
from treegrpo.advantages.stat_tracking import PromptStatTracker
from treegrpo.registry import ADVANTAGES


@dataclass
class Advantages:
    """Result of an estimator."""

    node: Tensor  # [N] advantage of the edge into each node (roots: their own backed-up value)
    leaf: Tensor  # [L] normalised leaf advantages
    zero_std_groups: int  # groups whose rewards were all equal (their advantages are 0)


def _check_rewards(rollout: Any, rewards: Tensor) -> None:
    num_leaves = int(rollout.leaf_nodes.numel())
    if not isinstance(rewards, Tensor) or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a float tensor [L={num_leaves}], got {type(rewards)} "
                         f"{getattr(rewards, 'dtype', '')}")
    if tuple(rewards.shape) != (num_leaves,):
        raise ValueError(f"rewards must have shape [L]=({num_leaves},) (one per leaf), "
                         f"got {tuple(rewards.shape)}")


def _check_common(eps: float, global_std: bool) -> None:
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if not isinstance(global_std, bool):
        raise ValueError(f"global_std must be True or False, got {global_std!r}")


class _LeafNormalizer:
    """Leaf-reward normalisation shared by the estimators: within each prompt's group, or (with
    ``stat_tracking=dict(buffer_size, min_count)``) with the prompt's reward history across
    iterations (:class:`PromptStatTracker`; its state goes into checkpoints). Both statistics are
    global: computed from the rewards of all processes (``group``), so the tracker state is the
    same on every rank."""

    def __init__(self, eps: float, global_std: bool, stat_tracking: dict | None) -> None:
        _check_common(eps, global_std)
        if stat_tracking is not None and global_std:
            raise ValueError("stat_tracking and global_std=True do not combine: choose one")
        self.eps, self.global_std = eps, global_std
        self.tracker = None if stat_tracking is None else PromptStatTracker(eps=eps, **stat_tracking)

    def normalize_leaves(self, rollout: Any, rewards: Tensor, group: RankGroup) -> tuple[Tensor, int]:
        """rewards [L] -> (leaf advantages [L], groups whose current rewards are all equal).
        ``global_std`` and the tracker use the rewards of every process in ``group``."""
        all_rewards = gathered_rewards(rewards, group) if self.global_std else None
        leaf_adv, zero_std = group_normalize(rewards, rollout.leaf_prompt_index, self.eps, self.global_std,
                                             all_rewards)
        if self.tracker is not None:
            leaf_adv = track_globally(self.tracker, rollout.leaf_prompts, rollout.leaf_prompt_index,
                                      rewards, group)
        return leaf_adv, zero_std

    def state_dict(self) -> dict:
        return {} if self.tracker is None else self.tracker.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.tracker is not None and state:
            self.tracker.load_state_dict(state)


@ADVANTAGES.register_module()
class GroupNorm(_LeafNormalizer):
    """Flat GRPO: every edge of a trajectory gets its leaf's group-normalised advantage.

    Needs chain rollouts (one leaf below every node); raises ValueError on trees.
    """

    def __init__(self, eps: float = 1e-6, global_std: bool = False, stat_tracking: dict | None = None) -> None:
        super().__init__(eps, global_std, stat_tracking)

    def __call__(self, rollout: Any, rewards: Tensor, group: RankGroup = SINGLE_PROCESS) -> Advantages:
        """rewards [L] -> Advantages(node [N], leaf [L], zero_std_groups); ``group``: the
        processes whose rewards the global statistics use (the runner's)."""
        _check_rewards(rollout, rewards)
        leaf_of = leaf_of_nodes(rollout.parent, rollout.leaf_nodes)
        leaf_adv, zero_std = self.normalize_leaves(rollout, rewards, group)
        return Advantages(node=leaf_adv[leaf_of], leaf=leaf_adv, zero_std_groups=zero_std)


DEPTH_NORMS = (None, "depth", "prompt_depth")


def _num_elements(rollout: Any) -> int:
    """Elements of one latent (C*H*W): ``rollout.num_elements`` or ``rollout.latents[0].numel()``."""
    if getattr(rollout, "num_elements", None) is not None:
        return int(rollout.num_elements)
    if getattr(rollout, "latents", None) is None:
        raise ValueError("weighting='sum' needs the rollout's latents [N, ...] or a num_elements attribute")
    return int(rollout.latents[0].numel())


@ADVANTAGES.register_module()
class TreeBackup(_LeafNormalizer):
    """TreeGRPO: group-normalised leaf advantages backed up the tree, then optionally reshaped
    per depth.

    Args:
        weighting: ``'mean'`` averages the children uniformly; ``'prob'`` weights them by
            ``softmax(log_prob / temperature)`` over the siblings (the paper's probability-weighted
            backup); ``'sum'`` by ``softmax(log_prob * D / temperature)``, D = elements of a
            latent (the summed log-prob). Log-probs are means over D, so 'prob' weights are ~1/k
            (the same as 'mean' in practice) and 'sum' weights near one-hot; the temperature
            interpolates (``math.inf`` gives 'mean'). See :func:`backup_tree_advantages`.
        temperature: > 0; 1.0 (default) is today's 'prob' exactly.
        depth_norm: None (off, default); ``'depth'``: the advantages of all edges at one depth
            are normalised to zero mean / unit std over the whole iteration (every prompt and
            process; BranchGRPO's depth-wise normalisation); ``'prompt_depth'``: within one prompt's
            tree and depth (with k=2 the depth-1 edges of a tree become +-1: only signs survive).
            Roots are not edges and keep their backed-up value.
        depth_scale: None (off) or a list of factors, one per edge depth (edges leaving the roots
            are depth 0): the advantage of every edge at depth d is multiplied by
            ``depth_scale[d]`` (after ``depth_norm``).
        eps, global_std, stat_tracking: the leaf normalisation (see :class:`GroupNorm`); ``eps``
            is also added to the std of ``depth_norm``.
    """

    def __init__(self, weighting: str = "mean", eps: float = 1e-6, global_std: bool = False,
                 stat_tracking: dict | None = None, temperature: float = 1.0,
                 depth_norm: str | None = None, depth_scale: list[float] | None = None) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be a number > 0 (math.inf allowed), got {temperature!r}")
        if depth_norm not in DEPTH_NORMS:
            raise ValueError(f"depth_norm must be one of {DEPTH_NORMS}, got {depth_norm!r}")
        if depth_scale is not None:
            if (not isinstance(depth_scale, (list, tuple)) or not depth_scale
                    or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f)
                               for f in depth_scale)):
                raise ValueError(f"depth_scale must be None or a non-empty list of finite numbers, "
                                 f"got {depth_scale!r}")
            depth_scale = [float(f) for f in depth_scale]
        super().__init__(eps, global_std, stat_tracking)
        self.weighting, self.temperature = weighting, float(temperature)
        self.depth_norm, self.depth_scale = depth_norm, depth_scale

    def __call__(self, rollout: Any, rewards: Tensor, group: RankGroup = SINGLE_PROCESS) -> Advantages:
        """rewards [L] -> Advantages(node [N], leaf [L], zero_std_groups); ``group``: the
        processes whose rewards (and, for depth_norm='depth', edge advantages) the global
        statistics use (the runner's)."""
        _check_rewards(rollout, rewards)
        leaf_adv, zero_std = self.normalize_leaves(rollout, rewards, group)
        num_elements = _num_elements(rollout) if self.weighting == "sum" else None
        node_adv = backup_tree_advantages(
            rollout.parent, rollout.leaf_nodes, leaf_adv, rollout.log_prob, self.weighting,
            self.temperature, num_elements,
        )
        if self.depth_norm is not None or self.depth_scale is not None:
            node_adv = self._reshape(rollout, node_adv, group)
        return Advantages(node=node_adv, leaf=leaf_adv, zero_std_groups=zero_std)

    def _reshape(self, rollout: Any, node_adv: Tensor, group: RankGroup) -> Tensor:
        """Depth normalisation, then depth scaling, of the edge advantages (roots unchanged)."""
        depth = node_depth(rollout.parent, rollout.leaf_nodes)
        edge = torch.nonzero(depth > 0).flatten()
        if self.depth_norm == "depth":
            why = "depth_norm='depth' needs the same trees on every process"
            pool_adv = gather_same_size(node_adv[edge], group, "edges", why)
            pool_depth = gather_same_size(depth[edge], group, "edges", why)
            normed = normalize_per_group(node_adv[edge], depth[edge], self.eps, pool_adv, pool_depth)
            node_adv = node_adv.index_copy(0, edge, normed)
        elif self.depth_norm == "prompt_depth":
            prompt = node_groups(rollout.parent, rollout.leaf_nodes, rollout.leaf_prompt_index)
            key = prompt[edge] * (int(depth.max()) + 1) + depth[edge]
            node_adv = node_adv.index_copy(0, edge, normalize_per_group(node_adv[edge], key, self.eps))
        if self.depth_scale is not None:
            node_adv = scale_by_depth(node_adv, depth, self.depth_scale)
        return node_adv


__all__ = ["Advantages", "GroupNorm", "PromptStatTracker", "TreeBackup"]
