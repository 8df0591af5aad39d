# Ablation: tree depth (SDE window) d = 2 (base: 3).
_base_ = ['../treegrpo_toy_shapes.py']

schedule = dict(depth=2)
