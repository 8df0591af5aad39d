"""FLUX.1-dev / FLUX.1-schnell policy on diffusers (flow matching, MMDiT + single-stream blocks).

Loads ``FluxPipeline`` from a hub id or a local folder. The CLIP and T5 text encoders and the VAE
are frozen; the transformer is the trained denoiser (LoRA adapters through peft, or all weights).

Latents in the policy interface are the VAE's UNPACKED ``[16, H/8, W/8]`` grid, so kernels,
samplers and the update see the same layout as SD3. ``model_output`` packs them into FLUX's
sequence of 2x2 patches ``[B, (H/16)(W/16), 64]``, builds the rotary position ids, runs the
transformer and unpacks the prediction. Levels are the pipeline's sigmas 1 -> 0, shifted by the
resolution-dependent ``mu`` exactly as ``FluxPipeline.__call__`` computes it.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from ..embedding_cache import DEFAULT_CACHE_SIZE
from ..registry import POLICIES
from .diffusers_common import DiffusersPolicy, decode_latents, freeze, load_pipeline, make_trainable

# Flow-GRPO's FLUX LoRA targets: attention and MLPs of the double-stream blocks; the q/k/v
# projections also match inside the single-stream blocks.
FLUX_LORA_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] (H, W even) -> [B, (H/2)(W/2), 4C]: row-major 2x2 patches, each patch's
    features ordered (channel, dy, dx) as FLUX expects."""
    b, c, h, w = latents.shape
    patches = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: [B, (H/2)(W/2), 4C] -> [B, C, H, W] (latent H, W)."""
    b, _, features = packed.shape
    grid = packed.reshape(b, height // 2, width // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(b, features // 4, height, width)


def image_position_ids(height: int, width: int) -> torch.Tensor:
    """[(H/2)(W/2), 3] float32 rotary ids of the packed patches: (0, row, column), row-major."""
    rows = torch.arange(height // 2, dtype=torch.float32)[:, None].expand(height // 2, width // 2)
    cols = torch.arange(width // 2, dtype=torch.float32)[None, :].expand(height // 2, width // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)


def dynamic_shift_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                     base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's resolution-dependent shift: linear in the packed sequence length, ``base_shift`` at
    ``base_seq_len`` tokens and ``max_shift`` at ``max_seq_len`` (512px: 1024 tokens -> 0.63)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    intercept = base_shift - slope * base_seq_len
    return image_seq_len * slope + intercept  # this order of operations gives FluxPipeline's float


def shifted_flow_sigmas(scheduler, num_steps: int, image_seq_len: int) -> torch.Tensor:
    """[T+1] sigmas as FluxPipeline and QwenImagePipeline set them: ``linspace(1, 1/T, T)`` (unless
    the scheduler makes its own flow sigmas) shifted with :func:`dynamic_shift_mu` of the packed
    sequence length (or the scheduler's static shift), then a final 0. ``scheduler`` is copied."""
    scheduler = copy.deepcopy(scheduler)
    config = scheduler.config
    sigmas = None if config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / num_steps, num_steps)
    mu = dynamic_shift_mu(image_seq_len, config.get("base_image_seq_len", 256),
                          config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                          config.get("max_shift", 1.15))
    scheduler.set_timesteps(num_steps, sigmas=sigmas, mu=mu)
    return scheduler.sigmas.float()


