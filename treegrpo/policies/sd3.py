"""Stable Diffusion 3 / 3.5 policy on diffusers (flow matching, MMDiT transformer), LoRA or full.

Loads ``StableDiffusion3Pipeline`` from a hub id or a local folder. Text encoders and VAE are
frozen; the transformer is the trained denoiser (LoRA adapters through peft, or all weights).
Latents are the VAE's [16, H/8, W/8]; levels are the scheduler's shifted sigmas 1 -> 0.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from ..embedding_cache import DEFAULT_CACHE_SIZE
from ..registry import POLICIES
from .diffusers_common import DiffusersPolicy, decode_latents, freeze, load_pipeline, make_trainable

@POLICIES.register_module()
class SD3Policy(DiffusersPolicy):
    """SD3 / SD3.5 text-to-image policy.

    Args:
        model_path: hub id or local diffusers folder.
        resolution: image side in pixels (latent side = resolution / vae_scale_factor).
        dtype: weights dtype of the frozen parts and the transformer ('float32' | 'bfloat16' | 'float16').
        lora: dict(r, alpha, target_modules) to train LoRA adapters; None trains all transformer weights.
        use_t5: load the T5 text encoder when the checkpoint has one (False: CLIP encoders only).
        negative_prompt: the unconditional prompt of classifier-free guidance.
        keep_reference: with full fine-tuning, keep a frozen copy for the KL term.
        compile_denoiser: torch.compile the denoiser (True, or a dict of compile options).
        gradient_checkpointing: trade compute for memory in the transformer.
        max_sequence_length: T5 tokens.
        cache_prompt_embeds: keep each prompt's embeddings after its first encoding.
        embedding_cache_size: prompts kept by that cache (least recently used dropped; on CPU).
        embedding_dir: folder of tools/precompute_embeddings.py shards read before encoding.
    """

    kernel_type = "FlowMatchingKernel"

    def __init__(self, model_path: str, resolution: int = 512, dtype: str = "float32",
                 lora: dict | None = None, use_t5: bool = True, negative_prompt: str = "",
                 keep_reference: bool = False, gradient_checkpointing: bool = False,
                 max_sequence_length: int = 256, cache_prompt_embeds: bool = True,
                 embedding_cache_size: int = DEFAULT_CACHE_SIZE, embedding_dir: str | None = None,
                 compile_denoiser: bool | dict = False, device: str = "cpu") -> None:
        super().__init__()
        from diffusers import StableDiffusion3Pipeline

        no_t5 = {} if use_t5 else {"text_encoder_3": None, "tokenizer_3": None}
        local_index = Path(model_path) / "model_index.json"
        if use_t5 and local_index.is_file():
            saved = json.loads(local_index.read_text()).get("text_encoder_3", [None])
            if saved is None or saved[0] is None:  # a checkpoint saved without T5
                no_t5 = {"text_encoder_3": None, "tokenizer_3": None}
        pipe = load_pipeline(StableDiffusion3Pipeline, model_path, dtype, **no_t5)
        freeze(pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, pipe.vae)  # T5 may be None
        self.pipe = pipe
        # registered as submodules so that policy.to(device) moves the text encoders too
        self.text_encoder, self.text_encoder_2 = pipe.text_encoder, pipe.text_encoder_2
        self.text_encoder_3 = pipe.text_encoder_3
        self.vae = pipe.vae
        self.denoiser = pipe.transformer
        make_trainable(self, lora, keep_reference, gradient_checkpointing, default_rank=32,
                       compile_denoiser=compile_denoiser)
        side = resolution // pipe.vae_scale_factor
        self.latent_shape = (self.denoiser.config.in_channels, side, side)
        self.set_prompt_settings(model_path, negative_prompt, cache_prompt_embeds, embedding_cache_size,
                                 embedding_dir)
        self.max_sequence_length = max_sequence_length
        self.to(device)

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
        return {"prompt_embeds": embeds, "pooled": pooled}

    def noise_levels(self, num_steps: int) -> torch.Tensor:
        scheduler = copy.deepcopy(self.pipe.scheduler)
        scheduler.set_timesteps(num_steps)
        return scheduler.sigmas.float()

    def model_output(self, latents, level, cond, model=None):
        net = self.denoiser if model is None else model
        dtype = self.denoiser.dtype
        timestep = level.to(latents.device) * self.pipe.scheduler.config.num_train_timesteps
        return net(
            hidden_states=latents.to(dtype), timestep=timestep,
            encoder_hidden_states=cond["prompt_embeds"].to(dtype),
            pooled_projections=cond["pooled"].to(dtype), return_dict=False,
        )[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, 16, h, w] -> images [B, 3, h * vae_scale_factor, ...] in [0, 1]."""
        return decode_latents(self.vae, latents)
