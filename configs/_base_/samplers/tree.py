# TreeGRPO: one tree per prompt, advantages backed up the tree (probability-weighted).
sampler = dict(type='TreeSampler', num_steps=10, guidance_scale=1.0)
advantage = dict(type='TreeBackup', weighting='prob')
