"""Flat GRPO rollouts (DanceGRPO / Flow-GRPO style): G independent trajectories per prompt."""
from __future__ import annotations

import torch

from ..registry import SAMPLERS
from ..rollout import Rollout, index_cond
from .common import PromptNoise, as_noise, check_suffix_steps, decode, ode_finish, ode_integrate
from .tree import _check


@SAMPLERS.register_module()
class FlatSampler:
    """Sample ``group_size`` independent trajectories per prompt.

    Steps of the plan's window are SDE steps (each one edge of a chain); the others are ODE steps.
    ``plan.k`` is ignored. Every trajectory runs every step: NFE = P * G * T (x2 with CFG; with
    ``suffix_steps``, P * G * (stop + min(T - stop, suffix_steps))).

    Args:
        num_steps: T.
        group_size: G trajectories per prompt (the GRPO group).
        guidance_scale: CFG scale (1 = off).
        shared_noise: start all G trajectories of a prompt from the same initial noise.
        chunk_size: optional cap on rows per forward outside the window and in decoding.
        suffix_steps: ODE steps after the window (None: the schedule's own), as in
            :class:`~treegrpo.samplers.TreeSampler`.
    """

    def __init__(
        self,
        num_steps: int = 10,
        group_size: int = 8,
        guidance_scale: float = 1.0,
        shared_noise: bool = False,
        chunk_size: int | None = None,
        suffix_steps: int | None = None,
    ):
        _check(num_steps, guidance_scale)
        if not isinstance(group_size, int) or group_size < 2:
            raise ValueError(f"group_size must be an int >= 2 (GRPO needs a group), got {group_size!r}")
        self.num_steps = num_steps
        self.group_size = group_size
        self.guidance_scale = float(guidance_scale)
        self.shared_noise = shared_noise
        self.chunk_size = chunk_size
        self.suffix_steps = check_suffix_steps(suffix_steps)

    @torch.no_grad()
    def sample(self, policy, kernel, prompts: list[str], plan,
               generator: PromptNoise | torch.Generator, records: list[dict] | None = None) -> Rollout:
        """Rollout of ``len(prompts) * group_size`` chains, trained on the plan's window;
        ``generator``: the noise source (:class:`PromptNoise`, or a generator for one process)."""
        noise_source = as_noise(generator)
        device = next(policy.denoiser.parameters()).device
        num_prompts, group, gs = len(prompts), self.group_size, self.guidance_scale
        nfe_before = policy.nfe
        # records (one dict per prompt) only for policies that read them (edit models' input images)
        cond = policy.encode_prompts(prompts) if records is None else policy.encode(prompts, records)
        levels = policy.noise_levels(self.num_steps).to(device)
        window = plan.steps
        if window.stop > self.num_steps:
            raise ValueError(f"SDE window {window} does not fit in num_steps={self.num_steps}")

        rows = num_prompts * group
        prompt_of_row = torch.arange(num_prompts, device=device).repeat_interleave(group)
        row_cond = index_cond(cond, prompt_of_row)
        if self.shared_noise:
            x = noise_source.draw(num_prompts, 1, policy.latent_shape, device)
            x = x.repeat_interleave(group, dim=0)
        else:
            x = noise_source.draw(num_prompts, group, policy.latent_shape, device)
        x = ode_integrate(policy, kernel, x, row_cond, levels, range(plan.start), gs, self.chunk_size)

        # Chain j's nodes are j, j + rows, j + 2*rows, ... (one layer of `rows` nodes per SDE step).
        latents, steps, log_probs = [x], [], [torch.zeros(rows, device=device)]
        parents = [torch.full((rows,), -1, dtype=torch.long, device=device)]
        for layer, i in enumerate(window):
            step = torch.full((rows,), i, dtype=torch.long, device=device)
            out = policy.predict(x, levels[step], row_cond, gs)
            noise = noise_source.draw(num_prompts, group, policy.latent_shape, device)
            x, log_prob = kernel.sde_step(x, out, levels, step, noise)
            steps.append(step)
            latents.append(x)
            log_probs.append(log_prob.float())
            parents.append(torch.arange(layer * rows, (layer + 1) * rows, device=device))
        steps.append(torch.full((rows,), window.stop, dtype=torch.long, device=device))

        final = ode_finish(policy, kernel, x, row_cond, levels, window.stop, self.suffix_steps, gs, self.chunk_size)
        images = decode(policy, final, self.chunk_size)
        num_layers = len(window) + 1
        return Rollout(
            prompts=list(prompts),
            cond=cond,
            levels=levels,
            latents=torch.cat(latents),
            step=torch.cat(steps),
            parent=torch.cat(parents),
            log_prob=torch.cat(log_probs),
            prompt_index=prompt_of_row.repeat(num_layers),
            leaf_nodes=torch.arange((num_layers - 1) * rows, num_layers * rows, device=device),
            images=images,
            nfe=policy.nfe - nfe_before,
            guidance_scale=gs,
        )
