# Flat GRPO baseline on the toy world beside treegrpo_toy_shapes.py: the same prompts per
# iteration, images per prompt (G = k**d = 8), SDE window, reward, loss and optimizer. Being flat,
# it spends more forwards per iteration (8 full trajectories: 16*8*10 = 1280 against ~840).
_base_ = ['./treegrpo_toy_shapes.py']

sampler = dict(_delete_=True, type='FlatSampler', num_steps=10, group_size=8, guidance_scale=1.0)
advantage = dict(_delete_=True, type='GroupNorm')
