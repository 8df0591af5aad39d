"""Pieces shared by the tree and flat samplers: seeded noise, batched ODE integration, decoding."""
from __future__ import annotations

import torch

from ..rollout import index_cond


class PromptNoise:
    """Standard normal noise for one process's share of a global prompt batch.

    Every process holds the same ``generator`` and draws the noise of the whole global batch,
    ``[P * world_size, rows_per_prompt, ...]``, keeping the rows of its own prompts (global prompt
    ``g`` lives on process ``g % world_size``, the sharding of ``Runner.prompts_for``). A tree's
    noise therefore depends on its global prompt index only: N processes sample exactly what one
    process sampling the same global batch does, and with one process the stream is a plain
    ``torch.randn`` of the local shape. Cost: each draw briefly holds the global batch's noise.
    """

    def __init__(self, generator: torch.Generator, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.generator, self.rank, self.world_size = generator, rank, world_size

    def draw(self, num_prompts: int, rows_per_prompt: int, shape: tuple[int, ...],
             device: torch.device) -> torch.Tensor:
        """Noise [num_prompts * rows_per_prompt, *shape] for this process's prompts, rows
        prompt-major (prompt 0's rows first), float32 on ``device``."""
        full = (num_prompts * self.world_size, rows_per_prompt, *shape)
        noise = torch.randn(full, generator=self.generator, device=self.generator.device,
                            dtype=torch.float32)
        return noise[self.rank :: self.world_size].reshape(-1, *shape).to(device)


def as_noise(source: "PromptNoise | torch.Generator") -> PromptNoise:
    """A :class:`PromptNoise`; a bare generator means one process holding the whole batch."""
    return source if isinstance(source, PromptNoise) else PromptNoise(source)


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
    """Run the deterministic steps ``steps`` on a batch. x [B, ...] (any latent rank), cond rows [B, ...].

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


def check_suffix_steps(suffix_steps: object) -> int | None:
    """``suffix_steps`` of a sampler: None or an int >= 1 (ValueError naming the fix otherwise)."""
    if suffix_steps is not None and (isinstance(suffix_steps, bool) or not isinstance(suffix_steps, int)
                                     or suffix_steps < 1):
        raise ValueError(f"suffix_steps must be None (every schedule step after the window) or an int >= 1, "
                         f"got {suffix_steps!r}")
    return suffix_steps


def suffix_levels(levels: torch.Tensor, stop: int, suffix_steps: int | None) -> torch.Tensor:
    """Levels [S + 1] of the ODE suffix from ``levels[stop]`` to the last level.

    levels: [T + 1] of the schedule. ``suffix_steps=None`` (or >= T - stop): all ``T - stop`` schedule
    steps, ``levels[stop:]``. Otherwise ``S = suffix_steps`` steps over schedule indices spread evenly
    from ``stop`` to ``T`` (rounded; distinct since their spacing is > 1): each leaf costs S forwards
    instead of ``T - stop``, and the reward scores that coarser ODE solution.
    """
    num_steps = levels.shape[0] - 1
    if suffix_steps is None or suffix_steps >= num_steps - stop:
        return levels[stop:]
    index = torch.linspace(stop, num_steps, suffix_steps + 1).round().long()
    return levels[index.to(levels.device)]


def ode_finish(policy, kernel, x: torch.Tensor, cond: dict[str, torch.Tensor], levels: torch.Tensor, stop: int,
               suffix_steps: int | None, guidance_scale: float, chunk_size: int | None = None) -> torch.Tensor:
    """The ODE finish after a window ending at step ``stop``: x [B, ...] -> final latents [B, ...]
    over :func:`suffix_levels` (``suffix_steps`` forwards, or all ``T - stop``)."""
    suffix = suffix_levels(levels, stop, suffix_steps)
    return ode_integrate(policy, kernel, x, cond, suffix, range(suffix.shape[0] - 1), guidance_scale, chunk_size)


def decode(policy, latents: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Decode latents [L, ...] to images [L, 3, H, W] (video: [L, F, 3, H, W]) in [0, 1], ``chunk_size`` rows at a time."""
    if not chunk_size or latents.shape[0] <= chunk_size:
        return policy.decode(latents).float()
    return torch.cat([policy.decode(part).float() for part in latents.split(chunk_size)])
