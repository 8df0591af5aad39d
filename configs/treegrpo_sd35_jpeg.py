# TreeGRPO on SD3.5-medium with the JPEG-compressibility reward (DDPO's first task; needs no reward
# weights). The HPS-v2.1 config (treegrpo_sd3_hps.py) comes with the reward models of issue 5.
# Where the TreeGRPO paper gives no number, the settings follow Flow-GRPO's SD3.5 recipe.
_base_ = [
    './_base_/models/sd35_medium.py',
    './_base_/samplers/tree.py',
    './_base_/schedules/random_window.py',
    './_base_/default_runtime.py',
]

mixed_precision = 'bf16'
reward = dict(type='JPEGCompressibility', quality=95)
train_dataset = dict(type='PromptFile', path='data/prompts.txt')
sampler = dict(num_steps=10, guidance_scale=4.5, chunk_size=32)
schedule = dict(depth=3, k=2, start_range=(0, 4))
loss = dict(clip_range=1e-4, beta=0.04)
optimizer = dict(lr=3e-4)
update = dict(micro_batch_size=16, per_step_batches=True)
max_iters = 300
prompts_per_iter = 8
