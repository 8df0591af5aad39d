# Ablation: tree reuse, two inner epochs over each tree (base: one). Every edge is trained twice; the
# second epoch's ratios differ from 1 and the PPO clip (clip_range 1e-3) bounds the step. The
# policy forwards of the update double; the KL reference runs once per parent (reused in epoch 2).
_base_ = ['../treegrpo_toy_shapes.py']

update = dict(num_inner_epochs=2)
