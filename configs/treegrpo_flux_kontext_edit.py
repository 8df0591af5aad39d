# TreeGRPO on FLUX.1 Kontext-dev (image editing), LoRA, bf16. Each row of the jsonl prompt file is
# an edit instruction with its input image: {"prompt": "make the car red", "image": "in/0001.png"}.
# `image` is read relative to policy.image_root (set it to the prompt file's folder); paths leaving
# that folder are refused, absolute ones too unless policy.allow_absolute_image_paths=True.
# Input images are resized to image_size x image_size, VAE-encoded once per file and cached.
# The transformer sees target + input-image tokens (2x the FLUX sequence at image_size=resolution).
# Reward: HPS-v2.1 of the edited image against the instruction (a rough proxy for edit quality;
# swap in a VLM judge reading the record's fields for real edit training).
_base_ = [
    './_base_/models/flux_dev.py',
    './_base_/rewards/hps_v21.py',
    './_base_/samplers/tree.py',
    './_base_/schedules/random_window.py',
    './_base_/gpu_runtime.py',
]

policy = dict(
    type='FluxKontextPolicy',
    model_path='black-forest-labs/FLUX.1-Kontext-dev',
    guidance=2.5,  # the Kontext model card's guidance_scale
    image_size=512,
    image_root='data/edit',
)
train_dataset = dict(type='PromptFile', path='data/edit/prompts.jsonl')
sampler = dict(num_steps=16, guidance_scale=1.0, chunk_size=16)
schedule = dict(depth=3, k=2, start_range=(0, 6))
loss = dict(clip_range=1e-4, beta=0.0)
optimizer = dict(lr=1e-5)
update = dict(micro_batch_size=8)
prompts_per_iter = 8
