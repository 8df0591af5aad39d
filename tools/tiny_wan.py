"""A tiny random-weight Wan 2.1 text-to-video pipeline, built offline (no download).

Same classes and file layout as ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``: ``WanPipeline`` with a
2-layer ``WanTransformer3DModel``, an ``AutoencoderKLWan`` with base width 3 (16 latent channels,
8x spatial and 4x temporal compression as the real one), a 2-layer ``UMT5EncoderModel`` and a
T5-style Unigram tokenizer (:func:`tools.make_tiny_models.unigram_t5_tokenizer`). The scheduler is
the hub checkpoint's kind, ``UniPCMultistepScheduler`` with flow sigmas and ``flow_shift=3.0``.

    python tools/make_tiny_models.py --models wan --out work_dirs/tiny_models   # -> .../wan
"""
from __future__ import annotations

import torch

TEXT_DIM = 32  # the tiny UMT5's d_model = the transformer's text_dim


def tiny_umt5_encoder(vocab_size: int, seed: int):
    """A 2-layer UMT5 encoder (per-layer relative attention biases, as UMT5) of width 32."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2,
                        num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return UMT5EncoderModel(config).eval()


def tiny_wan_transformer(seed: int):
    """A 2-layer WanTransformer3DModel: 16 channels in and out, patch (1, 2, 2), 2 heads of 12
    (12 splits into the 3 rotary axes), text width 32."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
        out_channels=16, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def tiny_wan_vae(seed: int):
    """AutoencoderKLWan of base width 3: z_dim 16, 8x spatial (three downsamples) and 4x temporal
    compression (the last two temporal), the default latents_mean / latents_std."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def tiny_wan_pipeline(seed: int = 0):
    """WanPipeline with random weights (see the module docstring)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from tools.make_tiny_models import unigram_t5_tokenizer

    tokenizer = unigram_t5_tokenizer()
    text_encoder = tiny_umt5_encoder(len(tokenizer), seed)
    transformer = tiny_wan_transformer(seed + 1)
    vae = tiny_wan_vae(seed + 2)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=3.0, num_train_timesteps=1000)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=transformer)
