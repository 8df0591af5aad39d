"""Advantage estimators: group normalisation of leaf rewards and tree backup."""
from treegrpo.advantages.estimators import Advantages, GroupNorm, TreeBackup
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

__all__ = [
    "Advantages",
    "GroupNorm",
    "TreeBackup",
    "WEIGHTINGS",
    "backup_tree_advantages",
    "group_normalize",
    "leaf_of_nodes",
    "node_depth",
    "node_groups",
    "normalize_per_group",
    "scale_by_depth",
]
