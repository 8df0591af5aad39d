"""The pipelines ``tools/bench_rollout.py --random-weights`` builds: real shapes with random weights
(public config values of each hub model; Qwen-Image and Wan from tools/memory_plan.py) and the tiny
ones of tools/make_tiny_models.py. Nothing here downloads; builders only construct modules."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.make_tiny_models import (byte_level_clip_tokenizer, tiny_flux_pipeline,  # noqa: E402
                                    tiny_qwenimage_pipeline, tiny_sd3_pipeline, tiny_sd15_pipeline, tiny_wan,
                                    unigram_t5_tokenizer)
from tools.memory_plan import QWEN25_VL_7B, QWEN_IMAGE, QWEN_IMAGE_VAE, UMT5_XXL, WAN21_1_3B, WAN_VAE  # noqa: E402

# stabilityai/stable-diffusion-3.5-medium transformer/config.json
SD35_MEDIUM_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                               attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                               caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                               dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              hidden_act="gelu", projection_dim=1280)
VAE_COMMON = dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  norm_num_groups=32)
SD3_VAE = dict(VAE_COMMON, latent_channels=16, sample_size=1024, use_quant_conv=False, use_post_quant_conv=False,
               shift_factor=0.0609, scaling_factor=1.5305)
SD15_VAE = dict(VAE_COMMON, latent_channels=4, sample_size=512, scaling_factor=0.18215)
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
# black-forest-labs/FLUX.1-dev: transformer/config.json (19 double + 38 single blocks, 24 heads x 128),
# text_encoder_2 (T5-v1.1-XXL encoder, 4.76B), vae (as SD3's, FLUX's factors), scheduler
FLUX_DEV_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                            guidance_embeds=True, axes_dims_rope=(16, 56, 56))
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              layer_norm_epsilon=1e-6, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1)
FLUX_VAE = dict(SD3_VAE, shift_factor=0.1159, scaling_factor=0.3611)
FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                      max_image_seq_len=4096)
T5_NOTE = ("omitted (use_t5=False): the pipeline feeds zeros in place of the 256 T5 tokens, so the transformer "
           "sees the same 333 text tokens; T5-XXL encoding (once per prompt, cached) is not measured")


def clip_encoder(spec: dict, projection: bool):
    """A random CLIP text encoder with the real sizes over the byte-level tokenizer's ids."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab = len(byte_level_clip_tokenizer())  # bos = vocab - 2, eos = vocab - 1
    config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=vocab - 2,
                            eos_token_id=vocab - 1, pad_token_id=vocab - 1, **spec)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def real_sd3_pipeline():
    """SD3.5-medium sizes, random weights: MMDiT-X transformer, CLIP-L + CLIP-G, 16-channel VAE, no T5."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)

    return StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**SD35_MEDIUM_TRANSFORMER),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=AutoencoderKL(**SD3_VAE), text_encoder=clip_encoder(CLIP_L, True), tokenizer=byte_level_clip_tokenizer(),
        text_encoder_2=clip_encoder(CLIP_G, True), tokenizer_2=byte_level_clip_tokenizer(),
        text_encoder_3=None, tokenizer_3=None)


def real_sd15_pipeline():
    """SD1.5 sizes, random weights: 860M UNet, CLIP-L text encoder, 4-channel VAE, DDIM."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE), text_encoder=clip_encoder(CLIP_L, False), tokenizer=byte_level_clip_tokenizer(),
        unet=UNet2DConditionModel(**SD15_UNET), scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def real_flux_pipeline():
    """FLUX.1-dev sizes, random weights: 12B transformer with guidance embedding, CLIP-L, T5-XXL encoder,
    16-channel VAE, dynamically shifted flow-matching scheduler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    return FluxPipeline(
        transformer=FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER), scheduler=FlowMatchEulerDiscreteScheduler(
            **FLUX_SCHEDULER), vae=AutoencoderKL(**FLUX_VAE), text_encoder=clip_encoder(CLIP_L, False),
        tokenizer=byte_level_clip_tokenizer(), text_encoder_2=T5EncoderModel(T5Config(**T5_XXL)),
        tokenizer_2=unigram_t5_tokenizer())


def real_qwenimage_models() -> dict:
    """Qwen-Image sizes, random weights: 20B transformer, Qwen2.5-VL-7B text encoder, the Qwen-Image VAE."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration as QwenVL

    return {"transformer": QwenImageTransformer2DModel(**QWEN_IMAGE),
            "text_encoder": QwenVL(QwenVL.config_class.from_dict(QWEN25_VL_7B)),
            "vae": AutoencoderKLQwenImage(**QWEN_IMAGE_VAE)}


def real_qwenimage_pipeline():
    """:func:`real_qwenimage_models` over the tiny byte-level tokenizer's ids, with Qwen-Image's
    exponentially shifted flow-matching scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    from tools.tiny_qwen_image import byte_level_qwen_tokenizer

    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
        max_image_seq_len=8192, time_shift_type="exponential", shift_terminal=0.02)
    return QwenImagePipeline(scheduler=scheduler, tokenizer=byte_level_qwen_tokenizer(), **real_qwenimage_models())


def real_wan_models() -> dict:
    """Wan 2.1 T2V 1.3B sizes, random weights: transformer, UMT5-XXL encoder, Wan VAE."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    return {"transformer": WanTransformer3DModel(**WAN21_1_3B),
            "text_encoder": UMT5EncoderModel(UMT5Config(**UMT5_XXL)), "vae": AutoencoderKLWan(**WAN_VAE)}


def real_wan_pipeline():
    """:func:`real_wan_models` with the T5-style tokenizer and the hub checkpoint's UniPC flow
    scheduler (flow_shift 3)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    return WanPipeline(tokenizer=unigram_t5_tokenizer(), scheduler=scheduler, **real_wan_models())


BUILDERS = {("sd3", "real"): real_sd3_pipeline, ("sd15", "real"): real_sd15_pipeline,
            ("flux", "real"): real_flux_pipeline, ("sd3", "tiny"): tiny_sd3_pipeline,
            ("sd15", "tiny"): tiny_sd15_pipeline, ("flux", "tiny"): tiny_flux_pipeline,
            ("qwenimage", "real"): real_qwenimage_pipeline, ("qwenimage", "tiny"): tiny_qwenimage_pipeline,
            ("wan", "real"): real_wan_pipeline, ("wan", "tiny"): tiny_wan}
RESOLUTION = {"real": 512, "tiny": 32}
# Wan clips (height, width, frames): the config's 33 frames at 480x832; tiny: 16 px (8x VAE, 2x2 patches)
VIDEO = {"real": dict(height=480, width=832, num_frames=33), "tiny": dict(height=16, width=16, num_frames=5)}
