# Ablation: branching factor k = 3 (base: 2).
_base_ = ['../treegrpo_toy_shapes.py']

schedule = dict(k=3)
