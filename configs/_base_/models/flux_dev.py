# FLUX.1-dev (guidance-distilled flow matching, 12B transformer). model_path: a hub id or a local
# diffusers folder (no download at run time on machines without internet: pass a local path with
# --cfg-options policy.model_path=...). The hub repo is gated: accept its licence first.
#
# resolution 512, not FLUX's native 1024: an RL iteration renders many images per prompt (k**d
# leaves per tree) and the transformer's cost grows with the packed sequence (512px: 1024 tokens,
# 1024px: 4096), so 512 is ~4x+ cheaper per forward; Flow-GRPO's FLUX recipes also train at 512.
# The sigma schedule follows the resolution (dynamic shift mu = 0.63 at 512px, 1.15 at 1024px).
#
# guidance 3.5 is the distilled guidance embedding (FLUX.1-dev's default). Samplers keep
# guidance_scale=1.0 (one forward per step); > 1 would add true CFG with a negative prompt (2x NFE).
# LoRA r=64 / alpha=128 on the double-stream attention + MLP layers (and the single-stream q/k/v),
# as Flow-GRPO's FLUX runs.
policy = dict(
    type='FluxPolicy',
    model_path='black-forest-labs/FLUX.1-dev',
    resolution=512,
    dtype='bfloat16',
    lora=dict(r=64, alpha=128, target_modules=[
        'attn.to_q', 'attn.to_k', 'attn.to_v', 'attn.to_out.0',
        'attn.add_q_proj', 'attn.add_k_proj', 'attn.add_v_proj', 'attn.to_add_out',
        'ff.net.0.proj', 'ff.net.2', 'ff_context.net.0.proj', 'ff_context.net.2',
    ]),
    guidance=3.5,
    max_sequence_length=512,
    gradient_checkpointing=True,
)
# eta: Flow-GRPO's SDE noise level (0.7, its default for SD3.5 and FLUX). Larger eta explores more
# but makes each edge's Gaussian log-prob flatter; 0 turns the SDE into the ODE.
kernel = dict(type='FlowMatchingKernel', eta=0.7)
# Sampler settings belong to the top-level config; FLUX.1-dev samples well in few steps (Flow-GRPO:
# 6 training steps, 28 for evaluation), e.g. sampler = dict(num_steps=10, guidance_scale=1.0).
