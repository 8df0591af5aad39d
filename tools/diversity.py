"""Does branching shrink sample diversity? Tree leaves against independent (flat) samples.

    python tools/diversity.py configs/treegrpo_toy_shapes.py --prompts data/toy_eval_prompts.txt \
        --num-prompts 64 --out work_dirs/diversity
    python tools/diversity.py configs/treegrpo_sd3_hps.py --checkpoint work_dirs/<cfg>/<stamp> \
        --prompts data/prompts.txt --features clip --clip-model <CLIP folder> --device cuda --out div

For prompt i, the window ``plan`` is drawn from the config's schedule (``schedule.plan(i, T)``)
and shared by three sample sets of ``G = k**depth`` images each:

- ``tree``: one TreeSampler tree (one initial noise, shared ODE prefix, k-way SDE branching);
- ``flat``: FlatSampler with ``group_size=G`` and independent initial noises, SDE on the same
  window, so only the tree structure differs;
- ``reference``: a second, independent flat set (skip with ``--skip-reference``): KID(flat,
  reference) is the value KID takes between two sets from the same distribution at this size.

Features: the shipped toy classifier's penultimate layer (``--features toy``) or projected CLIP
image embeddings (``--features clip --clip-model PATH``). Reports KID(tree, flat) and KID(flat,
reference) over all prompts' samples (mean +- std over random subsets) and the within-group
mean pairwise distance of tree and flat (mean +- population std over prompts); writes
``<out>/diversity.json`` and ``<out>/diversity.md``. Prompt i's samples depend only on
(seed, i), not on the other prompts.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402
from tqdm import tqdm  # noqa: E402

from treegrpo.datasets.prompt_file import read_first_prompts  # noqa: E402
from treegrpo.diversity import DISTANCES, clip_features, kid, mean_pairwise_distance, toy_features  # noqa: E402
from treegrpo.inference import load_config, load_policy  # noqa: E402
from treegrpo.registry import SCHEDULES, build  # noqa: E402
from treegrpo.run_files import write_report  # noqa: E402
from treegrpo.samplers import FlatSampler, TreeSampler  # noqa: E402
from treegrpo.utils import PURPOSES, make_generator  # noqa: E402

FEATURES = ("toy", "clip")
SETS = {"tree": 10, "flat": 11, "reference": 12}  # generator purpose of each sample set
KID_PURPOSE = 13


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="KID and within-group diversity: tree leaves vs flat samples")
    parser.add_argument("config")
    parser.add_argument("--checkpoint", help="a run folder or checkpoints/iter_<n> (default: base model)")
    parser.add_argument("--ema", action="store_true", help="load the checkpoint's EMA weights")
    parser.add_argument("--prompts", required=True, help=".txt (one prompt per line) or .jsonl file")
    parser.add_argument("--num-prompts", type=int, help="use the first N prompts (default: all)")
    parser.add_argument("--features", choices=FEATURES, default="toy",
                        help="toy: the toy classifier's penultimate layer; clip: CLIP image embeddings")
    parser.add_argument("--clip-model", help="transformers CLIPModel folder or hub id (--features clip)")
    parser.add_argument("--toy-classifier", help="toy classifier safetensors (default: the shipped one)")
    parser.add_argument("--distance", choices=DISTANCES, default="l2", help="within-group distance")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--skip-reference", action="store_true",
                        help="do not sample the second flat set (no KID(flat, reference))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="where the policy and the feature model run (default: the config's)")
    parser.add_argument("--out", default="diversity_out", help="output folder (default: diversity_out)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    args = parser.parse_args(argv)
    if args.num_prompts is not None and args.num_prompts < 1:
        parser.error(f"--num-prompts must be >= 1, got {args.num_prompts}")
    if args.features == "clip" and not args.clip_model:
        parser.error("--features clip needs --clip-model PATH (a transformers CLIPModel folder)")
    return args


def feature_extractor(args: argparse.Namespace, device: torch.device) -> tuple[Callable, dict]:
    """(images [L, 3, H, W] -> features [L, D], description for the report)."""
    if args.features == "toy":
        from treegrpo.toy import CLASSIFIER_WEIGHTS
        from treegrpo.toy.models import load_models

        path = Path(args.toy_classifier) if args.toy_classifier else CLASSIFIER_WEIGHTS
        classifier = load_models(path, ("classifier",), device)["classifier"].requires_grad_(False)
        return (lambda images: toy_features(classifier, images)), {"kind": "toy", "path": str(path)}
    from treegrpo.rewards.clip_family import load_clip_model

    model = load_clip_model(args.clip_model, key="--clip-model").to(device).requires_grad_(False)
    return (lambda images: clip_features(model, images)), {"kind": "clip", "path": str(args.clip_model)}


def sample_prompt(policy, kernel, prompt: str, plan, samplers: dict, seed: int, index: int) -> dict:
    """Images [G, 3, H, W] (CPU) and NFE of each sample set of one prompt."""
    out = {}
    for name, sampler in samplers.items():
        generator = make_generator("cpu", seed, index, SETS[name])
        rollout = sampler.sample(policy, kernel, [prompt], plan, generator)
        out[name] = (rollout.images.float().cpu(), rollout.nfe)
    return out


def mean_std(values: torch.Tensor) -> dict:
    """{'mean', 'std'} (population std) of a 1-D tensor."""
    return {"mean": values.mean().item(), "std": values.std(correction=0).item()}


def fmt(value: float) -> str:
    """Numbers in diversity.md: 4 significant digits."""
    return f"{value:.4g}"


def kid_text(setup: dict) -> str:
    """The line above the KID table: how the subsets were drawn."""
    total = setup["num_prompts"] * setup["group_size"]
    if setup["kid_subset_size"] >= total:
        return (f"KID = unbiased polynomial MMD^2 of the whole sets ({total} samples each; std 0, "
                "set --kid-subset-size below that for a spread over subsets):")
    return (f"KID (unbiased polynomial MMD^2 over {setup['kid_subsets']} subsets of "
            f"{setup['kid_subset_size']} of the {total} samples; mean +- std over subsets):")


def markdown_report(result: dict) -> str:
    """diversity.md from the content of diversity.json."""
    s = result["setup"]
    lines = [
        "# Sample diversity: tree leaves vs independent samples", "",
        f"config `{s['config']}`, checkpoint {s['checkpoint'] or 'none (base model)'}, "
        f"{s['num_prompts']} prompts x {s['group_size']} samples (k={s['k']}, depth={s['depth']}, "
        f"{s['num_steps']} steps), features {s['features']['kind']} ({s['features']['dim']}-d), "
        f"seed {s['seed']}", "",
        kid_text(s), "",
        "| sets | KID mean | KID std |", "|---|---:|---:|",
    ]
    names = {"tree_vs_flat": "tree leaves vs flat samples",
             "flat_vs_reference": "flat vs a second flat set (reference)"}
    for key, value in result["kid"].items():
        lines.append(f"| {names[key]} | {fmt(value['mean'])} | {fmt(value['std'])} |")
    lines += ["", f"Within-group diversity (mean pairwise {s['distance']} distance of a prompt's "
              f"{s['group_size']} samples; mean +- std over prompts):", "",
              "| samples | mean | std |", "|---|---:|---:|"]
    for key, value in result["diversity"].items():
        if key != "tree_over_flat":
            lines.append(f"| {key} | {fmt(value['mean'])} | {fmt(value['std'])} |")
    lines += ["", f"tree / flat diversity ratio: {fmt(result['diversity']['tree_over_flat'])}", ""]
    return "\n".join(lines)


@torch.no_grad()
def main(argv=None) -> dict:
    """Run the comparison; returns the content of diversity.json."""
    args = parse_args(argv)
    started = time.perf_counter()
    cfg = load_config(args.config, args.cfg_options)
    prompts = read_first_prompts(args.prompts, args.num_prompts)
    policy, kernel = load_policy(cfg, args.checkpoint, args.device, ema=args.ema)
    device = next(policy.denoiser.parameters()).device
    extract, features_info = feature_extractor(args, device)

    num_steps = cfg.sampler.num_steps
    guidance = cfg.sampler.get("guidance_scale", 1.0)
    chunk = cfg.sampler.get("chunk_size")
    schedule = build(SCHEDULES, cfg.schedule)
    plans = [schedule.plan(i, num_steps, make_generator("cpu", args.seed, i, PURPOSES["schedule"]))
             for i in range(len(prompts))]
    k, depth = plans[0].k, plans[0].depth  # k: an int, or a tuple of per-depth ints
    group = plans[0].num_leaves
    if group < 2 or any(p.num_leaves != group for p in plans):
        raise ValueError(f"the schedule {schedule!r} must give k**depth >= 2 leaves per tree, the same "
                         f"for every prompt (a group to compare), got {sorted({p.num_leaves for p in plans})}")
    samplers = {"tree": TreeSampler(num_steps, guidance, chunk_size=chunk),
                "flat": FlatSampler(num_steps, group, guidance, shared_noise=False, chunk_size=chunk)}
    if not args.skip_reference:
        samplers["reference"] = FlatSampler(num_steps, group, guidance, shared_noise=False, chunk_size=chunk)

    feats = {name: [] for name in samplers}
    nfe = {name: 0 for name in samplers}
    for i, prompt in enumerate(tqdm(prompts, desc="sampling", disable=None)):
        for name, (images, n) in sample_prompt(policy, kernel, prompt, plans[i], samplers, args.seed, i).items():
            feats[name].append(extract(images.to(device)).double().cpu())
            nfe[name] += n
    grouped = {name: torch.stack(rows) for name, rows in feats.items()}  # [P, G, D]
    flat_rows = {name: g.reshape(-1, g.shape[-1]) for name, g in grouped.items()}
    kid_args = dict(subsets=args.kid_subsets, subset_size=args.kid_subset_size)
    kids = {"tree_vs_flat": kid(flat_rows["tree"], flat_rows["flat"], **kid_args,
                                generator=make_generator("cpu", args.seed, KID_PURPOSE, 0))}
    if "reference" in grouped:
        kids["flat_vs_reference"] = kid(flat_rows["flat"], flat_rows["reference"], **kid_args,
                                        generator=make_generator("cpu", args.seed, KID_PURPOSE, 1))
    per_prompt = {name: mean_pairwise_distance(grouped[name], args.distance) for name in ("tree", "flat")}
    diversity = {name: mean_std(values) for name, values in per_prompt.items()}
    diversity["tree_over_flat"] = diversity["tree"]["mean"] / diversity["flat"]["mean"]

    result = {
        "setup": {
            "config": str(args.config), "cfg_options": dict(args.cfg_options),
            "checkpoint": None if args.checkpoint is None else str(args.checkpoint), "ema": args.ema,
            "prompts_file": str(args.prompts), "num_prompts": len(prompts), "seed": args.seed,
            "num_steps": num_steps, "guidance_scale": guidance, "schedule": repr(schedule),
            "kernel": dict(cfg.kernel), "k": k, "depth": depth, "group_size": group,
            "features": {**features_info, "dim": int(grouped["tree"].shape[-1])},
            "distance": args.distance, "kid_subsets": args.kid_subsets,
            "kid_subset_size": min(args.kid_subset_size, len(prompts) * group),
        },
        "kid": {key: {"mean": m, "std": s} for key, (m, s) in kids.items()},
        "diversity": diversity,
        "nfe": nfe,
        "seconds": time.perf_counter() - started,
        "per_prompt": [{"index": i, "prompt": p, "window_start": plans[i].start,
                        "tree": per_prompt["tree"][i].item(), "flat": per_prompt["flat"][i].item()}
                       for i, p in enumerate(prompts)],
    }
    write_report(args.out, "diversity", result, markdown_report(result))
    return result


if __name__ == "__main__":
    main()
