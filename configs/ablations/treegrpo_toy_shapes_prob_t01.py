# Ablation: probability-weighted backup at temperature 0.1 (base: 1.0, ~uniform weights).
_base_ = ['../treegrpo_toy_shapes.py']

advantage = dict(temperature=0.1)
