# Ablation: depth-wise advantage normalisation over the iteration's edges (BranchGRPO; base: off).
_base_ = ['../treegrpo_toy_shapes.py']

advantage = dict(depth_norm='depth')
