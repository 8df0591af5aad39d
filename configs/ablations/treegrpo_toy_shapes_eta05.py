# Ablation: SDE noise level eta = 0.5 (base: 0.7).
_base_ = ['../treegrpo_toy_shapes.py']

kernel = dict(eta=0.5)
