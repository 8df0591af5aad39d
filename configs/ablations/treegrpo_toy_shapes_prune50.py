# Ablation: update pruning, train the top half of each tree's parents by max |advantage| of their
# edges (base: every parent). Same rollouts and rewards; about half the update forwards.
_base_ = ['../treegrpo_toy_shapes.py']

update = dict(prune=dict(keep_fraction=0.5))
