"""Estimate per-GPU memory of a training run before renting the GPUs.

    python tools/memory_plan.py configs/treegrpo_sd3_hps.py --gpus 8 --strategy ddp
    python tools/memory_plan.py configs/treegrpo_flux_hps.py --gpus 8 --strategy fsdp \\
        --cfg-options policy.lora=None policy.keep_reference=True      # full fine-tune

Nothing is downloaded or allocated: every model is built on the ``meta`` device from its config,
either read from a local diffusers folder (``policy.model_path`` with ``model_index.json``, e.g.
the tiny models of tools/make_tiny_models.py) or, for the hub ids in ``KNOWN_MODELS``, from the
public config values written below. The arithmetic and what it leaves out are documented in
treegrpo/memory_plan.py; the activation line is a rough estimate, the other lines are exact for
the code as it is (tests/test_memory_plan.py checks them against a real run on the tiny SD3).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mmengine.config import DictAction  # noqa: E402

from treegrpo import memory_plan as mp  # noqa: E402
from treegrpo.inference import load_config  # noqa: E402
from treegrpo.registry import POLICIES, resolve_type  # noqa: E402

# Public config values (config.json of each component in the hub repos named below).
# CLIP-L: openai/clip-vit-large-patch14 text tower (SD3 text_encoder, FLUX text_encoder);
# CLIP-G: OpenCLIP ViT-bigG text tower (SD3 text_encoder_2); T5: google/t5-v1_1-xxl encoder.
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
              num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
VAE_16CH = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512],
                layers_per_block=2, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32, use_quant_conv=False,
                use_post_quant_conv=False)
SD3_COMMON = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64,
                  joint_attention_dim=4096, pooled_projection_dim=2048)
# stabilityai/stable-diffusion-3.5-medium transformer/config.json (MMDiT-X, 2.47B)
SD35_MEDIUM = dict(SD3_COMMON, num_layers=24, num_attention_heads=24, caption_projection_dim=1536,
                   pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=list(range(13)))
# stabilityai/stable-diffusion-3.5-large transformer/config.json (8.1B)
SD35_LARGE = dict(SD3_COMMON, num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                  pos_embed_max_size=192, qk_norm="rms_norm")
# stabilityai/stable-diffusion-3-medium-diffusers transformer/config.json (2.03B)
SD3_MEDIUM = dict(SD3_COMMON, num_layers=24, num_attention_heads=24, caption_projection_dim=1536,
                  pos_embed_max_size=192)
# black-forest-labs/FLUX.1-dev transformer/config.json (19 double + 38 single blocks, 11.9B)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                guidance_embeds=True, axes_dims_rope=[16, 56, 56])
# Qwen/Qwen-Image: transformer/config.json (60 blocks, 20.4B), text_encoder/config.json
# (Qwen2.5-VL-7B-Instruct with its vision tower and LM head, as the pipeline loads it), vae/.
QWEN_IMAGE = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                  axes_dims_rope=[16, 56, 56])
QWEN25_VL_7B = dict(
    text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                     rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[16, 24, 24])),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31]))
QWEN_IMAGE_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                      temperal_downsample=[False, True, True])
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers and Wan2.1-T2V-14B-Diffusers: transformer/config.json (30 blocks of
# width 1536, 1.4B; 40 blocks of width 5120, 14B), text_encoder/config.json (UMT5-XXL encoder), vae/
# (the same AutoencoderKLWan sizes as Qwen-Image's: 8x spatial, 4x temporal compression).
WAN21 = dict(patch_size=[1, 2, 2], attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
             freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN21_1_3B = dict(WAN21, num_attention_heads=12, ffn_dim=8960, num_layers=30)
WAN21_14B = dict(WAN21, num_attention_heads=40, ffn_dim=13824, num_layers=40)
UMT5_XXL = dict(T5_XXL, vocab_size=256384)
WAN_VAE = QWEN_IMAGE_VAE


def _wan(transformer: dict) -> dict:
    return {"transformer": ("diffusers", "WanTransformer3DModel", transformer),
            "text_encoder": ("transformers", "UMT5EncoderModel", UMT5_XXL),
            "vae": ("diffusers", "AutoencoderKLWan", WAN_VAE)}


def _sd3(transformer: dict) -> dict:
    return {"transformer": ("diffusers", "SD3Transformer2DModel", transformer),
            "text_encoder": ("transformers", "CLIPTextModelWithProjection", CLIP_L),
            "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", CLIP_G),
            "text_encoder_3": ("transformers", "T5EncoderModel", T5_XXL),
            "vae": ("diffusers", "AutoencoderKL", VAE_16CH)}


KNOWN_MODELS = {
    "stabilityai/stable-diffusion-3.5-medium": _sd3(SD35_MEDIUM),
    "stabilityai/stable-diffusion-3.5-large": _sd3(SD35_LARGE),
    "stabilityai/stable-diffusion-3-medium-diffusers": _sd3(SD3_MEDIUM),
    "black-forest-labs/FLUX.1-dev": {
        "transformer": ("diffusers", "FluxTransformer2DModel", FLUX_DEV),
        "text_encoder": ("transformers", "CLIPTextModel", CLIP_L),
        "text_encoder_2": ("transformers", "T5EncoderModel", T5_XXL),
        "vae": ("diffusers", "AutoencoderKL", VAE_16CH)},
    "Qwen/Qwen-Image": {
        "transformer": ("diffusers", "QwenImageTransformer2DModel", QWEN_IMAGE),
        "text_encoder": ("transformers", "Qwen2_5_VLForConditionalGeneration", QWEN25_VL_7B),
        "vae": ("diffusers", "AutoencoderKLQwenImage", QWEN_IMAGE_VAE)},
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": _wan(WAN21_1_3B),
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": _wan(WAN21_14B),
}
FAMILIES = {"SD3Policy": ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"),
            "FluxPolicy": ("text_encoder", "text_encoder_2", "vae"),
            "QwenImagePolicy": ("text_encoder", "vae"), "WanPolicy": ("text_encoder", "vae")}
DEFAULT_LORA_TARGETS = {"FluxPolicy": ("treegrpo.policies.flux", "FLUX_LORA_TARGETS"),
                        "QwenImagePolicy": ("treegrpo.policies.qwen_image", "QWEN_IMAGE_LORA_TARGETS")}


def component_specs(model_path: str) -> dict[str, tuple[str, str, dict]]:
    """{component: (library, class name, config dict)} of a local diffusers folder or a known hub id."""
    folder = Path(model_path).expanduser()
    if (folder / "model_index.json").is_file():
        index = json.loads((folder / "model_index.json").read_text())
        specs = {}
        for name, entry in index.items():
            if isinstance(entry, list) and entry[0] in ("diffusers", "transformers") and (folder / name / "config.json").is_file():
                specs[name] = (entry[0], entry[1], json.loads((folder / name / "config.json").read_text()))
        return specs
    if model_path in KNOWN_MODELS:
        return KNOWN_MODELS[model_path]
    raise ValueError(f"policy.model_path={model_path!r} is neither a local diffusers folder (with model_index.json) "
                     f"nor a known hub id ({sorted(KNOWN_MODELS)}): download it or pass "
                     "--cfg-options policy.model_path=<local folder>")


def build_component(library: str, class_name: str, config: dict):
    import diffusers
    import transformers

    cls = getattr(diffusers if library == "diffusers" else transformers, class_name)
    return mp.build_on_meta(cls, config)


def policy_settings(policy_cfg: dict) -> dict:
    """The policy's arguments: the config's values over the class's defaults."""
    cls = resolve_type(POLICIES, policy_cfg["type"])
    if cls.__name__ not in FAMILIES:
        raise ValueError(f"policy.type={policy_cfg['type']!r}: the memory plan covers {sorted(FAMILIES)} "
                         "(transformer denoisers)")
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **{k: v for k, v in policy_cfg.items()}, "family": cls.__name__}


