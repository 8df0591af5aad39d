# Wan 2.1 text-to-video, 1.3B transformer (Wan-AI/Wan2.1-T2V-1.3B-Diffusers; the 14B T2V and the
# single-transformer Wan 2.2 TI2V-5B load the same way; the two-expert Wan 2.2 A14B is refused).
# model_path: a hub id or a local diffusers folder (offline: --cfg-options policy.model_path=...).
#
# Latents [16, F', h, w] with F' = (num_frames - 1) / 4 + 1 and h = height / 8. 33 frames at
# 480x832 (F' = 9), fewer than the pipeline's default 81: every tree renders k**d clips per prompt.
# Levels: the flow-matching Euler sigmas with the checkpoint's flow_shift (3.0 for the 1.3B model),
# not the UniPC solver the pipeline uses for plain inference (the kernels take one Euler step).
policy = dict(
    type='WanPolicy',
    model_path='Wan-AI/Wan2.1-T2V-1.3B-Diffusers',
    height=480,
    width=832,
    num_frames=33,
    dtype='bfloat16',
    lora=dict(r=32, alpha=64, target_modules=['to_q', 'to_k', 'to_v', 'to_out.0']),
    negative_prompt='',
    max_sequence_length=512,
    gradient_checkpointing=True,
)
kernel = dict(type='FlowMatchingKernel', eta=0.7)
