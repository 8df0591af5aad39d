"""Qwen-Image policy on diffusers (flow matching, 20B MMDiT, Qwen2.5-VL text encoder), LoRA or full.

Loads ``QwenImagePipeline`` from a hub id or a local folder. The Qwen2.5-VL text encoder and the
VAE are frozen; the transformer is the trained denoiser (LoRA adapters through peft, or all weights).

- Prompts go through the pipeline's own ``encode_prompt`` (chat template, template tokens dropped,
  last hidden state); each prompt's embeddings are zero-padded to ``max_sequence_length`` with a
  0/1 mask so that prompts of any length stack in one batch (and in the embedding cache). A forward
  trims the columns no row of the batch uses, so the transformer never sees more text than needed.
- Latents in the policy interface are the VAE's UNPACKED ``[16, H/8, W/8]`` grid (the VAE's frame
  axis dropped: one frame); ``model_output`` packs 2x2 patches as FLUX does.
- Levels are the pipeline's sigmas 1 -> 0 shifted with the resolution-dependent ``mu``.
- Classifier-free guidance (sampler ``guidance_scale > 1``) is the pipeline's ``true_cfg_scale``:
  the combined velocity is rescaled per token to the conditional prediction's norm.
"""
from __future__ import annotations

import torch

from ..embedding_cache import DEFAULT_CACHE_SIZE
from ..registry import POLICIES
from .diffusers_common import DiffusersPolicy, freeze, load_pipeline, make_trainable
from .flux import pack_latents, shifted_flow_sigmas, unpack_latents

# Attention projections of both streams and both streams' MLPs in every QwenImageTransformerBlock.
QWEN_IMAGE_LORA_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
)


