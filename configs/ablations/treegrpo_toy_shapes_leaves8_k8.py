# Ablation at a fixed 8 leaves: k = [8], depth 1 (one SDE step, 8 siblings; base: k = 2, depth 3).
_base_ = ['../treegrpo_toy_shapes.py']

schedule = dict(depth=1, k=[8])
