"""The training loop: sample -> score -> advantages -> clipped-ratio update, on accelerate.

Everything random is drawn from generators seeded by (seed, iteration, rank, purpose), so a run
resumed from a checkpoint continues bit-identically on the same hardware.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list
from mmengine.config import Config
from tqdm import tqdm

from .advantages.distributed import RankGroup
from .checkpoint import clean_partial_checkpoints, resume_unsharded, save_unsharded
from .config_check import validate_config
from .datasets import dataset_record
from .distributed import (check_fsdp_active, check_fsdp_hooks, check_wrap_classes, collective_timeout,
                          fsdp_settings, make_accelerator)
from .hooks.logger import MetricWriter
from .registry import (ADVANTAGES, DATASETS, HOOKS, KERNELS, LOSSES, POLICIES, REWARDS,
                       SAMPLERS, SCHEDULES, build)
from .overlap import DrawnRollout, RewardScoring
from .rewards.base import load_reward_weights, metadata_caller
from .run_files import create_run_dir
from .samplers.common import PromptNoise
from .schedules.adaptive import tree_variances
from .sharded_checkpoint import is_sharded_checkpoint, resume_runner_checkpoint, save_runner_checkpoint
from .update import (ReferenceCache, build_optimizer, edge_log_probs, plan_micro_batches, select_parents,
                     update_settings)
from .utils import PURPOSES, make_generator, timer

REQUIRED_KEYS = ("policy", "kernel", "schedule", "sampler", "reward", "advantage", "loss",
                 "train_dataset", "optimizer", "max_iters", "prompts_per_iter")


def require_keys(cfg: Config, keys=REQUIRED_KEYS) -> None:
    """Raise a KeyError naming every required top-level config key that is missing."""
    missing = [key for key in keys if key not in cfg]
    if missing:
        raise KeyError(
            f"config is missing required key(s) {missing}; see configs/_base_/default_runtime.py "
            "and configs/treegrpo_toy_shapes.py for a complete example"
        )


class Runner(RewardScoring):
    """Builds every component from a config and runs the TreeGRPO / GRPO training loop."""

    def __init__(self, cfg: Config, work_dir: str | Path | None, resume_from: str | Path | None = None,
                 runs_root: str | Path | None = None):
        """``work_dir``: the run folder; None: a new, unique one under ``runs_root`` (decided by
        the main process, see :func:`create_run_dir`)."""
        require_keys(cfg)
        validate_config(cfg)  # every problem of the config at once, before any model is loaded
        self.cfg = cfg
        self.fsdp = fsdp_settings(cfg.get("fsdp"), cfg.policy)  # None: DDP
        self.accelerator = make_accelerator(cfg, self.fsdp, [collective_timeout(cfg)])
        check_fsdp_active(self.accelerator, self.fsdp)
        self.device = self.accelerator.device
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.seed = int(cfg.get("seed", 0))
        self.max_iters = int(cfg.max_iters)
        # Optional budgets (benchmarks): stop once model forwards or training seconds reach them.
        self.max_nfe = cfg.get("max_nfe")
        self.max_wall_time = cfg.get("max_wall_time")
        self.prompts_per_iter = int(cfg.prompts_per_iter)
        if self.prompts_per_iter % self.world_size:
            raise ValueError(
                f"prompts_per_iter={self.prompts_per_iter} must be divisible by the number of "
                f"processes ({self.world_size}): set prompts_per_iter to a multiple of {self.world_size}"
            )
        self.update_cfg = update_settings(cfg.get("update"))  # warns about keys it ignores

        torch.manual_seed(self.seed)
        self.policy = build(POLICIES, cfg.policy).to(self.device)
        self.kernel = build(KERNELS, cfg.kernel)
        self.policy.check_kernel(self.kernel)
        self.schedule = build(SCHEDULES, cfg.schedule)
        self.sampler = build(SAMPLERS, cfg.sampler)
        self.reward = build(REWARDS, cfg.reward)
        self.reward_name = cfg.reward["type"]
        self.call_reward = metadata_caller(self.reward)  # metadata only if its signature takes it
        load_reward_weights(self.reward)  # missing reward weights fail here, not after the first rollout
        self.advantage = build(ADVANTAGES, cfg.advantage)
        self.loss = build(LOSSES, cfg.loss)
        self.train_dataset = build(DATASETS, cfg.train_dataset)
        self.hooks = sorted((build(HOOKS, h) for h in cfg.get("hooks", [])), key=lambda h: h.priority)
        if self.fsdp is not None:
            check_wrap_classes(self.policy.denoiser, self.fsdp["wrap_classes"])
            check_fsdp_hooks(self.hooks)

        self.optimizer = build_optimizer(cfg.optimizer, self.policy.trainable_parameters())
        warmup = int(cfg.get("lr_warmup_iters", 0))
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: min(1.0, (it + 1) / warmup) if warmup else 1.0
        )
        # The lr scheduler is stepped by us once per iteration (not prepared: accelerate would
        # step it once per process). The policy keeps its bare denoiser; the runner owns the
        # wrapper that accelerate returns (DDP / FSDP) and runs the training forwards through it.
        # FSDP2 shards policy.denoiser in place: train_model is that module, and sampling forwards
        # through the policy gather the shards as training forwards do (treegrpo/distributed.py).
        self.train_model, self.optimizer = self.accelerator.prepare(self.policy.denoiser, self.optimizer)

        self.overlap_reward = bool(cfg.get("overlap_reward", False))
        self.pool = None  # the ThreadPoolExecutor of overlap_reward's reward thread (made on first use)
        self.pending: DrawnRollout | None = None  # the next iteration's rollout (overlap_reward)
        self.iteration = 0
        self.counters = {"nfe_sample": 0, "nfe_update": 0, "edges": 0, "wall_time": 0.0}
        self.last_checkpoint_iter = -1
        self.writer: MetricWriter | None = None
        self.ema = None  # an EMAHook sets itself here (EvalHook then evaluates the EMA weights)
        self.resumed_iteration: int | None = None  # set by resume(): later log records are dropped
        # the run folder is created only now, once the config has built: a failed start leaves none
        self.work_dir = Path(work_dir) if work_dir is not None else self.agree_on_run_dir(runs_root)
        self.checkpoint_dir = self.work_dir / "checkpoints"
        if self.is_main:
            for name in clean_partial_checkpoints(self.checkpoint_dir):
                print(f"removed {self.checkpoint_dir / name} (left by an interrupted checkpoint save)")
        self.accelerator.wait_for_everyone()
        if resume_from is not None:
            self.resume(resume_from)

    def agree_on_run_dir(self, runs_root: str | Path | None) -> Path:
        """The main process creates a new run folder under ``runs_root``; every process gets its path."""
        if runs_root is None:
            raise ValueError("Runner needs a work_dir or a runs_root to create a new run folder in")
        path = [str(create_run_dir(Path(runs_root), self.seed)) if self.is_main else None]
        return Path(broadcast_object_list(path, from_process=0)[0])

    # ------------------------------------------------------------------ main loop
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def train(self) -> None:
        self.open_writer()
        self.call_hooks("before_run")
        budgeted = self.max_nfe is not None or self.max_wall_time is not None
        bar = tqdm(range(self.iteration, self.max_iters), initial=self.iteration,
                   total=float("inf") if budgeted else self.max_iters, disable=not self.is_main,
                   desc="train", dynamic_ncols=True)
        try:
            for iteration in bar:
                metrics = self.train_iteration(iteration)
                self.iteration = iteration + 1
                self.call_hooks("after_iter", metrics)
                bar.set_postfix(reward=f"{metrics['reward/mean']:.4f}", loss=f"{metrics['losses/loss']:.2e}")
                if self.budget_spent():
                    break
        finally:
            self.close_reward_pool()  # waits for a running reward; drops the pending rollout
        self.call_hooks("after_run")
        self.close_writer()
        self.accelerator.wait_for_everyone()

    def budget_spent(self) -> bool:
        """True once ``max_nfe`` (sampling + update forwards) or ``max_wall_time`` is reached."""
        nfe = self.counters["nfe_sample"] + self.counters["nfe_update"]
        return bool((self.max_nfe is not None and nfe >= self.max_nfe)
                    or (self.max_wall_time is not None and self.counters["wall_time"] >= self.max_wall_time))

    def train_iteration(self, iteration: int) -> dict[str, float]:
        """One iteration: sample rollouts, score leaves, compute advantages, update the policy.
        With ``overlap_reward`` the rollout was sampled during the previous iteration, see
        :meth:`sample_and_score_overlapped`."""
        times: dict[str, float] = {}
        start = time.perf_counter()
        if self.overlap_reward:
            drawn, (rewards, all_rewards, reward_parts) = self.sample_and_score_overlapped(iteration, times)
        else:
            with self.phase(times, "sample"):
                drawn = self.draw_rollout(iteration)
            with self.phase(times, "reward"):
                rewards, all_rewards, reward_parts = self.collect_rewards(self.score_rollout(drawn))
        rollout, plan = drawn.rollout, drawn.plan
        if hasattr(self.schedule, "observe"):  # adaptive windows: every rank credits every tree
            self.schedule.observe(plan, self.accelerator.gather(tree_variances(
                rewards, rollout.leaf_prompt_index, len(rollout.prompts))).cpu())
        with self.phase(times, "advantage"):
            advantages = self.advantage(rollout, rewards, RankGroup(self.accelerator))  # global stats
        with self.phase(times, "update"):
            update_stats = self.update(rollout, advantages, iteration)
        if drawn.staleness:  # sampled before the last update: the first ratio measures staleness
            update_stats["losses/stale_ratio_max_dev"] = update_stats.pop("losses/onpolicy_ratio_max_dev")

        edges = int((rollout.parent >= 0).sum()) * self.world_size
        self.counters["nfe_update"] += update_stats.pop("nfe") * self.world_size
        self.counters["edges"] += edges
        times["iter"] = time.perf_counter() - start
        self.counters["wall_time"] += times["iter"]
        return {
            "reward/mean": all_rewards.mean().item(),
            "reward/std": all_rewards.std(unbiased=False).item(),
            "reward/min": all_rewards.min().item(),
            "reward/max": all_rewards.max().item(),
            **reward_parts,
            "adv/zero_std_groups": int(self.accelerator.gather(
                torch.tensor([advantages.zero_std_groups], device=self.device)).sum()),
            "adv/abs_mean": self.accelerator.gather(
                advantages.node[rollout.edge_nodes].abs().mean().reshape(1)).mean().item(),
            "rollout/window_start": plan.start,
            "rollout/leaves": int(rollout.leaf_nodes.numel()) * self.world_size,
            "rollout/edges": edges,
            "rollout/nfe": rollout.nfe * self.world_size,
            **({"rollout/staleness": drawn.staleness} if self.overlap_reward else {}),
            **update_stats,
            "lr": self.optimizer.param_groups[0]["lr"],
            **{f"time/{key}": value for key, value in times.items()},
            **{f"charts/{key}": value for key, value in self.counters.items()},
        }

    def phase(self, times: dict[str, float], name: str):
        """Context that charges a phase of the iteration (sample, reward, advantage, update) to
        ``times[name]``; tools/bench_rollout.py extends it with peak memory."""
        return timer(times, name, self.device)

    # ------------------------------------------------------------------ pieces of an iteration
    def prompts_for(self, iteration: int, records: bool = False) -> list:
        """This rank's share of the iteration's prompt batch (the same global batch on all ranks):
        prompt strings, or with ``records=True`` the records ``{'prompt', **fields}``."""
        gen = self.generator("prompts", iteration, rank=0)
        indices = torch.randint(len(self.train_dataset), (self.prompts_per_iter,), generator=gen)
        get = (lambda i: dataset_record(self.train_dataset, i)) if records else self.train_dataset.__getitem__
        return [get(i) for i in indices[self.rank :: self.world_size].tolist()]

    def draw_rollout(self, iteration: int, staleness: int = 0) -> DrawnRollout:
        """Sample the rollout of ``iteration`` (its prompts, window plan and noise) with the
        current weights; ``staleness``: updates the weights will get before it is trained on. Its
        sampling forwards are counted now, when they are spent."""
        records = self.prompts_for(iteration, records=True)
        prompts = [record.pop("prompt") for record in records]  # records keep the other fields
        plan = self.schedule.plan(iteration, self.sampler.num_steps, self.generator("schedule", iteration, rank=0))
        self.train_model.eval()
        # the records reach the policy only when it reads them (an edit model's input image)
        extra = {"records": records} if getattr(self.policy, "reads_records", False) else {}
        rollout = self.sampler.sample(self.policy, self.kernel, prompts, plan, self.noise(iteration), **extra)
        self.counters["nfe_sample"] += rollout.nfe * self.world_size
        return DrawnRollout(iteration, plan, records, rollout, staleness)

    def reward_log_values(self) -> dict[str, float]:
        """The reward's own extra log scalars of its last call (rewards not built on
        :class:`Reward` may lack ``log_values``)."""
        log_values = getattr(self.reward, "log_values", None)
        return dict(log_values()) if callable(log_values) else {}

    def update(self, rollout, advantages, iteration: int) -> dict[str, float]:
        """Clipped-ratio policy update over all edges, grouped by parent (one forward per parent)."""
        cfg = self.update_cfg
        model = self.train_model
        model.train()
        parents = rollout.parent_nodes
        num_parents = parents.numel()
        if cfg["prune"] is not None:  # the same count on every rank (per tree), see select_parents
            parents = select_parents(parents, rollout.parent, rollout.prompt_index, advantages.node,
                                     **cfg["prune"])
        stats: dict[str, list[float]] = defaultdict(list)
        nfe_before = self.policy.nfe
        shuffle = self.generator("shuffle", iteration)
        onpolicy_dev, optimizer_steps = 0.0, 0
        clipped = torch.zeros(2, cfg["num_inner_epochs"], dtype=torch.float64)  # [clipped, edges] per epoch
        # later epochs reuse the first epoch's reference predictions (same weights, same states)
        reference_cache = (ReferenceCache(rollout.num_nodes)
                           if self.loss.needs_reference and cfg["num_inner_epochs"] > 1 else None)
        for epoch in range(cfg["num_inner_epochs"]):
            minibatches = plan_micro_batches(parents, rollout.step[parents], cfg["num_minibatches"],
                                             cfg["micro_batch_size"], shuffle, cfg["per_step_batches"])
            for micro_batches in minibatches:
                num_edges = int(torch.isin(rollout.parent, torch.cat(micro_batches)).sum())
                for j, micro in enumerate(micro_batches):
                    last = j == len(micro_batches) - 1
                    sync = contextlib.nullcontext() if last else self.accelerator.no_sync(model)
                    with sync:
                        with self.accelerator.autocast():  # the reference too, as in sampling
                            batch = edge_log_probs(self.policy, self.kernel, rollout, micro,
                                                   with_kl=self.loss.needs_reference, model=model,
                                                   reference_cache=reference_cache)
                        loss, loss_stats = self.loss(batch.log_prob, rollout.log_prob[batch.child],
                                                     advantages.node[batch.child], batch.kl)
                        if not torch.isfinite(loss):
                            raise FloatingPointError(
                                f"non-finite loss {loss.item()} at iteration {iteration + 1}: "
                                f"check the rewards, the learning rate and mixed precision"
                            )
                        self.accelerator.backward(loss * batch.child.numel() / num_edges)
                    for key, value in loss_stats.items():
                        stats[f"losses/{key}"].append(value)
                    if "clip_frac" in loss_stats:  # a loss without it (a plugin) logs no clip fraction
                        clipped[:, epoch] += torch.tensor([loss_stats["clip_frac"], 1.0]) * batch.child.numel()
                    if optimizer_steps == 0:  # every micro-batch of the first, on-policy step
                        onpolicy_dev = max(onpolicy_dev, float(loss_stats["ratio_max_dev"]))
                grad_norm = self.accelerator.clip_grad_norm_(
                    self.policy.trainable_parameters(), cfg["max_grad_norm"]
                )
                if not torch.isfinite(torch.as_tensor(grad_norm)):
                    raise FloatingPointError(
                        f"non-finite gradient norm at iteration {iteration + 1}; the weights "
                        "were not updated and no checkpoint is written for this iteration"
                    )
                stats["update/grad_norm"].append(float(grad_norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                optimizer_steps += 1
        self.lr_scheduler.step()  # once per iteration: lr_warmup_iters counts iterations
        result = {key: sum(values) / len(values) for key, values in stats.items()}
        result["losses/onpolicy_ratio_max_dev"] = self.accelerator.gather(  # max over processes too
            torch.tensor([onpolicy_dev], device=self.device)).max().item()
        result.update(self.clip_fractions(clipped))
        result["nfe"] = self.policy.nfe - nfe_before
        result["update/nfe"] = result["nfe"] * self.world_size
        if cfg["prune"] is not None:
            result["update/pruned_parents"] = (num_parents - parents.numel()) * self.world_size
        return result

    def clip_fractions(self, clipped: torch.Tensor) -> dict[str, float]:
        """``clipped`` [2, epochs] (clipped edges, trained edges) of this process -> the share of
        edges whose ratio left the clip range, over all processes: ``update/clip_fraction`` (all
        epochs) and, with several inner epochs, ``update/clip_fraction_epoch{e}`` (e from 1)."""
        total = self.accelerator.gather(clipped.to(self.device).unsqueeze(0)).sum(0).cpu()
        if total[1].sum() == 0:
            return {}
        result = {"update/clip_fraction": (total[0].sum() / total[1].sum()).item()}
        if total.shape[1] > 1:
            result.update({f"update/clip_fraction_epoch{e + 1}": (total[0, e] / total[1, e]).item()
                           for e in range(total.shape[1]) if total[1, e] > 0})
        return result

    # ------------------------------------------------------------------ infrastructure
    def generator(self, purpose: str, iteration: int, rank: int | None = None) -> torch.Generator:
        """A generator seeded by (seed, iteration, rank, purpose); rank=0 gives all ranks the same."""
        rank = self.rank if rank is None else rank
        device = self.device if purpose == "sample" else "cpu"
        return make_generator(device, self.seed, iteration, rank, PURPOSES[purpose])

    def noise(self, iteration: int) -> PromptNoise:
        """The sampling noise of this rank's prompts: drawn from one generator shared by all ranks
        and indexed by global prompt, so N processes sample what one process would."""
        return PromptNoise(self.generator("sample", iteration, rank=0), self.rank, self.world_size)

    def call_hooks(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    def open_writer(self) -> None:
        """``log.jsonl`` (+ tensorboard unless ``tensorboard = False``, + wandb with a ``wandb``
        dict in the config) in the work dir, main process only."""
        if self.is_main and self.writer is None:
            self.writer = MetricWriter(self.work_dir, self.cfg.get("tensorboard", True),
                                       wandb=self.cfg.get("wandb"), run_config=self.cfg.to_dict(),
                                       resumed_iteration=self.resumed_iteration)

    def close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def log(self, metrics: dict) -> None:
        """Write metrics for the current iteration to the log (main process only)."""
        if self.writer is not None:
            self.writer.write(self.iteration, metrics)

    def save_checkpoint(self) -> Path | None:
        """Save the trainable weights, optimizer, lr scheduler, RNG, reward statistics and counters
        (the main process writes; under fsdp every process writes its shard)."""
        self.accelerator.wait_for_everyone()
        path = self.checkpoint_dir / f"iter_{self.iteration}"
        save = save_runner_checkpoint if self.fsdp is not None else save_unsharded
        save(self, path)
        self.last_checkpoint_iter = self.iteration
        self.accelerator.wait_for_everyone()
        return path

    def advantage_state(self) -> dict:
        return self.advantage.state_dict() if hasattr(self.advantage, "state_dict") else {}

    def schedule_state(self) -> dict | None:
        """The schedule's state (adaptive windows; the same on every rank), None if it has none."""
        return self.schedule.state_dict() if hasattr(self.schedule, "state_dict") else None

    def resume(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` and continue after it."""
        path = Path(path)
        if self.fsdp is not None or is_sharded_checkpoint(path):
            meta = resume_runner_checkpoint(self, path)
        else:
            meta = resume_unsharded(self, path)
        self.iteration = self.resumed_iteration = int(meta["iteration"])
        self.counters.update(meta.get("counters", {}))
        self.call_hooks("load_from_checkpoint", path)
        self.last_checkpoint_iter = self.iteration
