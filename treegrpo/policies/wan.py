"""Wan 2.1 / 2.2 text-to-video policy on diffusers (``WanPipeline``, flow matching), LoRA or full.

Latents are video latents ``[C, F', h, w]`` with ``F' = (num_frames - 1) / 4 + 1`` and
``h = height / 8`` (the VAE's temporal and spatial factors); a decoded leaf is a clip of frames
``[F, 3, H, W]`` in [0, 1], so a rollout's ``images`` are ``[L, F, 3, H, W]`` (video rewards:
:mod:`treegrpo.rewards.video`).

Schedule: the hub checkpoints ship ``UniPCMultistepScheduler`` (a multistep solver), but the
TreeGRPO kernels are one-step Euler ODE / SDE transitions, so the levels are the flow-matching
Euler sigmas of ``FlowMatchEulerDiscreteScheduler(shift=<the model's flow_shift>)``: the same
shifted sigma curve, integrated with Euler steps instead of UniPC's multistep updates.
"""
from __future__ import annotations

import torch

from ..embedding_cache import DEFAULT_CACHE_SIZE
from ..registry import POLICIES
from .diffusers_common import DiffusersPolicy, freeze, load_pipeline, make_trainable


def flow_shift_of(scheduler_config) -> float:
    """The sigma shift of a Wan scheduler config: UniPC's ``flow_shift`` or FlowMatchEuler's ``shift``."""
    for key in ("flow_shift", "shift"):
        value = scheduler_config.get(key) if hasattr(scheduler_config, "get") else getattr(scheduler_config, key, None)
        if value is not None:
            return float(value)
    return 1.0


