# TreeGRPO on Stable Diffusion 1.5 (DDIM, epsilon prediction) with the LAION aesthetic reward
# (DDPO's aesthetic task), LoRA, bf16. SD2.x (v-prediction): set the model path and
# kernel.prediction_type='v_prediction' (the policy refuses a mismatched kernel).
_base_ = [
    './_base_/models/sd15.py',
    './_base_/rewards/aesthetic.py',
    './_base_/samplers/tree.py',
    './_base_/schedules/random_window.py',
    './_base_/gpu_runtime.py',
]

# DDPO: 50 DDIM steps, CFG 5; 20 steps keep the tree's shared prefix and suffixes cheap.
sampler = dict(num_steps=20, guidance_scale=5.0, chunk_size=32)
schedule = dict(depth=3, k=2, start_range=(0, 8))
loss = dict(clip_range=1e-4, beta=0.0)
optimizer = dict(lr=3e-4)
update = dict(micro_batch_size=16)
prompts_per_iter = 8
