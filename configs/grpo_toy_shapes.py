# Flat GRPO baseline on the toy world with the same budget as treegrpo_toy_shapes.py: the same
# prompts per iteration, leaves per prompt (G = k**d = 8), SDE window, reward and optimizer.
_base_ = ['./treegrpo_toy_shapes.py']

sampler = dict(_delete_=True, type='FlatSampler', num_steps=10, group_size=8, guidance_scale=1.0)
advantage = dict(_delete_=True, type='GroupNorm')
