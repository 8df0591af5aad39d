# Flat GRPO baseline beside treegrpo_sd3_hps.py: the same prompts per iteration, images per prompt
# (G = k**depth = 8), SDE window, reward, loss and optimizer; only the sampler and the advantage
# estimator differ. Being flat, it spends more forwards per iteration (8 full chains per prompt).
_base_ = ['./treegrpo_sd3_hps.py']

sampler = dict(_delete_=True, type='FlatSampler', num_steps=10, group_size=8, guidance_scale=4.5,
               chunk_size=32)
advantage = dict(_delete_=True, type='GroupNorm')
