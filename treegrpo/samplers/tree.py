"""TreeGRPO rollouts: one shared noise and ODE prefix per prompt, k-way (or per-depth k_l-way) SDE
branching in a window."""
from __future__ import annotations

import torch

from ..registry import SAMPLERS
from ..rollout import Rollout, index_cond
from .common import PromptNoise, as_noise, check_suffix_steps, decode, ode_finish, ode_integrate


def _check(num_steps: int, guidance_scale: float) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if guidance_scale < 1.0:
        raise ValueError(f"guidance_scale must be >= 1 (1 = no CFG), got {guidance_scale!r}")


@SAMPLERS.register_module()
class TreeSampler:
    """Sample one tree per prompt.

    Steps ``[0, plan.start)`` are ODE steps on the P roots (the shared prefix, computed once);
    the step of depth ``l`` of the window expands every current node into ``k_l = plan.ks[l]``
    children with the SDE kernel, all nodes of that depth across all trees in ONE batched forward
    (the children of a node share its model output and differ only in noise); the
    ``prod_l k_l`` leaves of each tree finish with ODE steps, batched. NFE per tree (no CFG):
    ``p + sum_{l<d} prod_{j<l} k_j + prod_l k_l * s`` (``p + sum_l k**(l-1) + k**d * s`` for an
    int k), doubled with CFG.

    Args:
        num_steps: T, the length of the sampling schedule.
        guidance_scale: classifier-free guidance scale (1 = off; >1 doubles every forward).
        chunk_size: optional cap on rows per forward in the ODE suffix and decoding (memory).
        suffix_steps: ODE steps from the window's end to the image (None: the schedule's own
            ``T - stop``); fewer makes each leaf cheaper, ``s`` above becomes ``min(s, suffix_steps)``
            (:func:`suffix_levels`). Evaluation always samples the full schedule.
    """

    def __init__(self, num_steps: int = 10, guidance_scale: float = 1.0, chunk_size: int | None = None,
                 suffix_steps: int | None = None):
        _check(num_steps, guidance_scale)
        self.num_steps = num_steps
        self.guidance_scale = float(guidance_scale)
        self.chunk_size = chunk_size
        self.suffix_steps = check_suffix_steps(suffix_steps)

    @torch.no_grad()
    def sample(self, policy, kernel, prompts: list[str], plan,
               generator: PromptNoise | torch.Generator, records: list[dict] | None = None) -> Rollout:
        """Rollout of ``len(prompts)`` trees under the branching ``plan`` (start, depth, k or ks);
        ``generator``: the noise source (:class:`PromptNoise`, or a generator for one process)."""
        noise_source = as_noise(generator)
        device = next(policy.denoiser.parameters()).device
        num_prompts, gs = len(prompts), self.guidance_scale
        nfe_before = policy.nfe
        # records (one dict per prompt) only for policies that read them (edit models' input images)
        cond = policy.encode_prompts(prompts) if records is None else policy.encode(prompts, records)
        levels = policy.noise_levels(self.num_steps).to(device)
        plan_steps = plan.steps
        if plan_steps.stop > self.num_steps:
            raise ValueError(f"branch window {plan_steps} does not fit in num_steps={self.num_steps}")

        x = noise_source.draw(num_prompts, 1, policy.latent_shape, device)
        x = ode_integrate(policy, kernel, x, cond, levels, range(plan.start), gs)

        # Nodes are appended depth by depth, so parents always precede their children.
        frontier = torch.arange(num_prompts, device=device)  # node ids of the current depth
        frontier_prompt = torch.arange(num_prompts, device=device)
        latents, steps, parents, log_probs, prompt_ids = [x], [], [], [], [frontier_prompt]
        parents.append(torch.full((num_prompts,), -1, dtype=torch.long, device=device))
        log_probs.append(torch.zeros(num_prompts, device=device))
        num_nodes = num_prompts
        for i, k in zip(plan_steps, plan.ks):
            steps.append(torch.full((frontier.numel(),), i, dtype=torch.long, device=device))
            step = steps[-1]
            out = policy.predict(x, levels[step], index_cond(cond, frontier_prompt), gs)
            x_rep = x.repeat_interleave(k, dim=0)
            out_rep = out.repeat_interleave(k, dim=0)
            step_rep = step.repeat_interleave(k)
            noise = noise_source.draw(num_prompts, x_rep.shape[0] // num_prompts, policy.latent_shape, device)
            x, log_prob = kernel.sde_step(x_rep, out_rep, levels, step_rep, noise)
            children = torch.arange(num_nodes, num_nodes + x.shape[0], device=device)
            num_nodes += x.shape[0]
            parents.append(frontier.repeat_interleave(k))
            frontier_prompt = frontier_prompt.repeat_interleave(k)
            latents.append(x)
            log_probs.append(log_prob.float())
            prompt_ids.append(frontier_prompt)
            frontier = children
        steps.append(torch.full((frontier.numel(),), plan_steps.stop, dtype=torch.long, device=device))

        leaf_cond = index_cond(cond, frontier_prompt)
        final = ode_finish(policy, kernel, x, leaf_cond, levels, plan_steps.stop, self.suffix_steps, gs, self.chunk_size)
        images = decode(policy, final, self.chunk_size)
        return Rollout(
            prompts=list(prompts),
            cond=cond,
            levels=levels,
            latents=torch.cat(latents),
            step=torch.cat(steps),
            parent=torch.cat(parents),
            log_prob=torch.cat(log_probs),
            prompt_index=torch.cat(prompt_ids),
            leaf_nodes=frontier,
            images=images,
            nfe=policy.nfe - nfe_before,
            guidance_scale=gs,
        )
