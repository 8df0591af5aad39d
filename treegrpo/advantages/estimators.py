"""Advantage estimators: rewards of the leaves + rollout structure -> advantage of every node.

An estimator accepts any object with the attributes ``parent [N]``, ``log_prob [N]``,
``leaf_nodes [L]`` and ``leaf_prompt_index [L]`` (a :class:`treegrpo.rollout.Rollout`, or a
``types.SimpleNamespace`` in tests). Groups for normalisation are the prompts of the leaves.
The advantage of the edge parent -> n is ``Advantages.node[n]``; the edges of a rollout are
``rollout.edge_nodes``, so the per-edge advantages are ``adv.node[rollout.edge_nodes]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from treegrpo.advantages.functional import (
    WEIGHTINGS,
    backup_tree_advantages,
    group_normalize,
    leaf_of_nodes,
)
from treegrpo.advantages.distributed import SINGLE_PROCESS, RankGroup, gathered_rewards, track_globally
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


@ADVANTAGES.register_module()
class TreeBackup(_LeafNormalizer):
    """TreeGRPO: group-normalised leaf advantages backed up the tree.

    ``weighting='mean'`` averages the children uniformly; ``'prob'`` weights them by a softmax of
    their edge log-probs (the paper's probability-weighted backup).
    """

    def __init__(self, weighting: str = "mean", eps: float = 1e-6, global_std: bool = False,
                 stat_tracking: dict | None = None) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        super().__init__(eps, global_std, stat_tracking)
        self.weighting = weighting

    def __call__(self, rollout: Any, rewards: Tensor, group: RankGroup = SINGLE_PROCESS) -> Advantages:
        """rewards [L] -> Advantages(node [N], leaf [L], zero_std_groups); ``group``: the
        processes whose rewards the global statistics use (the runner's)."""
        _check_rewards(rollout, rewards)
        leaf_adv, zero_std = self.normalize_leaves(rollout, rewards, group)
        node_adv = backup_tree_advantages(
            rollout.parent, rollout.leaf_nodes, leaf_adv, rollout.log_prob, self.weighting
        )
        return Advantages(node=node_adv, leaf=leaf_adv, zero_std_groups=zero_std)


__all__ = ["Advantages", "GroupNorm", "PromptStatTracker", "TreeBackup"]
