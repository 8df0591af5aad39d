"""Rollout samplers: TreeSampler (TreeGRPO) and FlatSampler (the flat GRPO baseline)."""
from .flat import FlatSampler
from .tree import TreeSampler

__all__ = ["FlatSampler", "TreeSampler"]
