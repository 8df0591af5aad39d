"""Scoring rollouts: this process's reward (safe in a thread), then the collectives that every
process runs; and ``overlap_reward``, which scores rollout t in one background thread while the
main thread samples rollout t+1.

With ``overlap_reward=True`` every rollout after the first is one update stale: it was sampled
before the update on the previous rollout. The PPO ratio uses the log-probs recorded at sampling,
so its first value measures that staleness (logged as ``losses/stale_ratio_max_dev`` instead of
``losses/onpolicy_ratio_max_dev``). Checkpoints do not store the pending rollout: a resumed run
samples its first rollout afresh, so it does not continue bit-identically (overlap off does).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .rewards.base import RewardError, check_rewards


@dataclass
class DrawnRollout:
    """A sampled rollout with what it was drawn from, to be scored and trained on at ``iteration``."""

    iteration: int
    plan: object  # the schedule's BranchPlan
    records: list[dict]  # this process's prompt records (without 'prompt'), one per prompt
    rollout: object  # Rollout
    staleness: int  # updates between sampling and training (1: sampled during the previous iteration)


class RewardScoring:
    """Runner methods that score rollouts. Reads the runner's ``accelerator``, ``device``,
    ``call_reward``, ``reward_name``, ``max_iters``, ``pool`` and ``pending``; only
    :meth:`score_in_thread` and what it calls run in the reward thread."""

    def sample_and_score_overlapped(self, iteration: int, times: dict[str, float]):
        """``overlap_reward=True``: score this iteration's rollout in the reward thread while the
        main thread samples the next iteration's rollout with the current weights (not yet updated
        on this one), then join. Returns this iteration's (drawn rollout, :meth:`collect_rewards`).

        The next rollout is carried in ``self.pending``; checkpoints do not store it, so the first
        iteration of a run or of a resumed run samples afresh (``time/sample``). Only the local
        reward runs in the thread; collectives run here after the join. Times: ``sample_overlap``
        (the next rollout, while the reward runs), ``reward_wait`` (join + gathers) and
        ``reward_thread`` (the reward's own seconds, overlapped). The adaptive window schedule plans
        the next rollout before it observes this one's rewards."""
        drawn, self.pending = self.pending, None
        if drawn is None or drawn.iteration != iteration:
            with self.phase(times, "sample"):
                drawn = self.draw_rollout(iteration)
        times_thread: dict[str, float] = {}  # written by the thread, read after the join
        future = self.reward_pool().submit(self.score_in_thread, drawn, times_thread)
        if iteration + 1 < self.max_iters:
            with self.phase(times, "sample_overlap"):
                self.pending = self.draw_rollout(iteration + 1, staleness=1)
        with self.phase(times, "reward_wait"):
            scored = self.collect_rewards(future.result())
        times.update(times_thread)
        return drawn, scored

    def score_in_thread(self, drawn: DrawnRollout, times: dict[str, float]):
        """:meth:`score_rollout` in the reward thread, on this process's GPU (a new thread's current
        CUDA device is cuda:0, not the one accelerate chose for this process)."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        return self.score_rollout(drawn, times)

    def score_rollout(self, drawn: DrawnRollout, times: dict[str, float] | None = None):
        """This process's rewards of the rollout's leaves, no collective (safe in the reward
        thread): ``(rewards [L], error)``; ``times['reward_thread']``: its seconds."""
        start = time.perf_counter()
        rollout = drawn.rollout
        metadata = [drawn.records[i] for i in rollout.leaf_prompt_index.tolist()]
        result = self.local_rewards(rollout.images, rollout.leaf_prompts, metadata)
        if times is not None:
            times["reward_thread"] = time.perf_counter() - start
        return result

    def collect_rewards(self, local: tuple[torch.Tensor, Exception | None]):
        """Collectives after scoring: stop every process if any reward failed, then
        ``(rewards [L] on this device, all processes' rewards [L * P], reward log values)``."""
        rewards = self.agree_on_rewards(*local).to(self.device)
        all_rewards = self.accelerator.gather(rewards).float().cpu()
        reward_parts = {key: self.accelerator.gather(torch.tensor([value], device=self.device)).mean().item()
                        for key, value in sorted(self.reward_log_values().items())}
        return rewards, all_rewards, reward_parts

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        """Reward of each leaf [L]. A reward that fails or returns a wrong shape, NaN or inf on any
        process stops every process (the failing one re-raises its own error; none hangs)."""
        return self.agree_on_rewards(*self.local_rewards(images, prompts, metadata))

    def local_rewards(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None):
        """``(rewards [L], None)``, or ``(zeros, the exception)`` when the reward fails or returns
        a wrong shape, NaN or inf; no collective."""
        try:
            return check_rewards(self.call_reward(images, prompts, metadata), len(prompts), self.reward_name), None
        except Exception as exc:  # noqa: BLE001 - re-raised by agree_on_rewards, after telling the other ranks
            return torch.zeros(len(prompts)), exc

    def agree_on_rewards(self, rewards: torch.Tensor, error: Exception | None) -> torch.Tensor:
        """Every process learns whether any reward failed: the failing one re-raises its own
        error, the others raise a :class:`RewardError`; otherwise ``rewards``."""
        failed = self.accelerator.gather(torch.tensor([float(error is not None)], device=self.device))
        if error is not None:
            raise error
        if failed.sum() > 0:
            raise RewardError(f"reward {self.reward_name!r} failed on another process")
        return rewards

    def reward_pool(self) -> ThreadPoolExecutor:
        """The one-worker thread that scores rollouts with ``overlap_reward`` (made on first use)."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="treegrpo-reward")
        return self.pool

    def close_reward_pool(self) -> None:
        """Wait for a running reward, stop the thread and drop the pending rollout."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.pending = None
