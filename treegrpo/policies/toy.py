"""The toy world's policy: the shipped tiny text-conditional flow-matching generator.

Pixel space (no VAE): latents are images scaled to [-1, 1], shape [B, 3, 32, 32]; the model
predicts the flow velocity ``v = eps - x0`` at ``x_t = (1 - sigma) x0 + sigma eps``.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from treegrpo.policies.base import Policy
from treegrpo.registry import POLICIES
from treegrpo.toy import GENERATOR_WEIGHTS
from treegrpo.toy.models import euler_sample, load_models, shifted_sigmas
from treegrpo.toy.prompts import tokenize


@POLICIES.register_module()
class ToyFlowPolicy(Policy):
    """Toy flow policy: frozen ``self.text_encoder``, trainable ``self.denoiser``.

    Args:
        weights: generator safetensors written by ``tools/pretrain_toy.py`` (None: the shipped
            ``treegrpo/toy/weights/toy_generator.safetensors``).
        keep_reference: keep a frozen copy of the denoiser in ``self.reference_denoiser`` for
            the KL term (full fine-tuning has no adapter to switch off).
        sigma_shift: SD3-style time shift of the sampling schedule (1 = linear).
        device: where the models live.
    """

    kernel_type = "FlowMatchingKernel"

    latent_shape = (3, 32, 32)

    def __init__(
        self,
        weights: str | Path | None = None,
        keep_reference: bool = False,
        sigma_shift: float = 1.0,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if not sigma_shift > 0:
            raise ValueError(f"sigma_shift must be > 0, got {sigma_shift}")
        self.weights = Path(weights) if weights is not None else GENERATOR_WEIGHTS
        self.sigma_shift = float(sigma_shift)
        models = load_models(self.weights, ("text_encoder", "denoiser"), device)
        self.text_encoder = models["text_encoder"].requires_grad_(False).eval()
        self.denoiser = models["denoiser"].requires_grad_(True)
        if keep_reference:
            self.reference_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False).eval()

    @property
    def device(self) -> torch.device:
        """Device of the text encoder (the denoiser is moved together with the policy)."""
        return next(self.text_encoder.parameters()).device

    # --- conditioning -------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Prompts -> ``{'tokens': [P, L, D], 'pooled': [P, D]}`` (no grad)."""
        return self.text_encoder(tokenize(list(prompts)).to(self.device))

    def null_condition(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The empty-prompt encoding repeated: ``{'tokens': [B, L, D], 'pooled': [B, D]}``."""
        null = self.encode_prompts([""])
        return {key: value.repeat(batch_size, *([1] * (value.dim() - 1))) for key, value in null.items()}

    # --- schedule -----------------------------------------------------------------------
    def noise_levels(self, num_steps: int) -> torch.Tensor:
        """[T+1] float32 sigmas from 1 to 0, time-shifted by ``sigma_shift``."""
        return shifted_sigmas(num_steps, self.sigma_shift)

    # --- model --------------------------------------------------------------------------
    def model_output(
        self, latents: torch.Tensor, level: torch.Tensor, cond: dict[str, torch.Tensor],
        model: nn.Module | None = None,
    ) -> torch.Tensor:
        """Velocity [B, 3, 32, 32] for latents [B, 3, 32, 32] at sigma ``level`` [B]."""
        net = self.denoiser if model is None else model
        level = level.to(device=latents.device, dtype=latents.dtype).expand(latents.shape[0])
        return net(latents, level, cond["tokens"], cond["pooled"])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[-1, 1] latents [B, 3, 32, 32] -> images in [0, 1] (clamped)."""
        return ((latents.float() + 1) / 2).clamp(0.0, 1.0)

    # --- convenience --------------------------------------------------------------------
    @torch.no_grad()
    def sample_images(
        self,
        prompts: list[str],
        num_steps: int = 10,
        generator: torch.Generator | None = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """Images [P, 3, 32, 32] in [0, 1] by the plain Euler ODE from Gaussian noise (drawn with
        ``generator`` on its own device); counts NFE through :meth:`predict`."""
        cond = self.encode_prompts(prompts)
        noise_device = generator.device if generator is not None else self.device
        noise = torch.randn((len(prompts), *self.latent_shape), generator=generator, device=noise_device)

        def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.predict(x, sigma, cond, guidance_scale)

        latents = euler_sample(velocity, noise.to(self.device), self.noise_levels(num_steps))
        return self.decode(latents)
