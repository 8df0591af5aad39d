# Flat GRPO on the toy task with headroom (beside treegrpo_toy_layout.py): same reward, loss, KL,
# window and eval, tuned on this task with the same care as the tree (1 seed, 150k forwards,
# docs/benchmark_layout/tuning.md): G = 4 trajectories per prompt at lr 1e-4 ended highest (0.473;
# G = 8: 0.449, G = 16: 0.464, G = 8 at lr 2e-4: 0.463, G = 8 with 2 inner epochs: see there).
_base_ = ['./treegrpo_toy_layout.py']

optimizer = dict(lr=1e-4)
sampler = dict(_delete_=True, type='FlatSampler', num_steps=10, group_size=4, guidance_scale=1.0)
advantage = dict(_delete_=True, type='GroupNorm')
