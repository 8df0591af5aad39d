# HPS-v2.1 (the TreeGRPO paper's training reward). Weights: HPS_v2.1_compressed.pt from the hub
# repo xswu/HPSv2 (convert once with `python -m treegrpo.rewards.clip_convert ... OUT_DIR` to skip
# the ~17 s conversion at start-up); tokenizer: laion/CLIP-ViT-H-14-laion2B-s32B-b79K (or a local copy).
reward = dict(
    type='HPSv2',
    version='v2.1',
    checkpoint='weights/HPS_v2.1_compressed.pt',
    clip_path='laion/CLIP-ViT-H-14-laion2B-s32B-b79K',
    dtype='bfloat16',
    batch_size=16,
)
