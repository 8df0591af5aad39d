# Ablation: per-depth branching k = [4, 2, 2]: 4 children of each root, then 2 and 2 (16 leaves;
# base: k = 2 at each of the 3 depths, 8 leaves).
_base_ = ['../treegrpo_toy_shapes.py']

schedule = dict(k=[4, 2, 2])