@POLICIES.register_module()
class FluxPolicy(DiffusersPolicy):
    """FLUX.1-dev / FLUX.1-schnell text-to-image policy.

    Guidance: FLUX.1-dev is guidance-distilled; its transformer takes the guidance strength as an
    input (``guidance``, 3.5 by default) and is normally run with ONE forward per step, i.e. the
    sampler's ``guidance_scale = 1``. A sampler ``guidance_scale > 1`` adds true classifier-free
    guidance on top (``Policy.predict`` doubles the batch with ``negative_prompt``; twice the
    NFE), like FluxPipeline's ``true_cfg_scale``. FLUX.1-schnell's transformer has no guidance
    embedding: ``guidance`` is then ignored and ``self.guidance`` is None.

    Args:
        model_path: hub id or local diffusers folder (e.g. black-forest-labs/FLUX.1-dev).
        resolution: image side in pixels; a multiple of 2 * vae_scale_factor (16 for FLUX).
        dtype: weights dtype ('float32' | 'bfloat16' | 'float16').
        lora: dict(r, alpha, target_modules) to train LoRA adapters (targets default to
            ``FLUX_LORA_TARGETS``); None trains all transformer weights.
        guidance: the distilled guidance value fed to FLUX.1-dev's guidance embedding.
        negative_prompt: the unconditional prompt of true CFG (sampler guidance_scale > 1).
        keep_reference: with full fine-tuning, keep a frozen copy for the KL term.
        compile_denoiser: torch.compile the denoiser (True, or a dict of compile options).
        gradient_checkpointing: trade compute for memory in the transformer.
        max_sequence_length: T5 tokens (at most 512; FLUX.1-schnell was trained with 256).
        cache_prompt_embeds: keep each prompt's embeddings after its first encoding.
        embedding_cache_size: prompts kept by that cache (least recently used dropped; on CPU).
        embedding_dir: folder of tools/precompute_embeddings.py shards read before encoding.
        device: where the pipeline lives.
    """

    kernel_type = "FlowMatchingKernel"
    pipeline_class = "FluxPipeline"  # the diffusers pipeline loaded (subclasses: FluxKontextPipeline)

    def __init__(self, model_path: str, resolution: int = 512, dtype: str = "float32",
                 lora: dict | None = None, guidance: float | None = 3.5, negative_prompt: str = "",
                 keep_reference: bool = False, gradient_checkpointing: bool = False,
                 max_sequence_length: int = 512, cache_prompt_embeds: bool = True,
                 embedding_cache_size: int = DEFAULT_CACHE_SIZE, embedding_dir: str | None = None,
                 compile_denoiser: bool | dict = False, device: str = "cpu") -> None:
        super().__init__()
        import diffusers

        if not isinstance(max_sequence_length, int) or not 1 <= max_sequence_length <= 512:
            raise ValueError(f"max_sequence_length must be an int in [1, 512], got {max_sequence_length!r}")
        if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))
                                     or guidance < 0):
            raise ValueError(f"guidance must be a number >= 0 or None, got guidance={guidance!r}")
        pipe = load_pipeline(getattr(diffusers, self.pipeline_class), model_path, dtype)
        patch = 2 * pipe.vae_scale_factor
        if not isinstance(resolution, int) or resolution < patch or resolution % patch:
            raise ValueError(f"resolution must be a positive multiple of {patch} (2 x the VAE's "
                             f"downscale, for FLUX's 2x2 patches), got resolution={resolution!r}")
        freeze(pipe.text_encoder, pipe.text_encoder_2, pipe.vae)
        self.pipe = pipe
        # registered as submodules so that policy.to(device) moves the text encoders too
        self.text_encoder, self.text_encoder_2 = pipe.text_encoder, pipe.text_encoder_2
        self.vae = pipe.vae
        self.denoiser = pipe.transformer
        if self.denoiser.config.guidance_embeds:
            if guidance is None:
                raise ValueError("guidance must be a number for a guidance-distilled FLUX "
                                 "(FLUX.1-dev: the transformer has a guidance embedding), got None")
            self.guidance = float(guidance)
        else:
            self.guidance = None  # FLUX.1-schnell: no guidance embedding, the value is ignored
        if lora is not None:
            lora = {"target_modules": FLUX_LORA_TARGETS, **lora}
        make_trainable(self, lora, keep_reference, gradient_checkpointing, default_rank=32,
                       compile_denoiser=compile_denoiser)
        side = resolution // pipe.vae_scale_factor
        self.latent_shape = (self.denoiser.config.in_channels // 4, side, side)
        self.image_seq_len = (side // 2) ** 2
        self.set_prompt_settings(model_path, negative_prompt, cache_prompt_embeds, embedding_cache_size,
                                 embedding_dir)
        self.max_sequence_length = max_sequence_length
        self.to(device)

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """prompt_embeds [P, L, D_t5] (T5 tokens), pooled [P, D_clip] (CLIP pooled output)."""
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, device=self.device,
            max_sequence_length=self.max_sequence_length)
        return {"prompt_embeds": embeds, "pooled": pooled}

    def noise_levels(self, num_steps: int) -> torch.Tensor:
        """[T+1] sigmas of FluxPipeline at this resolution (:func:`shifted_flow_sigmas`)."""
        return shifted_flow_sigmas(self.pipe.scheduler, num_steps, self.image_seq_len)

    def timestep_and_guidance(self, level, batch: int, device, dtype):
        """The transformer's timestep [B] (FluxPipeline passes sigma * num_train_timesteps cast to
        the latents' dtype, / 1000) and guidance [B] float32 (None without a guidance embedding)."""
        timestep = (level.to(device).float() * self.pipe.scheduler.config.num_train_timesteps).to(dtype) / 1000
        guidance = None
        if self.guidance is not None:
            guidance = torch.full((batch,), self.guidance, dtype=torch.float32, device=device)
        return timestep, guidance

    def model_output(self, latents, level, cond, model=None):
        """latents [B, C, H, W], level [B] (sigmas) -> velocity [B, C, H, W] (model dtype)."""
        net = self.denoiser if model is None else model
        dtype = self.denoiser.dtype
        batch, _, height, width = latents.shape
        device = latents.device
        timestep, guidance = self.timestep_and_guidance(level, batch, device, dtype)
        embeds = cond["prompt_embeds"].to(dtype)
        packed = net(
            hidden_states=pack_latents(latents.to(dtype)), timestep=timestep, guidance=guidance,
            pooled_projections=cond["pooled"].to(dtype), encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, dtype=dtype, device=device),
            img_ids=image_position_ids(height, width).to(device=device, dtype=dtype),
            return_dict=False,
        )[0]
        return unpack_latents(packed, height, width)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, 16, h, w] -> images [B, 3, h * vae_scale_factor, ...] in [0, 1]."""
        return decode_latents(self.vae, latents)
