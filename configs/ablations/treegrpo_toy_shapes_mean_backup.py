# Ablation: uniform (mean) advantage backup (base: probability-weighted).
_base_ = ['../treegrpo_toy_shapes.py']

advantage = dict(weighting='mean')
