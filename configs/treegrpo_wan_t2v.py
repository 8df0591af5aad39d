# TreeGRPO on Wan 2.1 T2V 1.3B, LoRA, bf16. Reward: HPS-v2.1 averaged over 4 evenly spaced frames
# of each clip plus a small pixel-space temporal-consistency term (a still clip scores 1 on it, so
# it only regularises). Rollout images are clips [L, F, 3, H, W]; eval previews are animated GIFs.
# Untested at this size here (no GPU run was made): the settings below are a starting point.
_base_ = [
    './_base_/models/wan.py',
    './_base_/samplers/tree.py',
    './_base_/schedules/random_window.py',
    './_base_/default_runtime.py',
]

reward = dict(
    type='WeightedSum',
    rewards=[
        dict(type='FrameAveragedReward', num_frames=4, reward=dict(
            type='HPSv2', version='v2.1', checkpoint='weights/HPS_v2.1_compressed.pt',
            clip_path='laion/CLIP-ViT-H-14-laion2B-s32B-b79K', dtype='bfloat16', batch_size=16)),
        dict(type='TemporalConsistencyReward'),
    ],
    weights=[1.0, 0.1],
    names=['hps', 'temporal'],
)
mixed_precision = 'bf16'
train_dataset = dict(type='PromptFile', path='data/prompts.txt')
sampler = dict(num_steps=20, guidance_scale=5.0, chunk_size=4)
schedule = dict(depth=2, k=2, start_range=(0, 6))
loss = dict(clip_range=1e-4, beta=0.0)
optimizer = dict(lr=1e-5)
update = dict(micro_batch_size=2, per_step_batches=True)
max_iters = 300
prompts_per_iter = 8
