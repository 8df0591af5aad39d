"""Stable Diffusion 1.x / 2.x policy on diffusers (DDPM-trained UNet, DDIM kernels), LoRA or full.

Levels are the DDIM schedule's alpha_bar values: ``levels[i]`` = alpha_bar at the i-th timestep
of a T-step DDIM schedule and ``levels[T]`` = the final alpha_bar (the scheduler's
``final_alpha_cumprod``; with ``set_alpha_to_one`` it is 1 and the last step is deterministic,
so keep it out of the SDE window). Use ``DDIMKernel(prediction_type=...)`` matching the UNet.
"""
from __future__ import annotations

import copy

import torch

from ..embedding_cache import DEFAULT_CACHE_SIZE
from ..registry import POLICIES
from .diffusers_common import DiffusersPolicy, freeze, load_pipeline, make_trainable


@POLICIES.register_module()
class StableDiffusionPolicy(DiffusersPolicy):
    """SD1.x / SD2.x text-to-image policy (UNet2DConditionModel + DDIM).

    Args:
        model_path: hub id or local diffusers folder.
        resolution: image side in pixels.
        dtype: 'float32' | 'bfloat16' | 'float16'.
        lora: dict(r, alpha, target_modules) for LoRA; None trains all UNet weights.
        negative_prompt: unconditional prompt of classifier-free guidance.
        keep_reference: with full fine-tuning, keep a frozen copy for the KL term.
        compile_denoiser: torch.compile the denoiser (True, or a dict of compile options).
        gradient_checkpointing: trade compute for memory in the UNet.
        cache_prompt_embeds: keep each prompt's embeddings after its first encoding.
        embedding_cache_size: prompts kept by that cache (least recently used dropped; on CPU).
        embedding_dir: folder of tools/precompute_embeddings.py shards read before encoding.
    """

    component = "unet"
    kernel_type = "DDIMKernel"

    def __init__(self, model_path: str, resolution: int = 512, dtype: str = "float32",
                 lora: dict | None = None, negative_prompt: str = "", keep_reference: bool = False,
                 gradient_checkpointing: bool = False, cache_prompt_embeds: bool = True,
                 embedding_cache_size: int = DEFAULT_CACHE_SIZE, embedding_dir: str | None = None,
                 compile_denoiser: bool | dict = False, device: str = "cpu") -> None:
        super().__init__()
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        pipe = load_pipeline(StableDiffusionPipeline, model_path, dtype, safety_checker=None,
                             requires_safety_checker=False)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        freeze(pipe.text_encoder, pipe.vae)
        self.pipe, self.vae, self.text_encoder, self.denoiser = pipe, pipe.vae, pipe.text_encoder, pipe.unet
        self.prediction_type = pipe.scheduler.config.prediction_type
        make_trainable(self, lora, keep_reference, gradient_checkpointing, default_rank=8,
                       compile_denoiser=compile_denoiser)
        side = resolution // pipe.vae_scale_factor
        self.latent_shape = (self.denoiser.config.in_channels, side, side)
        self.set_prompt_settings(model_path, negative_prompt, cache_prompt_embeds, embedding_cache_size,
                                 embedding_dir)
        self.to(device)

    def check_kernel(self, kernel) -> None:
        super().check_kernel(kernel)
        if kernel.prediction_type != self.prediction_type:
            raise ValueError(
                f"the UNet predicts {self.prediction_type!r} but the kernel reads "
                f"{kernel.prediction_type!r}: set kernel.prediction_type='{self.prediction_type}'"
            )

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        embeds, _ = self.pipe.encode_prompt(list(prompts), self.device, 1, do_classifier_free_guidance=False)
        return {"prompt_embeds": embeds}

    def noise_levels(self, num_steps: int) -> torch.Tensor:
        scheduler = copy.deepcopy(self.pipe.scheduler)
        scheduler.set_timesteps(num_steps)
        alphas = scheduler.alphas_cumprod
        final = scheduler.final_alpha_cumprod.reshape(1)
        return torch.cat([alphas[scheduler.timesteps], final]).float()

    def timesteps_of(self, level: torch.Tensor) -> torch.Tensor:
        """Training timestep [B] whose alpha_bar is ``level`` [B] (nearest on the 1000-step table)."""
        table = self.pipe.scheduler.alphas_cumprod.to(level.device)
        return torch.argmin((table[None, :] - level[:, None].float()).abs(), dim=1)

    def model_output(self, latents, level, cond, model=None):
        net = self.denoiser if model is None else model
        dtype = self.denoiser.dtype
        return net(latents.to(dtype), self.timesteps_of(level.reshape(-1).expand(latents.shape[0])),
                             encoder_hidden_states=cond["prompt_embeds"].to(dtype), return_dict=False)[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        images = self.vae.decode(latents, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)
