"""Per-GPU memory estimate of a training run, from parameter counts of models built on ``meta``.

Pure arithmetic over module shapes: nothing is allocated (models are built on the ``meta``
device). ``tools/memory_plan.py`` reads a config, builds the parts and prints :func:`plan`.

What is counted, per GPU (bytes):

- static parts, exact for the code as it is (checked against a real run in
  ``tests/test_memory_plan.py``): the denoiser's frozen weights and buffers (policy dtype), the
  trained tensors (float32 whatever the dtype, see ``policies/diffusers_common.make_trainable``),
  their gradients (float32), AdamW state (exp_avg + exp_avg_sq float32, plus a 4-byte step per
  tensor), the KL reference (LoRA: none, the adapters are switched off; full fine-tune with
  ``keep_reference``: a frozen copy in the policy dtype), the frozen text encoders and VAE, and
  the prompt embeddings held on the device;
- distribution: DDP (N > 1) adds gradient buckets (one float32 copy of the gradients, torch's
  default ``gradient_as_bucket_view=False``); FSDP divides the wrapped denoiser's weights,
  gradients and optimizer state by N and adds the unsharded working set of ~2 blocks
  (the block being computed plus the prefetched one, in the compute dtype);
- activations of one parent micro-batch with gradients: a rough estimate (see
  :func:`activation_bytes`). Not counted: the CUDA context, allocator slack, NCCL buffers and
  the transient no-grad forwards of sampling and of the KL reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks")  # SD3 / FLUX / Qwen-Image, Wan
# Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models": a
# transformer layer keeps ~34 * s * b * h bytes of 2-byte activations for backward (without the
# attention-score term 5 * a * s^2 * b, which fused SDPA / flash attention never stores).
BYTES_PER_TOKEN_HIDDEN_16BIT = 34


def build_on_meta(cls, config: dict) -> nn.Module:
    """A diffusers (``from_config``) or transformers (``cls(config_class.from_dict(config))``)
    model with every tensor on the ``meta`` device: shapes and dtypes, no memory."""
    with torch.device("meta"):
        if hasattr(cls, "from_config"):
            return cls.from_config(dict(config))
        return cls(cls.config_class.from_dict(dict(config)))


def tensor_bytes(tensor: torch.Tensor, dtype_bytes: int) -> int:
    """Bytes of ``tensor`` once loaded in a pipeline of ``dtype_bytes``: floating tensors take
    the pipeline dtype, others (position ids) keep their own element size."""
    size = dtype_bytes if tensor.is_floating_point() else tensor.element_size()
    return tensor.numel() * size


def module_bytes(module: nn.Module, dtype_bytes: int) -> int:
    """Parameters plus buffers of ``module`` loaded in ``dtype_bytes``."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(tensor_bytes(t, dtype_bytes) for t in tensors)


def lora_targets(denoiser: nn.Module, target_modules) -> list[nn.Linear]:
    """The ``nn.Linear`` modules that peft adapts for ``target_modules`` (a module name equal to a
    target or ending in ``.<target>``)."""
    targets = list(target_modules)
    return [module for name, module in denoiser.named_modules() if isinstance(module, nn.Linear)
            and any(name == t or name.endswith("." + t) for t in targets)]


def lora_size(denoiser: nn.Module, rank: int, target_modules) -> tuple[int, int]:
    """(parameters, tensors) of LoRA adapters of ``rank``: A [r, in] and B [out, r] per target."""
    layers = lora_targets(denoiser, target_modules)
    if not layers:
        raise ValueError(f"no nn.Linear of the denoiser matches lora.target_modules={list(target_modules)}: "
                         "name modules as peft does (e.g. 'to_q', 'attn.to_k')")
    return sum(rank * (m.in_features + m.out_features) for m in layers), 2 * len(layers)


def transformer_blocks(denoiser: nn.Module) -> list[nn.Module]:
    """The repeated blocks of an SD3 / FLUX / Qwen-Image (double- and single-stream) or Wan transformer."""
    blocks = [b for attr in BLOCK_LISTS for b in getattr(denoiser, attr, [])]
    if not blocks:
        raise ValueError(f"{type(denoiser).__name__} has no {' / '.join(BLOCK_LISTS)}: the activation "
                         "estimate covers transformer denoisers (SD3, FLUX, Qwen-Image, Wan), not UNets")
    return blocks


