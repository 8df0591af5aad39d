"""Evaluation on a fixed prompt set with fixed seeds: reward means and a sample grid PNG."""
from __future__ import annotations

import torch

from ..registry import DATASETS, HOOKS, REWARDS, build
from ..rewards.base import check_rewards
from ..samplers.common import decode, ode_integrate
from ..utils import image_grid, make_generator
from .base import Hook


@torch.no_grad()
def generate(policy, kernel, prompts: list[str], num_steps: int, guidance_scale: float, seed: int,
             chunk_size: int = 64) -> torch.Tensor:
    """Deterministic (ODE) samples, one per prompt, from noise fixed by ``seed``: [P, 3, H, W]."""
    device = next(policy.denoiser.parameters()).device
    noise = torch.randn((len(prompts), *policy.latent_shape), generator=make_generator("cpu", seed))
    cond = policy.encode_prompts(prompts)
    levels = policy.noise_levels(num_steps).to(device)
    latents = ode_integrate(policy, kernel, noise.to(device), cond, levels, range(num_steps),
                            guidance_scale, chunk_size)
    return decode(policy, latents, chunk_size)


@HOOKS.register_module()
class EvalHook(Hook):
    """Every ``interval`` iterations (and before the first and after the last), sample the first
    ``num_prompts`` prompts of ``dataset`` with the ODE sampler from fixed noise and log the mean
    and std of the training reward and of any ``extra_rewards`` under ``eval/``. Writes
    ``eval/iter_<n>.png`` (grid of the first ``grid_size`` samples).
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
        self.prompts = [dataset[i] for i in range(count)]
        self.rewards = {"reward": runner.reward}
        for name, cfg in self.extra_rewards_cfg.items():
            self.rewards[name] = build(REWARDS, cfg)
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
        images = generate(
            policy, runner.kernel, self.prompts,
            self.num_steps or sampler.num_steps,
            self.guidance_scale if self.guidance_scale is not None else sampler.guidance_scale,
            self.seed,
        )
        policy.nfe = nfe_before  # evaluation forwards are not training cost
        results = {}
        for name, reward in self.rewards.items():
            scores = check_rewards(reward(images, self.prompts), len(self.prompts), name)
            results[f"eval/{name}_mean"] = scores.mean().item()
            results[f"eval/{name}_std"] = scores.std(unbiased=False).item()
        if runner.is_main:
            path = runner.work_dir / "eval" / f"iter_{runner.iteration:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image_grid(images[: self.grid_size], nrow=8).save(path)
        return results
