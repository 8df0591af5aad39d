# TreeGRPO on SD3.5-medium with the HPS-v2.1 reward (the paper's main setting), LoRA, bf16.
#   python tools/train.py configs/treegrpo_sd3_hps.py
# Needs weights/HPS_v2.1_compressed.pt (README "Reward models") and the SD3.5-medium weights
# (hub id below, or --cfg-options policy.model_path=/local/sd3.5-medium).
# Where the TreeGRPO paper gives no number, settings follow Flow-GRPO's SD3.5 recipe: 512 px,
# 10 sampling steps, CFG 4.5, eta 0.7, LoRA r32/alpha64, lr 3e-4, clip range 1e-4, KL 0.04.
_base_ = [
    './_base_/models/sd35_medium.py',
    './_base_/rewards/hps_v21.py',
    './_base_/samplers/tree.py',
    './_base_/schedules/random_window.py',
    './_base_/gpu_runtime.py',
]

sampler = dict(num_steps=10, guidance_scale=4.5, chunk_size=32)
# Binary trees of depth 3: 8 leaves per prompt, 7 parent forwards in the update.
schedule = dict(depth=3, k=2, start_range=(0, 4))
loss = dict(clip_range=1e-4, beta=0.04)
optimizer = dict(lr=3e-4)
update = dict(micro_batch_size=16)
prompts_per_iter = 8

hooks = [
    dict(type='LoggerHook', interval=1),
    dict(type='CheckpointHook', interval=25, max_keep=3),
    dict(type='EvalHook', interval=50, dataset=dict(type='PromptFile', path='data/prompts.txt'),
         num_prompts=8, seed=1234),
]
