# Ablation: tree reuse, two inner epochs over each tree (base: one). Every edge is trained twice; the
# second epoch's ratios differ from 1 and the PPO clip (clip_range 1e-3) bounds the step. Twice
# the update forwards, the same sampling forwards.
_base_ = ['../treegrpo_toy_shapes.py']

update = dict(num_inner_epochs=2)
