# Flat GRPO baseline: G independent trajectories per prompt, one advantage per trajectory.
sampler = dict(type='FlatSampler', num_steps=10, group_size=8, guidance_scale=1.0, shared_noise=False)
advantage = dict(type='GroupNorm')
