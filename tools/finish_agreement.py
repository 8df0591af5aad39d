"""Is a coarse ODE finish a faithful reward for the tree? Leaf rewards after ``suffix_steps`` S
against the full finish, per window start.

    python tools/finish_agreement.py configs/treegrpo_toy_layout.py --prompts data/toy_eval_prompts.txt \
        --num-prompts 64 --suffix-steps 1 2 3 --out work_dirs/finish_agreement
    python tools/finish_agreement.py configs/treegrpo_sd3_hps.py --prompts data/prompts.txt \
        --num-prompts 32 --suffix-steps 1 2 --device cuda --out finish_sd3

For each window start s (``--starts``, default every start the schedule allows) one tree per
prompt is sampled with the config's depth and k and the full finish; the same leaves are then
finished again with S ODE steps (``TreeSampler(suffix_steps=S)``'s finish) and both image sets are
scored with the config's reward. Per (s, S) it reports both mean rewards, the correlation of the
within-tree centred rewards (what the tree's advantages are made of: 1 = the same ranking and
spacing inside every tree) and the share of leaves whose centred reward has the same sign.
Use it before setting ``sampler.suffix_steps``: where the correlation is low, the coarse finish
trains on a different reward. Writes ``<out>/finish_agreement.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from treegrpo.datasets.prompt_file import read_first_prompts  # noqa: E402
from treegrpo.inference import load_config, load_policy  # noqa: E402
from treegrpo.registry import REWARDS, SCHEDULES, build  # noqa: E402
from treegrpo.rollout import index_cond  # noqa: E402
from treegrpo.run_files import write_report  # noqa: E402
from treegrpo.samplers import TreeSampler  # noqa: E402
from treegrpo.samplers.common import decode, ode_finish  # noqa: E402
from treegrpo.schedules import BranchPlan  # noqa: E402
from treegrpo.utils import make_generator  # noqa: E402


def within_tree_agreement(full: torch.Tensor, coarse: torch.Tensor) -> dict[str, float]:
    """Leaf rewards [P, L] of the same leaves (P trees of L leaves) under two finishes ->
    ``correlation``: sum(a * b) / (|a| |b|) of the rewards centred per tree (NaN when either is
    constant in every tree); ``sign_agreement``: share of the leaves with a nonzero centred full
    reward whose centred coarse reward has the same sign (NaN when there are none)."""
    if full.shape != coarse.shape or full.dim() != 2:
        raise ValueError(f"full and coarse must be [P, L] of the same shape, got {tuple(full.shape)} "
                         f"and {tuple(coarse.shape)}")
    a = (full - full.mean(1, keepdim=True)).double()
    b = (coarse - coarse.mean(1, keepdim=True)).double()
    norm = a.norm() * b.norm()
    correlation = (a * b).sum() / norm if norm > 0 else torch.tensor(float("nan"))
    decided = a != 0
    signs = (torch.sign(a[decided]) == torch.sign(b[decided])).double()
    return {"correlation": correlation.item(),
            "sign_agreement": signs.mean().item() if signs.numel() else float("nan")}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--checkpoint", help="a run folder or checkpoints/iter_<n> (default: base model)")
    parser.add_argument("--prompts", required=True, help=".txt (one prompt per line) or .jsonl file")
    parser.add_argument("--num-prompts", type=int, help="use the first N prompts (default: all)")
    parser.add_argument("--suffix-steps", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--starts", type=int, nargs="+", help="window starts (default: all that fit)")
    parser.add_argument("--batch", type=int, default=16, help="trees sampled per call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="where the policy runs (default: the config's)")
    parser.add_argument("--out", default="finish_agreement_out")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    args = parser.parse_args(argv)
    if any(s < 1 for s in args.suffix_steps) or args.batch < 1:
        raise ValueError(f"--suffix-steps must all be >= 1 and --batch >= 1, got {args.suffix_steps}, {args.batch}")
    return args


@torch.no_grad()
def score_start(policy, kernel, reward, prompts: list[str], plan: BranchPlan, sampler: TreeSampler,
                suffix_steps: list[int], seed: int, batch: int) -> dict[str, torch.Tensor]:
    """Leaf rewards [P, L] of the full finish (``'full'``) and of each S (``'S'``) for one window."""
    rewards = {"full": []} | {str(s): [] for s in suffix_steps}
    for first in range(0, len(prompts), batch):
        chunk = prompts[first:first + batch]
        rollout = sampler.sample(policy, kernel, chunk, plan, make_generator("cpu", seed, plan.start, first))
        leaves = rollout.latents[rollout.leaf_nodes]
        cond = index_cond(rollout.cond, rollout.leaf_prompt_index)
        rewards["full"].append(reward(rollout.images, rollout.leaf_prompts).float().cpu())
        for s in suffix_steps:
            final = ode_finish(policy, kernel, leaves, cond, rollout.levels, plan.stop, s,
                               rollout.guidance_scale, sampler.chunk_size)
            images = decode(policy, final, sampler.chunk_size)
            rewards[str(s)].append(reward(images, rollout.leaf_prompts).float().cpu())
    return {key: torch.cat(parts).view(len(prompts), plan.num_leaves) for key, parts in rewards.items()}


def markdown_report(result: dict) -> str:
    setup = result["setup"]
    lines = [
        "# Coarse ODE finish against the full finish",
        "",
        f"config `{setup['config']}`, checkpoint {setup['checkpoint'] or 'none (base model)'}, "
        f"{setup['num_prompts']} prompts, one tree each (k={setup['k']}, depth {setup['depth']}, "
        f"{setup['num_steps']} steps), seed {setup['seed']}",
        "",
        "| window start | suffix steps (full) | S | forwards per leaf | mean reward full | mean reward S "
        "| within-tree correlation | sign agreement |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['start']} | {row['full_suffix']} | {row['suffix_steps']} | {row['forwards_per_leaf']} "
                     f"| {row['mean_full']:.4f} | {row['mean_coarse']:.4f} | {row['correlation']:.3f} "
                     f"| {row['sign_agreement']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    cfg = load_config(args.config, args.cfg_options)
    prompts = read_first_prompts(args.prompts, args.num_prompts)
    num_steps = cfg.sampler.num_steps
    schedule = build(SCHEDULES, cfg.schedule)
    template = schedule.plan(0, num_steps, make_generator("cpu", args.seed, 0))
    latest = num_steps - template.depth
    starts = args.starts if args.starts is not None else list(range(latest + 1))
    if any(not 0 <= s <= latest for s in starts):
        raise ValueError(f"--starts must be in 0..{latest} (num_steps {num_steps} - depth {template.depth}), got {starts}")
    policy, kernel = load_policy(cfg, args.checkpoint, args.device)
    reward = build(REWARDS, cfg.reward)
    sampler = TreeSampler(num_steps, cfg.sampler.get("guidance_scale", 1.0), cfg.sampler.get("chunk_size"))
    rows = []
    for start in starts:
        plan = BranchPlan(start=start, depth=template.depth, k=template.k)
        scores = score_start(policy, kernel, reward, prompts, plan, sampler, args.suffix_steps, args.seed, args.batch)
        full_suffix = num_steps - plan.stop
        for s in args.suffix_steps:
            rows.append({"start": start, "full_suffix": full_suffix, "suffix_steps": s,
                         "forwards_per_leaf": min(s, full_suffix), "mean_full": scores["full"].mean().item(),
                         "mean_coarse": scores[str(s)].mean().item(),
                         **within_tree_agreement(scores["full"], scores[str(s)])})
    result = {
        "setup": {"config": str(args.config), "cfg_options": dict(args.cfg_options),
                  "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
                  "prompts_file": str(args.prompts), "num_prompts": len(prompts), "seed": args.seed,
                  "num_steps": num_steps, "k": template.k, "depth": template.depth,
                  "reward": dict(cfg.reward), "kernel": dict(cfg.kernel)},
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }
    write_report(args.out, "finish_agreement", result, markdown_report(result))
    return result


if __name__ == "__main__":
    main()
