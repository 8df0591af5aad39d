"""Evaluation on a fixed prompt set with fixed seeds: reward means and a sample grid PNG."""
from __future__ import annotations

import contextlib

import torch

from ..advantages.distributed import RankGroup
from ..datasets import dataset_record
from ..registry import DATASETS, HOOKS, REWARDS, build
from ..rewards.base import check_rewards, metadata_caller
from ..samplers.common import decode, ode_integrate
from ..utils import make_generator, save_grid
from .base import Hook


def per_prompt_noise(latent_shape: tuple[int, ...], seed: int, count: int) -> torch.Tensor:
    """[count, *latent_shape] CPU noise; row i drawn with ``make_generator('cpu', seed, i)``, so a
    prompt's noise depends only on (seed, its index), not on the batch or the other prompts."""
    return torch.stack([torch.randn(latent_shape, generator=make_generator("cpu", seed, i)) for i in range(count)])


def gather_rows(group: RankGroup, local: torch.Tensor, count: int) -> torch.Tensor:
    """Rows of a strided split (rank r holds global rows r, r + W, ...; at most ceil(count / W))
    -> all ``count`` rows [count, ...] in global order, on every rank."""
    share = -(-count // group.world_size)
    padded = local.new_zeros((share, *local.shape[1:]))
    padded[: min(local.shape[0], share)] = local[:share]
    gathered = group.gather(padded).reshape(group.world_size, share, *local.shape[1:])
    return gathered.transpose(0, 1).reshape(group.world_size * share, *local.shape[1:])[:count]


@torch.no_grad()
def generate(policy, kernel, prompts: list[str], num_steps: int, guidance_scale: float, seed: int,
             chunk_size: int = 64, noise: torch.Tensor | None = None,
             image_device: torch.device | str | None = None, records: list[dict] | None = None) -> torch.Tensor:
    """Deterministic (ODE) samples, one per prompt: [P, 3, H, W] in [0, 1].

    Starts from ``noise`` [P, *latent_shape] when given (e.g. :func:`per_prompt_noise`), else
    from noise drawn at once with ``seed``. Prompts are encoded, sampled and decoded
    ``chunk_size`` at a time; each chunk's images go to ``image_device`` (default: the policy's).
    ``records``: the prompts' records, for policies that read them (``policy.encode``)."""
    device = next(policy.denoiser.parameters()).device
    if noise is None:
        noise = torch.randn((len(prompts), *policy.latent_shape), generator=make_generator("cpu", seed))
    elif tuple(noise.shape) != (len(prompts), *policy.latent_shape):
        raise ValueError(f"noise must have shape {[len(prompts), *policy.latent_shape]}, got {list(noise.shape)}")
    levels = policy.noise_levels(num_steps).to(device)
    images = []
    for start in range(0, len(prompts), chunk_size):
        rows = slice(start, start + chunk_size)
        cond = (policy.encode_prompts(prompts[rows]) if records is None
                else policy.encode(prompts[rows], records[rows]))
        latents = ode_integrate(policy, kernel, noise[rows].to(device), cond, levels, range(num_steps),
                                guidance_scale)
        images.append(decode(policy, latents).to(image_device or device))
    return torch.cat(images)


@HOOKS.register_module()
class EvalHook(Hook):
    """Every ``interval`` iterations (and before the first and after the last), sample the first
    ``num_prompts`` prompts of ``dataset`` with the ODE sampler from fixed noise and log the mean
    and std of the training reward and of any ``extra_rewards`` under ``eval/``. Writes
    ``eval/iter_<n>.png`` (grid of the first ``grid_size`` samples; video policies: an animated
    ``eval/iter_<n>.gif``, one grid per frame).

    With several processes the prompts are dealt out in turn (rank r samples prompts r, r + W, ...),
    each from its row of the evaluation noise (all prompts' noise drawn at once from ``seed``, as
    with one process), and the scores and grid images are gathered; the main process writes the
    grid. The result does not depend on the world size.
    """

    priority = 40

    def __init__(self, dataset: dict, interval: int = 25, num_prompts: int = 32, seed: int = 1234,
                 num_steps: int | None = None, guidance_scale: float | None = None,
                 extra_rewards: dict | None = None, grid_size: int = 32):
        if interval < 1:
            raise ValueError(f"EvalHook interval must be >= 1, got {interval}")
        self.dataset_cfg, self.interval, self.num_prompts = dataset, interval, num_prompts
        self.seed, self.num_steps, self.guidance_scale = seed, num_steps, guidance_scale
        self.extra_rewards_cfg = extra_rewards or {}
        self.grid_size = grid_size
        self.last_eval_iter = -1

    def before_run(self, runner) -> None:
        dataset = build(DATASETS, self.dataset_cfg)
        count = min(self.num_prompts, len(dataset))
        records = [dataset_record(dataset, i) for i in range(count)]
        self.prompts = [record.pop("prompt") for record in records]
        self.metadata = records  # each prompt's other fields, for rewards that take metadata
        self.rewards = {"reward": runner.reward}
        for name, cfg in self.extra_rewards_cfg.items():
            self.rewards[name] = build(REWARDS, cfg)
        self.reward_calls = {name: metadata_caller(reward) for name, reward in self.rewards.items()}
        if runner.iteration == 0:
            runner.log(self.evaluate(runner))

    def after_iter(self, runner, metrics: dict) -> None:
        if runner.iteration % self.interval == 0:
            runner.log(self.evaluate(runner))  # own log line: independent of LoggerHook's interval

    def after_run(self, runner) -> None:
        if self.last_eval_iter != runner.iteration:
            runner.log(self.evaluate(runner))

    def evaluate(self, runner) -> dict[str, float]:
        """Run the evaluation now; returns ``{'eval/<reward>_mean': ..., 'eval/<reward>_std': ...}``."""
        self.last_eval_iter = runner.iteration
        sampler = runner.sampler
        policy = runner.policy
        policy.denoiser.eval()
        nfe_before = policy.nfe
        ema = getattr(runner, "ema", None)
        use_ema = ema is not None and ema.eval_with_ema
        group = RankGroup(runner.accelerator)
        count = len(self.prompts)
        mine = list(range(group.rank, count, group.world_size))
        # Every rank samples the same number of rows (padded with its last prompt, or prompt 0;
        # the padding is dropped when gathering): FSDP's forwards are collectives, so unequal
        # numbers of forwards across ranks would hang.
        share = -(-count // group.world_size)
        rows = mine + [mine[-1] if mine else 0] * (share - len(mine))
        prompts = [self.prompts[i] for i in rows]
        eval_noise = torch.randn((count, *policy.latent_shape), generator=make_generator("cpu", self.seed))
        with ema.applied(runner) if use_ema else contextlib.nullcontext():
            images = generate(
                policy, runner.kernel, prompts,
                self.num_steps or sampler.num_steps,
                self.guidance_scale if self.guidance_scale is not None else sampler.guidance_scale,
                self.seed, noise=eval_noise[rows],
                records=[self.metadata[i] for i in rows] if getattr(policy, "reads_records", False) else None,
            )
        policy.nfe = nfe_before  # evaluation forwards are not training cost
        results = {"eval/ema": float(use_ema)}
        for name in self.rewards:
            call = self.reward_calls[name]
            local = check_rewards(call(images, prompts, [self.metadata[i] for i in rows]), len(prompts),
                                  name).float().to(runner.device)
            scores = gather_rows(group, local[: len(mine)], count)
            results[f"eval/{name}_mean"] = scores.mean().item()
            results[f"eval/{name}_std"] = scores.std(unbiased=False).item()
        grid_count = min(self.grid_size, count)
        pixels = (images[: len(mine)].clamp(0, 1) * 255).round().to(torch.uint8)  # 4x less to gather
        grid = gather_rows(group, pixels.to(runner.device), grid_count).float() / 255
        if runner.is_main:
            path = runner.work_dir / "eval" / f"iter_{runner.iteration:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_grid(grid, path, nrow=8)  # clips: iter_<n>.gif
        return results
