"""The data a sampler hands to the reward, the advantage estimator and the loss.

A rollout is a forest stored node by node. Node ``n`` holds the latent ``latents[n]`` at step
``step[n]`` of the sampling schedule (the state *before* the transition of that step). Every node
with ``parent[n] >= 0`` is the child end of one **edge** (one policy action): the SDE transition
``latents[parent[n]] -> latents[n]`` taken at step ``step[parent[n]]``, whose log-probability under
the sampling policy is ``log_prob[n]``. Roots (``parent == -1``) are the states where the SDE window
starts. Leaves are the nodes with no children; each leaf was finished with ODE steps, decoded
to ``images[i]`` and is scored as one sample.

Tree rollouts (TreeGRPO) are k-ary trees of depth d per prompt; flat rollouts (GRPO) are
chains, one per trajectory. Everything downstream treats both the same way.

Nothing here depends on the latent rank: image models store latents ``[N, C, H, W]``, video
models (Wan) ``[N, C, F, H, W]``; log-probs average over every non-batch dim. A video policy
decodes leaves to frames ``[L, F, 3, H, W]`` in [0, 1], which video rewards take
(:func:`treegrpo.rewards.base.check_videos`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    """A batch of sampled trees (or chains).

    Shapes: N nodes, L leaves, P prompts (one group per prompt), T sampling steps.
    """

    prompts: list[str]  # [P] one group (tree, or G flat trajectories) per prompt
    cond: dict[str, torch.Tensor]  # prompt conditioning, every tensor [P, ...]
    levels: torch.Tensor  # [T+1] noise levels of the schedule (sigmas or alpha_bars)
    latents: torch.Tensor  # [N, C, H, W] (video: [N, C, F, H, W]) state of each node before its step
    step: torch.Tensor  # [N] long, the step index of each node's state
    parent: torch.Tensor  # [N] long, parent node or -1 for a root
    log_prob: torch.Tensor  # [N] float32, log-prob of the edge parent -> node (0 for roots)
    prompt_index: torch.Tensor  # [N] long, which prompt (group) the node belongs to
    leaf_nodes: torch.Tensor  # [L] long, node index of each leaf
    images: torch.Tensor  # [L, 3, H, W] float in [0, 1], decoded leaves (video: frames [L, F, 3, H, W])
    nfe: int  # model forwards spent on this rollout (CFG counted twice)
    guidance_scale: float = 1.0

    @property
    def num_nodes(self) -> int:
        return int(self.parent.numel())

    @property
    def edge_nodes(self) -> torch.Tensor:
        """[E] long: the child node of every edge (node ids with a parent)."""
        return torch.nonzero(self.parent >= 0).flatten()

    @property
    def parent_nodes(self) -> torch.Tensor:
        """[M] long, sorted: every node that was expanded (has children); one forward each."""
        return torch.unique(self.parent[self.parent >= 0])

    @property
    def leaf_prompt_index(self) -> torch.Tensor:
        """[L] long: the prompt (group) of each leaf."""
        return self.prompt_index[self.leaf_nodes]

    @property
    def leaf_prompts(self) -> list[str]:
        """The prompt text of each leaf, in leaf order (what a reward receives)."""
        return [self.prompts[i] for i in self.leaf_prompt_index.tolist()]


def index_cond(cond: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Select rows of every conditioning tensor: ``{k: v[index]}``."""
    return {key: value[index] for key, value in cond.items()}
