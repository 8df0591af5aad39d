# TreeGRPO on Qwen-Image with the HPS-v2.1 reward, LoRA, bf16. Untested at full size here (no run
# of it has been made); the tests dry-run it on the tiny random Qwen-Image.
#   python tools/train.py configs/treegrpo_qwenimage_hps.py
#   python tools/memory_plan.py configs/treegrpo_qwenimage_hps.py --gpus 8 --strategy fsdp
# Needs weights/HPS_v2.1_compressed.pt and the Qwen-Image weights (hub id in the base, or
# --cfg-options policy.model_path=/local/Qwen-Image).
# Qwen-Image is not guidance-distilled: the sampler runs true CFG (guidance_scale 4.0, the
# pipeline's default true_cfg_scale), two transformer rows per sample and step.
_base_ = [
    './_base_/models/qwenimage.py',
    './_base_/rewards/hps_v21.py',
    './_base_/samplers/tree.py',
    './_base_/schedules/random_window.py',
    './_base_/gpu_runtime.py',
]

sampler = dict(num_steps=16, guidance_scale=4.0, chunk_size=8)
schedule = dict(depth=3, k=2, start_range=(0, 6))
loss = dict(clip_range=1e-4, beta=0.0)
optimizer = dict(lr=1e-5)
update = dict(micro_batch_size=4)
# 8 prompts: one per GPU on 8 GPUs (prompts_per_iter must be divisible by the number of processes)
prompts_per_iter = 8
