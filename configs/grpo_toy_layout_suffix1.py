# Flat GRPO on the layout task with the one-step ODE finish (beside treegrpo_toy_layout_suffix1.py),
# tuned with the finish like the tree (1 seed, 150,000 forwards, docs/benchmark_layout/tuning.md):
# of G = 4 at lr 1e-4 / 2e-4 and G = 8 at lr 2e-4, G = 8 at lr 2e-4 ended highest (0.477).
_base_ = ['./grpo_toy_layout.py']

optimizer = dict(lr=2e-4)
sampler = dict(group_size=8, suffix_steps=1)
