# Ablation at a fixed 8 leaves: k = [2, 2, 2], depth 3 (the base tree written per depth; it samples
# and trains exactly as the base k = 2).
_base_ = ['../treegrpo_toy_shapes.py']

schedule = dict(k=[2, 2, 2])
