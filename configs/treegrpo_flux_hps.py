# TreeGRPO on FLUX.1-dev with HPS-v2.1 (the DanceGRPO / MixGRPO setting), LoRA, bf16.
# FLUX.1-dev is guidance-distilled: the sampler runs without CFG (guidance_scale 1) and the
# policy's embedded guidance (3.5) conditions the transformer.
_base_ = [
    './_base_/models/flux_dev.py',
    './_base_/rewards/hps_v21.py',
    './_base_/samplers/tree.py',
    './_base_/schedules/random_window.py',
    './_base_/gpu_runtime.py',
]

sampler = dict(num_steps=16, guidance_scale=1.0, chunk_size=16)
schedule = dict(depth=3, k=2, start_range=(0, 6))
loss = dict(clip_range=1e-4, beta=0.0)
optimizer = dict(lr=1e-5)
update = dict(micro_batch_size=8)
# 8 prompts: one per GPU on 8 GPUs (prompts_per_iter must be divisible by the number of processes)
prompts_per_iter = 8