def video_tokens(num_frames: int, height: int, width: int, temporal: int, spatial: int,
                 patch: tuple[int, int, int]) -> tuple[int, int]:
    """(latent frames, transformer tokens) of one video of ``num_frames`` x ``height`` x ``width``
    pixels: a causal video VAE keeps the first frame and compresses the rest ``temporal``-fold,
    ``(F - 1) // temporal + 1`` latent frames of ``height / spatial`` x ``width / spatial``; the
    transformer cuts them into ``patch`` = (t, h, w) patches, one token each."""
    frames = (num_frames - 1) // temporal + 1
    return frames, (frames // patch[0]) * (height // spatial // patch[1]) * (width // spatial // patch[2])


def activation_bytes(blocks: int, hidden: int, tokens: int, rows: int, elem_bytes: int,
                     checkpointing: bool) -> int:
    """Rough activations kept for backward by one forward of ``rows`` model rows of ``tokens``
    tokens (image + text) through ``blocks`` blocks of width ``hidden``.

    Without checkpointing every block keeps ``34 * tokens * hidden`` bytes per row at 2-byte
    activations (``BYTES_PER_TOKEN_HIDDEN_16BIT``; scaled by ``elem_bytes / 2``). With gradient
    checkpointing each block keeps only its input (``tokens * hidden`` elements per row) and one
    block's full activations exist again while it is recomputed in backward."""
    one_block = BYTES_PER_TOKEN_HIDDEN_16BIT * rows * tokens * hidden * elem_bytes // 2
    if checkpointing:
        return blocks * rows * tokens * hidden * elem_bytes + one_block
    return blocks * one_block


@dataclass
class ModelParts:
    """A policy's modules on ``meta`` plus its token counts.

    denoiser: the bare denoiser (no adapters); frozen: text encoders and VAE by name;
    image_tokens / text_tokens: sequence lengths the transformer sees per row;
    embed_elements: elements of one prompt's cached embeddings (token embeddings + pooled)."""

    denoiser: nn.Module
    frozen: dict[str, nn.Module]
    image_tokens: int
    text_tokens: int
    embed_elements: int


@dataclass
class RunShape:
    """What the config decides about memory. rows: model rows of one parent micro-batch (CFG
    counted twice); act_bytes: 2 under bf16 / fp16 autocast, else 4; cached_prompts: prompt
    embeddings on the device."""

    dtype_bytes: int
    lora: dict | None
    keep_reference: bool
    gradient_checkpointing: bool
    rows: int
    act_bytes: int
    cached_prompts: int


@dataclass
class Line:
    name: str
    bytes: int
    note: str = ""


def trained_size(parts: ModelParts, run: RunShape) -> tuple[int, int]:
    """(parameters, tensors) trained: the LoRA adapters, or every denoiser parameter."""
    if run.lora is not None:
        return lora_size(parts.denoiser, run.lora["r"], run.lora["target_modules"])
    params = list(parts.denoiser.parameters())
    return sum(p.numel() for p in params), len(params)


def plan(parts: ModelParts, run: RunShape, gpus: int, strategy: str) -> list[Line]:
    """Per-GPU memory lines of one training process (see the module docstring)."""
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus must be a positive integer, got {gpus!r}")
    shards = gpus if strategy == "fsdp" else 1
    shard_note = f"/ {shards} (FSDP shard)" if shards > 1 else ""
    trained, tensors = trained_size(parts, run)
    denoiser = parts.denoiser
    buffers = sum(tensor_bytes(b, run.dtype_bytes if run.lora is not None else 4) for b in denoiser.buffers())
    if run.lora is not None:
        frozen_weights = sum(tensor_bytes(p, run.dtype_bytes) for p in denoiser.parameters())
        frozen_note = "base weights in the policy dtype (+ buffers, not sharded)"
    else:
        frozen_weights, frozen_note = 0, "float32 buffers only, not sharded (every weight is trained)"
    lines = [
        Line("denoiser, frozen", math.ceil(frozen_weights / shards) + buffers,
             f"{frozen_note} {shard_note}" if run.lora is not None else frozen_note),
        Line("trained tensors (float32)", math.ceil(4 * trained / shards), f"{trained:,} parameters {shard_note}"),
        Line("gradients (float32)", math.ceil(4 * trained / shards), shard_note),
        Line("AdamW state (float32)", math.ceil((8 * trained + 4 * tensors) / shards),
             f"exp_avg + exp_avg_sq + a step per tensor {shard_note}"),
    ]
    if strategy == "ddp" and gpus > 1:
        lines.append(Line("DDP gradient buckets", 4 * trained, "a float32 copy of the gradients"))
    if strategy == "fsdp" and gpus > 1:
        largest = max(sum(p.numel() for p in b.parameters()) for b in transformer_blocks(denoiser))
        lines.append(Line("FSDP unsharded blocks", 2 * largest * run.act_bytes,
                          "~2 blocks gathered (compute + prefetch) in the compute dtype; estimate"))
    reference = module_bytes(denoiser, run.dtype_bytes) if run.lora is None and run.keep_reference else 0
    lines.append(Line("KL reference", reference, "frozen copy (policy dtype), not sharded" if reference
                      else "none (LoRA: adapters switched off)" if run.lora is not None else "none"))
    for name, module in parts.frozen.items():
        lines.append(Line(name, module_bytes(module, run.dtype_bytes), "frozen, policy dtype, not wrapped"))
    per_prompt = parts.embed_elements * run.dtype_bytes
    lines.append(Line("prompt embeddings", run.cached_prompts * per_prompt,
                      f"{run.cached_prompts} prompts x {per_prompt / 2**20:.2f} MiB"))
    blocks = transformer_blocks(denoiser)
    config = denoiser.config
    hidden = config.num_attention_heads * config.attention_head_dim
    tokens = parts.image_tokens + parts.text_tokens
    act = activation_bytes(len(blocks), hidden, tokens, run.rows, run.act_bytes, run.gradient_checkpointing)
    lines.append(Line("activations (estimate)", act,
                      f"{run.rows} rows x {tokens} tokens x {hidden} wide x {len(blocks)} blocks, "
                      f"checkpointing {'on' if run.gradient_checkpointing else 'off'}"))
    return lines


def total(lines: list[Line]) -> int:
    return sum(line.bytes for line in lines)
