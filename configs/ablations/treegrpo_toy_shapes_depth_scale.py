# Ablation: per-depth advantage scaling, early edges weighted up (base: 1 at every depth). The
# first split of the window decides the layout (where the shape is); its edges get 1.5x, the last
# depth 0.5x.
_base_ = ['../treegrpo_toy_shapes.py']

advantage = dict(depth_scale=[1.5, 1.0, 0.5])
