# Ablation: SDE noise level eta = 1.0 (base: 0.7).
_base_ = ['../treegrpo_toy_shapes.py']

kernel = dict(eta=1.0)
