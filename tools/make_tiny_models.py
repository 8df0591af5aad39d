"""Write tiny random-weight diffusers pipelines to disk, for offline tests and dry runs.

    python tools/make_tiny_models.py --out work_dirs/tiny_models   # <out>/sd3, sd15, flux, flux_kontext, qwenimage, wan, clip_reward
    python tools/train.py configs/... --cfg-options policy.model_path=work_dirs/tiny_models/sd3

``clip_reward`` is a transformers CLIPModel folder with its tokenizer, usable wherever the
CLIP-family rewards take a converted checkpoint or a model folder (HPSv2 ``checkpoint`` and
``clip_path``, CLIPScore / PickScore ``model``), plus ``aesthetic_mlp.safetensors`` for Aesthetic.

The models have the real architectures (same classes, configs and file layout as the hub
checkpoints) at toy sizes, so every loading path runs without a download. No weights are trained.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def byte_characters() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE: printable bytes map to themselves, the
    others to code points from 256 upwards, in byte order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def byte_level_clip_tokenizer(max_length: int = 77):
    """A CLIP tokenizer over single bytes (514 tokens, no merges): works with no vocab download."""
    from transformers import CLIPTokenizer

    chars = byte_characters()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_clip_text_encoder(vocab_size: int, hidden: int, seed: int, projection: bool = True):
    """A 2-layer CLIP text encoder over the byte-level vocabulary (with a text projection, as SD3's
    encoders, or without, as SD1.x's and FLUX's CLIP)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                            projection_dim=hidden, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                            pad_token_id=vocab_size - 1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def tiny_flow_vae(seed: int, shift_factor: float, scaling_factor: float):
    """A 2-block AutoencoderKL with 16 latent channels and no quant convs (the SD3 / FLUX layout)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=16, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=shift_factor, scaling_factor=scaling_factor,
    )


def tiny_sd3_pipeline(seed: int = 0):
    """A StableDiffusion3Pipeline with random weights: 2 tiny CLIP text encoders (no T5),
    a 2-layer SD3 transformer and a 2-block VAE with 16 latent channels."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)

    tokenizer = byte_level_clip_tokenizer()
    vocab = len(tokenizer)
    encoder_1 = tiny_clip_text_encoder(vocab, 32, seed)
    encoder_2 = tiny_clip_text_encoder(vocab, 32, seed + 1)
    torch.manual_seed(seed + 2)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
        pooled_projection_dim=64, out_channels=16, pos_embed_max_size=16,
    )
    vae = tiny_flow_vae(seed + 3, shift_factor=0.0609, scaling_factor=1.5035)  # SD3's factors
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae,
        text_encoder=encoder_1, tokenizer=tokenizer, text_encoder_2=encoder_2,
        tokenizer_2=byte_level_clip_tokenizer(), text_encoder_3=None, tokenizer_3=None,
    )


def tiny_sd15_pipeline(seed: int = 0):
    """A StableDiffusionPipeline (SD1.x layout) with random weights: a tiny CLIP text encoder,
    a 2-level UNet2DConditionModel, a 4-channel VAE and a DDIM scheduler; no safety checker."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = byte_level_clip_tokenizer()
    vocab = len(tokenizer)
    text_encoder = tiny_clip_text_encoder(vocab, 32, seed, projection=False)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        norm_num_groups=8, attention_head_dim=2,
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=16,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def unigram_t5_tokenizer(max_length: int = 512):
    """A T5 tokenizer (SentencePiece-style Unigram, built offline with ``tokenizers``): pad 0,
    eos 1, unk 2, the word-start mark, and single characters with and without it. Appends ``</s>``."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    mark = "\u2581"  # SentencePiece's word-start symbol
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (mark, -2.0)]
    pieces += [(mark + c, -2.5) for c in chars] + [(c, -3.0) for c in chars]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=mark, prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement=mark, prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=max_length)


def tiny_flux_pipeline(seed: int = 0):
    """A FluxPipeline (FLUX.1-dev layout) with random weights: a tiny CLIP text encoder (pooled
    prompt vector), a tiny T5 encoder (token embeddings), a FluxTransformer2DModel with 1 double-
    and 1 single-stream block and a guidance embedding, a 2-block VAE with 16 latent channels
    (FLUX's scaling/shift factors) and FLUX's dynamically shifted flow-matching scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = byte_level_clip_tokenizer()
    vocab = len(tokenizer)
    text_encoder = tiny_clip_text_encoder(vocab, 32, seed, projection=False)
    tokenizer_2 = unigram_t5_tokenizer()
    torch.manual_seed(seed + 1)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0)).eval()
    torch.manual_seed(seed + 2)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )
    vae = tiny_flow_vae(seed + 3, shift_factor=0.1159, scaling_factor=0.3611)  # FLUX's factors
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
    )


class TinyClipReward:
    """A tiny random CLIPModel + byte-level tokenizer + an aesthetic MLP on its embeddings."""

    def __init__(self, seed: int = 0) -> None:
        from transformers import CLIPConfig, CLIPModel

        from treegrpo.rewards.clip_convert import AestheticMLP

        self.tokenizer = byte_level_clip_tokenizer()
        vocab = len(self.tokenizer)
        text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab - 2,
                    eos_token_id=vocab - 1, pad_token_id=vocab - 1)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      image_size=32, patch_size=8)
        torch.manual_seed(seed)
        self.model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
        torch.manual_seed(seed + 1)
        self.aesthetic = AestheticMLP(dim=16)

    def save_pretrained(self, path, safe_serialization: bool = True) -> None:
        from safetensors.torch import save_file

        self.model.save_pretrained(path, safe_serialization=safe_serialization)
        self.tokenizer.save_pretrained(path)
        save_file(self.aesthetic.state_dict(), str(Path(path) / "aesthetic_mlp.safetensors"))


def tiny_qwenimage_pipeline(seed: int = 0):
    """A QwenImagePipeline with random weights (built in tools/tiny_qwen_image.py)."""
    from tools.tiny_qwen_image import tiny_qwen_image_pipeline

    return tiny_qwen_image_pipeline(seed)


def tiny_wan(seed: int = 0):
    """The tiny Wan 2.1 text-to-video pipeline of :mod:`tools.tiny_wan`."""
    from tools.tiny_wan import tiny_wan_pipeline

    return tiny_wan_pipeline(seed)


def tiny_flux_kontext(seed: int = 0):
    """The tiny FLUX.1 Kontext pipeline of :mod:`tools.tiny_flux_kontext`."""
    from tools.tiny_flux_kontext import tiny_flux_kontext_pipeline

    return tiny_flux_kontext_pipeline(seed)


BUILDERS = {"sd3": tiny_sd3_pipeline, "sd15": tiny_sd15_pipeline, "flux": tiny_flux_pipeline,
            "flux_kontext": tiny_flux_kontext,
            "qwenimage": tiny_qwenimage_pipeline, "wan": tiny_wan, "clip_reward": TinyClipReward}


def main(argv=None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="work_dirs/tiny_models")
    parser.add_argument("--models", nargs="+", choices=sorted(BUILDERS), default=sorted(BUILDERS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    written = {}
    for name in args.models:
        path = Path(args.out) / name
        BUILDERS[name](args.seed).save_pretrained(path, safe_serialization=True)
        written[name] = path
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
