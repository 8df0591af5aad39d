# Ablation: branching factor k = 4 (base: 2).
_base_ = ['../treegrpo_toy_shapes.py']

schedule = dict(k=4)
