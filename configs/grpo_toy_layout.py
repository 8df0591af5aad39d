# Flat GRPO on the toy task with headroom (beside treegrpo_toy_layout.py): as grpo_toy_shapes.py,
# G = 8 independent trajectories per prompt, same reward, loss, optimizer and eval.
_base_ = ['./treegrpo_toy_layout.py']

sampler = dict(_delete_=True, type='FlatSampler', num_steps=10, group_size=8, guidance_scale=1.0)
advantage = dict(_delete_=True, type='GroupNorm')
