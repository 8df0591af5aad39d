# Ablation at a fixed 8 leaves: k = [4, 2], depth 2 (wide first split; base: k = 2, depth 3).
_base_ = ['../treegrpo_toy_shapes.py']

schedule = dict(depth=2, k=[4, 2])
