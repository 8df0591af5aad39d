# Stable Diffusion 3.5 large (flow matching, 8.1B-parameter transformer): the same SD3Policy as
# SD3.5-medium, LoRA on the same attention projections. model_path: a hub id or a local diffusers
# folder (no download at run time on machines without internet: pass a local path).
policy = dict(
    type='SD3Policy',
    model_path='stabilityai/stable-diffusion-3.5-large',
    resolution=512,
    dtype='bfloat16',
    lora=dict(r=32, alpha=64, target_modules=['to_q', 'to_k', 'to_v', 'to_out.0']),
    use_t5=True,
    gradient_checkpointing=True,
)
kernel = dict(type='FlowMatchingKernel', eta=0.7)