def model_parts(settings: dict) -> mp.ModelParts:
    """Denoiser and frozen parts on meta plus token counts at ``settings['resolution']``."""
    specs = component_specs(str(settings["model_path"]))
    names = [n for n in FAMILIES[settings["family"]] if n in specs]
    if settings["family"] == "SD3Policy" and not settings.get("use_t5", True):
        names = [n for n in names if n != "text_encoder_3"]
    denoiser = build_component(*specs["transformer"])
    frozen = {n: build_component(*specs[n]) for n in names}
    config = denoiser.config
    vae = frozen["vae"].config
    downscale = 2 ** (len(vae.temperal_downsample) if "temperal_downsample" in vae else len(vae.block_out_channels) - 1)
    if settings["family"] == "WanPolicy":  # video: the latent frames multiply the tokens
        temporal = 2 ** sum(bool(t) for t in vae.temperal_downsample)
        _, image_tokens = mp.video_tokens(settings["num_frames"], settings["height"], settings["width"],
                                          temporal, downscale, tuple(config.patch_size))
        text_tokens = settings["max_sequence_length"]  # cross-attention keys, cached [L, text_dim] per prompt
        return mp.ModelParts(denoiser, frozen, image_tokens, text_tokens, text_tokens * config.text_dim)
    side = settings["resolution"] // downscale
    if settings["family"] == "SD3Policy":
        image_tokens = (side // config.patch_size) ** 2
        text_tokens = frozen["text_encoder"].config.max_position_embeddings + settings["max_sequence_length"]
    else:  # FLUX and Qwen-Image pack 2x2 latent patches
        image_tokens = (side // 2) ** 2
        text_tokens = settings["max_sequence_length"]
    # cached per prompt: token embeddings plus FLUX / SD3's pooled vector or Qwen-Image's token mask
    extra = config.pooled_projection_dim if "pooled_projection_dim" in config else text_tokens
    embed = text_tokens * config.joint_attention_dim + extra
    return mp.ModelParts(denoiser, frozen, image_tokens, text_tokens, embed)


def parents_per_micro_batch(cfg, gpus: int) -> tuple[int, str]:
    """Parents of the largest micro-batch one rank sends through the model with gradients."""
    prompts = int(cfg.prompts_per_iter)
    if prompts % gpus:
        raise ValueError(f"prompts_per_iter={prompts} must be divisible by --gpus {gpus} (as in training): "
                         f"pass e.g. --cfg-options prompts_per_iter={gpus * -(-prompts // gpus)}")
    per_rank = prompts // gpus
    update = {"num_minibatches": 1, "micro_batch_size": 64, "per_step_batches": False, **cfg.get("update", {})}
    depth = int(cfg.schedule.get("depth", 1))
    if cfg.sampler["type"] == "TreeSampler":
        k = cfg.schedule.get("k", 2)  # an int, or one int per depth
        ks = [int(v) for v in k] if isinstance(k, (list, tuple)) else [int(k)] * depth
        widths = [math.prod(ks[:level]) for level in range(depth)]  # parents of one tree per depth
        all_parents, step_group = sum(widths), max(widths)
    else:  # flat: G chains, one parent per chain and window step
        group = int(cfg.sampler.get("group_size", 8))
        all_parents, step_group = group * depth, group
    size = int(update["micro_batch_size"])
    if update["per_step_batches"]:
        return min(per_rank * step_group, size), (
            f"largest step group ({per_rank} prompts x {step_group}) cut to micro_batch_size={size}")
    minibatch = -(-per_rank * all_parents // int(update["num_minibatches"]))
    return min(minibatch, size), f"{per_rank * all_parents} parents per rank, micro_batch_size={size}"


def make_plan(cfg, gpus: int, strategy: str, cached_prompts: int | None = None) -> dict:
    """The plan of ``cfg`` as a dict: lines (name, bytes, note), total, and how rows were set."""
    settings = policy_settings(dict(cfg.policy))
    parts = model_parts(settings)
    parents, how = parents_per_micro_batch(cfg, gpus)
    cfg_rows = 2 if float(cfg.sampler.get("guidance_scale", 1.0)) > 1.0 else 1
    dtype = mp.DTYPE_BYTES[settings["dtype"]]
    mixed = cfg.get("mixed_precision", "no")
    lora = settings["lora"]
    if lora is not None:
        lora = {"r": lora.get("r", 32), "target_modules": lora.get("target_modules", ("to_q", "to_k", "to_v", "to_out.0"))}
        if settings["family"] in DEFAULT_LORA_TARGETS and "target_modules" not in settings["lora"]:
            module, name = DEFAULT_LORA_TARGETS[settings["family"]]
            lora["target_modules"] = getattr(importlib.import_module(module), name)
    if cached_prompts is None:  # one iteration's prompts of this rank plus the negative prompt
        cached_prompts = int(cfg.prompts_per_iter) // gpus + (cfg_rows == 2)
    run = mp.RunShape(dtype_bytes=dtype, lora=lora, keep_reference=bool(settings["keep_reference"]),
                      gradient_checkpointing=bool(settings["gradient_checkpointing"]), rows=parents * cfg_rows,
                      act_bytes=2 if mixed in ("bf16", "fp16") else 4, cached_prompts=cached_prompts)
    lines = mp.plan(parts, run, gpus, strategy)
    return {"gpus": gpus, "strategy": strategy, "model_path": str(settings["model_path"]),
            "micro_batch": f"{parents} parents x {cfg_rows} (CFG) rows: {how}",
            "lines": [vars(line) for line in lines], "total_bytes": mp.total(lines),
            "per_prompt_embedding_bytes": parts.embed_elements * dtype,
            "trained_parameters": mp.trained_size(parts, run)[0],
            "denoiser_parameters": sum(p.numel() for p in parts.denoiser.parameters())}


def format_plan(result: dict) -> str:
    gib = 2**30
    rows = [f"{result['model_path']}: {result['gpus']} GPU(s), {result['strategy']}; "
            f"micro-batch {result['micro_batch']}"]
    rows += [f"  {line['name']:<28}{line['bytes'] / gib:9.2f} GiB  {line['note']}" for line in result["lines"]]
    rows.append(f"  {'total per GPU':<28}{result['total_bytes'] / gib:9.2f} GiB  (+ CUDA context and allocator "
                "slack, not counted)")
    return "\n".join(rows)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp")
    parser.add_argument("--cached-prompts", type=int, default=None,
                        help="prompt embeddings held on the GPU (default: one iteration's prompts per rank "
                             "+ the negative prompt)")
    parser.add_argument("--json", help="also write the plan to this JSON file")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    args = parser.parse_args(argv)
    if args.gpus < 1:
        parser.error(f"--gpus must be >= 1, got {args.gpus}")
    result = make_plan(load_config(args.config, args.cfg_options), args.gpus, args.strategy, args.cached_prompts)
    print(format_plan(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
