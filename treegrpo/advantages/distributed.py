"""Statistics over the leaves of every process: the reward std of ``global_std`` and per-prompt
reward histories are computed from rewards gathered across ranks, so every rank holds the same
tracker state and the result does not depend on the number of processes.

Rank ``r``'s local prompt ``i`` is global prompt ``i * world_size + r`` (``Runner.prompts_for``
deals the iteration's prompts out in turn); gathered leaves are put in that global order.
"""
from __future__ import annotations

import torch

from treegrpo.advantages.stat_tracking import PromptStatTracker


class RankGroup:
    """The processes of a run, for gathering (one process: nothing to gather).

    ``accelerator``: an ``accelerate.Accelerator`` (None: a single process)."""

    def __init__(self, accelerator=None) -> None:
        self.accelerator = accelerator
        self.rank = 0 if accelerator is None else accelerator.process_index
        self.world_size = 1 if accelerator is None else accelerator.num_processes

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """[n, ...] on every rank (same n) -> [world_size * n, ...], rank 0's rows first."""
        return tensor if self.world_size == 1 else self.accelerator.gather(tensor.contiguous())

    def gather_strings(self, items: list[str]) -> list[str]:
        """Every rank's list, concatenated in rank order."""
        if self.world_size == 1:
            return list(items)
        from accelerate.utils import gather_object

        return list(gather_object(list(items)))


SINGLE_PROCESS = RankGroup()


def gather_same_size(tensor: torch.Tensor, group: RankGroup, what: str, why: str) -> torch.Tensor:
    """[n] on every rank -> [world_size * n]; a ValueError naming ``what`` the ranks hold (and
    ``why`` they must agree) when their n differ."""
    if group.world_size == 1:
        return tensor
    counts = group.gather(torch.tensor([tensor.numel()], device=tensor.device))
    if bool((counts != tensor.numel()).any()):
        raise ValueError(f"processes have different numbers of {what} {counts.tolist()}: {why}")
    return group.gather(tensor)


def gathered_rewards(rewards: torch.Tensor, group: RankGroup) -> torch.Tensor:
    """The rewards [L] of every rank -> [world_size * L] (every rank must have L leaves)."""
    return gather_same_size(rewards, group, "scored leaves",
                            "global reward statistics need the same prompts per process and the same tree")


def track_globally(tracker: PromptStatTracker, prompts: list[str], prompt_index: torch.Tensor,
                   rewards: torch.Tensor, group: RankGroup) -> torch.Tensor:
    """``tracker.normalize`` over the leaves of all ranks in global prompt order; returns this
    rank's advantages [L]. Every rank adds the same values in the same order to its tracker."""
    if group.world_size == 1:
        return tracker.normalize(prompts, rewards)
    n = rewards.numel()
    all_rewards = gathered_rewards(rewards, group)
    all_index = group.gather(prompt_index.to(rewards.device).long())
    all_prompts = group.gather_strings(prompts)
    rank = torch.arange(group.world_size, device=rewards.device).repeat_interleave(n)
    order = torch.argsort(all_index * group.world_size + rank, stable=True)
    adv_sorted = tracker.normalize([all_prompts[i] for i in order.tolist()], all_rewards[order])
    adv = torch.empty_like(adv_sorted)
    adv[order] = adv_sorted
    return adv[group.rank * n : (group.rank + 1) * n]
