"""Pieces shared by the tree and flat samplers: seeded noise, batched ODE integration, decoding."""
from __future__ import annotations

import torch

from ..rollout import index_cond


def randn(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` (on the generator's device), moved to ``device``."""
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(device)


def ode_integrate(
    policy,
    kernel,
    x: torch.Tensor,
    cond: dict[str, torch.Tensor],
    levels: torch.Tensor,
    steps: range,
    guidance_scale: float,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Run the deterministic steps ``steps`` on a batch. x [B, C, H, W], cond rows [B, ...].

    One batched model forward per step (B rows, 2B with CFG), or per chunk of ``chunk_size`` rows.
    """
    if chunk_size and x.shape[0] > chunk_size:
        rows = torch.arange(x.shape[0], device=x.device).split(chunk_size)
        return torch.cat(
            [ode_integrate(policy, kernel, x[r], index_cond(cond, r), levels, steps, guidance_scale)
             for r in rows]
        )
    for i in steps:
        step = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        out = policy.predict(x, levels[step], cond, guidance_scale)
        x = kernel.ode_step(x, out, levels, step)
    return x


def decode(policy, latents: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Decode latents [L, ...] to images [L, 3, H, W] in [0, 1], ``chunk_size`` rows at a time."""
    if not chunk_size or latents.shape[0] <= chunk_size:
        return policy.decode(latents).float()
    return torch.cat([policy.decode(part).float() for part in latents.split(chunk_size)])
