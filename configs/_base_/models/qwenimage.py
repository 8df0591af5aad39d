# Qwen-Image (flow matching, 20B MMDiT transformer, Qwen2.5-VL-7B text encoder). model_path: a hub
# id or a local diffusers folder (no download at run time on machines without internet: pass a
# local path with --cfg-options policy.model_path=...).
#
# resolution 512, not Qwen-Image's native 1328: an RL iteration renders many images per prompt and
# the transformer's cost grows with the packed sequence (512px: 1024 image tokens). The sigma
# schedule follows the resolution (dynamic shift mu from the image sequence length).
#
# Memory: 20.4B transformer parameters (~38 GiB in bf16) plus the frozen 8.3B Qwen2.5-VL text
# encoder (~15.5 GiB, not sharded): shard the transformer with FSDP; tools/memory_plan.py gives
# the per-GPU estimate (an estimate, no full-size run has been made).
# Prompt embeddings are padded to max_sequence_length tokens (3584 wide) in the prompt cache; the
# forwards trim the padding no prompt of the batch uses.
# CFG: the sampler's guidance_scale > 1 is the pipeline's true_cfg_scale (negative prompt ' ',
# norm-rescaled combination, 2x NFE). LoRA r=64 / alpha=128 on both streams' attention and MLPs.
policy = dict(
    type='QwenImagePolicy',
    model_path='Qwen/Qwen-Image',
    resolution=512,
    dtype='bfloat16',
    lora=dict(r=64, alpha=128, target_modules=[
        'attn.to_q', 'attn.to_k', 'attn.to_v', 'attn.to_out.0',
        'attn.add_q_proj', 'attn.add_k_proj', 'attn.add_v_proj', 'attn.to_add_out',
        'img_mlp.net.0.proj', 'img_mlp.net.2', 'txt_mlp.net.0.proj', 'txt_mlp.net.2',
    ]),
    negative_prompt=' ',
    max_sequence_length=512,
    gradient_checkpointing=True,
)
# eta: Flow-GRPO's SDE noise level; 0 turns the SDE into the ODE.
kernel = dict(type='FlowMatchingKernel', eta=0.7)