def check_video_size(num_frames: int, height: int, width: int, temporal: int, spatial: int) -> None:
    """ValueError naming the key unless ``num_frames - 1`` is a multiple of the VAE's temporal
    factor and height / width are multiples of ``spatial`` (the VAE's factor times the patch)."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 \
            or (num_frames - 1) % temporal:
        raise ValueError(f"policy.num_frames must be 1 + a multiple of {temporal} (the VAE's temporal "
                         f"factor), e.g. 81 or 33, got {num_frames!r}")
    for key, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < spatial or value % spatial:
            raise ValueError(f"policy.{key} must be a positive multiple of {spatial} (VAE factor x patch "
                             f"size), got {value!r}")


@POLICIES.register_module()
class WanPolicy(DiffusersPolicy):
    """Wan text-to-video policy (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` and its family).

    Args:
        model_path: hub id or local diffusers folder of a ``WanPipeline``.
        height, width: frame size in pixels; num_frames: frames per clip (1 + a multiple of 4).
        dtype: weights dtype ('float32' | 'bfloat16' | 'float16').
        lora: dict(r, alpha, target_modules) to train LoRA adapters; None trains all weights.
        negative_prompt: the unconditional prompt of classifier-free guidance.
        shift: sigma shift of the Euler schedule; None reads the checkpoint scheduler's
            ``flow_shift`` (UniPC) or ``shift`` (FlowMatchEuler).
        max_sequence_length: UMT5 tokens (the pipeline's default 512); embeddings beyond each
            prompt's mask are zero, as in ``WanPipeline.encode_prompt``.
        keep_reference, gradient_checkpointing, compile_denoiser, cache_prompt_embeds,
        embedding_cache_size, embedding_dir, device: as :class:`~treegrpo.policies.sd3.SD3Policy`.

    Two-expert checkpoints (Wan 2.2 A14B: ``transformer_2`` with a ``boundary_ratio``) are refused;
    single-transformer ones with ``expand_timesteps`` (Wan 2.2 TI2V-5B) get per-token timesteps
    as the pipeline gives them.
    """

    kernel_type = "FlowMatchingKernel"

    def __init__(self, model_path: str, height: int = 480, width: int = 832, num_frames: int = 81,
                 dtype: str = "float32", lora: dict | None = None, negative_prompt: str = "",
                 shift: float | None = None, keep_reference: bool = False,
                 gradient_checkpointing: bool = False, max_sequence_length: int = 512,
                 cache_prompt_embeds: bool = True, embedding_cache_size: int = DEFAULT_CACHE_SIZE,
                 embedding_dir: str | None = None, compile_denoiser: bool | dict = False,
                 device: str = "cpu") -> None:
        super().__init__()
        from diffusers import WanPipeline

        if shift is not None and (isinstance(shift, bool) or not isinstance(shift, (int, float)) or shift <= 0):
            raise ValueError(f"policy.shift must be a number > 0 or None (the checkpoint's), got {shift!r}")
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or max_sequence_length < 1:
            raise ValueError(f"policy.max_sequence_length must be an int >= 1, got {max_sequence_length!r}")
        pipe = load_pipeline(WanPipeline, model_path, dtype)
        if getattr(pipe, "transformer_2", None) is not None:
            raise ValueError(f"policy.model_path={model_path!r} is a two-expert Wan 2.2 checkpoint "
                             "(transformer_2): WanPolicy trains single-transformer checkpoints only "
                             "(Wan 2.1 T2V, Wan 2.2 TI2V-5B)")
        patch = pipe.transformer.config.patch_size
        check_video_size(num_frames, height, width, pipe.vae_scale_factor_temporal,
                         pipe.vae_scale_factor_spatial * max(patch[1], patch[2]))
        freeze(pipe.text_encoder, pipe.vae)
        self.pipe = pipe
        self.text_encoder, self.vae = pipe.text_encoder, pipe.vae  # submodules: policy.to() moves them
        self.denoiser = pipe.transformer
        make_trainable(self, lora, keep_reference, gradient_checkpointing, default_rank=32,
                       compile_denoiser=compile_denoiser)
        frames = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        spatial = pipe.vae_scale_factor_spatial
        self.latent_shape = (self.denoiser.config.in_channels, frames, height // spatial, width // spatial)
        self.num_frames, self.patch_size = num_frames, tuple(patch)
        self.shift = flow_shift_of(pipe.scheduler.config) if shift is None else float(shift)
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self.set_prompt_settings(model_path, negative_prompt, cache_prompt_embeds, embedding_cache_size,
                                 embedding_dir)
        self.max_sequence_length = max_sequence_length
        self.to(device)

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        embeds, _ = self.pipe.encode_prompt(
            prompt=list(prompts), do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length, device=self.device)
        return {"prompt_embeds": embeds}

    def euler_scheduler(self):
        """The FlowMatchEulerDiscreteScheduler whose sigmas are this policy's levels."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.num_train_timesteps, shift=self.shift)

    def noise_levels(self, num_steps: int) -> torch.Tensor:
        scheduler = self.euler_scheduler()
        scheduler.set_timesteps(num_steps)
        return scheduler.sigmas.float()

    def model_output(self, latents, level, cond, model=None):
        """latents [B, C, F', h, w], level [B] -> velocity [B, C, F', h, w]."""
        net = self.denoiser if model is None else model
        dtype = self.denoiser.dtype
        timestep = level.to(latents.device) * self.num_train_timesteps
        if self.pipe.config.expand_timesteps:  # one timestep per patch token, as the pipeline does
            _, _, frames, h, w = latents.shape
            tokens = frames * (h // self.patch_size[1]) * (w // self.patch_size[2])
            timestep = timestep[:, None].expand(-1, tokens)
        return net(hidden_states=latents.to(dtype), timestep=timestep,
                   encoder_hidden_states=cond["prompt_embeds"].to(dtype), return_dict=False)[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, F', h, w] -> frames [B, F, 3, H, W] in [0, 1]: undo the VAE's
        per-channel latents_mean / latents_std, decode, map [-1, 1] to [0, 1]."""
        config = self.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean, device=latents.device).view(shape)
        std = torch.tensor(config.latents_std, device=latents.device).view(shape)
        latents = (latents.float() * std + mean).to(self.vae.dtype)
        video = self.vae.decode(latents, return_dict=False)[0]  # [B, 3, F, H, W] in [-1, 1]
        return (video.float().permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1).contiguous()