def norm_rescaled_cfg(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Qwen-Image's true CFG on packed predictions [B, N, F]: ``g = u + scale * (c - u)``, then each
    token's vector rescaled to the conditional one's norm, ``g * |c| / |g|`` (norms over F)."""
    guided = uncond + scale * (cond - uncond)
    return guided * (cond.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))


def pad_text(embeds: torch.Tensor, mask: torch.Tensor | None, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """embeds [P, L, D] and mask [P, L] (None: all valid) -> both zero-padded (or cut) to ``length``
    tokens; the mask comes back as int64 0/1."""
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    embeds, mask = embeds[:, :length], mask[:, :length].long()
    extra = length - embeds.shape[1]
    if extra > 0:
        embeds = torch.cat([embeds, embeds.new_zeros(embeds.shape[0], extra, embeds.shape[2])], dim=1)
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)
    return embeds, mask


def trim_text(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drop the trailing columns that no row uses: [B, L, D], [B, L] -> [B, n, D], [B, n] with n the
    last used position + 1 (at least 1). The mask becomes None when every kept entry is valid (what
    the pipeline passes for unpadded prompts)."""
    used = mask.bool().any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    embeds, mask = embeds[:, :length], mask[:, :length]
    return embeds, (None if bool(mask.bool().all()) else mask)


@POLICIES.register_module()
class QwenImagePolicy(DiffusersPolicy):
    """Qwen-Image text-to-image policy.

    Args:
        model_path: hub id or local diffusers folder (e.g. Qwen/Qwen-Image).
        resolution: image side in pixels; a multiple of 2 * vae_scale_factor (16).
        dtype: weights dtype ('float32' | 'bfloat16' | 'float16').
        lora: dict(r, alpha, target_modules) to train LoRA adapters (targets default to
            ``QWEN_IMAGE_LORA_TARGETS``); None trains all transformer weights.
        negative_prompt: the unconditional prompt of true CFG (sampler guidance_scale > 1);
            Qwen-Image's examples use " ".
        keep_reference: with full fine-tuning, keep a frozen copy for the KL term.
        gradient_checkpointing: trade compute for memory in the transformer.
        max_sequence_length: text tokens kept per prompt after the template (1..1024, the
            pipeline's limit); also the padded length of the cached embeddings.
        cache_prompt_embeds / embedding_cache_size / embedding_dir: as for the other policies.
        compile_denoiser: torch.compile the denoiser (True, or a dict of compile options).
        device: where the pipeline lives.
    """

    kernel_type = "FlowMatchingKernel"

    def __init__(self, model_path: str, resolution: int = 512, dtype: str = "float32",
                 lora: dict | None = None, negative_prompt: str = " ", keep_reference: bool = False,
                 gradient_checkpointing: bool = False, max_sequence_length: int = 512,
                 cache_prompt_embeds: bool = True, embedding_cache_size: int = DEFAULT_CACHE_SIZE,
                 embedding_dir: str | None = None, compile_denoiser: bool | dict = False,
                 device: str = "cpu") -> None:
        super().__init__()
        try:
            from diffusers import QwenImagePipeline
        except ImportError:
            raise ImportError("QwenImagePolicy needs diffusers>=0.35 (QwenImagePipeline) and transformers "
                              "with Qwen2.5-VL (>=4.49): pip install -U diffusers transformers") from None

        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or not 1 <= max_sequence_length <= 1024:
            raise ValueError(f"max_sequence_length must be an int in [1, 1024] (QwenImagePipeline's "
                             f"limit), got max_sequence_length={max_sequence_length!r}")
        if not isinstance(negative_prompt, str):
            raise ValueError(f"negative_prompt must be a string (Qwen-Image's examples use ' '), "
                             f"got {negative_prompt!r}")
        pipe = load_pipeline(QwenImagePipeline, model_path, dtype)
        patch = 2 * pipe.vae_scale_factor
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < patch \
                or resolution % patch:
            raise ValueError(f"resolution must be a positive multiple of {patch} (2 x the VAE's "
                             f"downscale, for the 2x2 patches), got resolution={resolution!r}")
        if pipe.transformer.config.guidance_embeds:
            raise ValueError(f"{model_path!r} has a guidance-embedding transformer (guidance_embeds="
                             "True), which QwenImagePolicy does not drive: use a Qwen-Image checkpoint "
                             "without it (such as Qwen/Qwen-Image)")
        freeze(pipe.text_encoder, pipe.vae)
        self.pipe = pipe
        self.text_encoder, self.vae = pipe.text_encoder, pipe.vae  # submodules: policy.to() moves them
        self.denoiser = pipe.transformer
        if lora is not None:
            lora = {"target_modules": QWEN_IMAGE_LORA_TARGETS, **lora}
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
        """prompt_embeds [P, L, D] (L = max_sequence_length, zero-padded), prompt_mask [P, L] 0/1."""
        embeds, mask = self.pipe.encode_prompt(prompt=list(prompts), device=self.device,
                                               max_sequence_length=self.max_sequence_length)
        embeds, mask = pad_text(embeds, mask, self.max_sequence_length)
        return {"prompt_embeds": embeds, "prompt_mask": mask}

    def noise_levels(self, num_steps: int) -> torch.Tensor:
        """[T+1] sigmas of QwenImagePipeline at this resolution (:func:`shifted_flow_sigmas`, the
        same rule as FLUX's)."""
        return shifted_flow_sigmas(self.pipe.scheduler, num_steps, self.image_seq_len)

    def _packed_output(self, latents, level, cond, model=None) -> torch.Tensor:
        """latents [B, C, H, W], level [B] -> packed velocity [B, (H/2)(W/2), 4C] (model dtype)."""
        net = self.denoiser if model is None else model
        dtype = self.denoiser.dtype
        batch, _, height, width = latents.shape
        device = latents.device
        # the pipeline passes the scheduler's timestep (sigma * 1000) in the latents' dtype, / 1000
        timestep = (level.to(device).float() * self.pipe.scheduler.config.num_train_timesteps).to(dtype) / 1000
        embeds, mask = trim_text(cond["prompt_embeds"].to(device=device, dtype=dtype),
                                 cond["prompt_mask"].to(device))
        return net(hidden_states=pack_latents(latents.to(dtype)), timestep=timestep,
                   encoder_hidden_states=embeds, encoder_hidden_states_mask=mask,
                   img_shapes=[[(1, height // 2, width // 2)]] * batch, return_dict=False)[0]

    def model_output(self, latents, level, cond, model=None):
        """latents [B, C, H, W], level [B] (sigmas) -> velocity [B, C, H, W] (model dtype)."""
        return unpack_latents(self._packed_output(latents, level, cond, model), *latents.shape[2:])

    def predict(self, latents, level, cond, guidance_scale: float = 1.0, model=None):
        """As :meth:`Policy.predict`, with the pipeline's norm-rescaled true CFG when
        ``guidance_scale > 1`` (negative and conditional rows in one batch of 2B)."""
        if guidance_scale <= 1.0:
            return super().predict(latents, level, cond, guidance_scale, model)
        batch = latents.shape[0]
        null = self.null_condition(batch)
        both = {key: torch.cat([null[key].to(cond[key].device), cond[key]]) for key in cond}
        self.nfe += 2 * batch
        packed = self._packed_output(torch.cat([latents, latents]), torch.cat([level, level]), both, model)
        uncond, conditional = packed.chunk(2)
        return unpack_latents(norm_rescaled_cfg(uncond, conditional, guidance_scale), *latents.shape[2:])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, 16, h, w] -> images [B, 3, h * vae_scale_factor, ...] in [0, 1]: undo the
        per-channel latent normalisation, decode one frame, map [-1, 1] to [0, 1]."""
        config = self.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(latents.device, self.vae.dtype)
        std = torch.tensor(config.latents_std).view(shape).to(latents.device, self.vae.dtype)
        frames = latents.to(self.vae.dtype).unsqueeze(2) * std + mean  # [B, C, 1, h, w]
        images = self.vae.decode(frames, return_dict=False)[0][:, :, 0]
        return (images.float() / 2 + 0.5).clamp(0, 1)
