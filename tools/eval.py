"""Evaluate a policy (base model or checkpoint) on a prompt file with several rewards.

    python tools/eval.py configs/treegrpo_toy_shapes.py --checkpoint work_dirs/<cfg>/<stamp> \
        --prompts data/toy_eval_prompts.txt --rewards reward,JPEGCompressibility --out eval_out
    python tools/eval.py configs/treegrpo_sd3_hps.py --prompts FILE --rewards hps,image_reward \
        --num-steps 28 --guidance-scale 4.5 --batch-size 8 --seed 0

One image per prompt, sampled with the ODE from noise seeded per prompt (``seed``, prompt index),
so an image and its scores do not depend on ``--batch-size`` or on the other prompts of the file.
Reward names (comma separated) are looked up in this order: an entry of the config's optional
``eval_rewards`` dict (name -> reward config, e.g. ``hps=dict(type='HPSv2', checkpoint=...)``),
``reward`` = the config's training reward, or a registered REWARDS type built with default args.
A .jsonl prompt file's other fields reach the rewards that accept ``metadata``, and the policies
that read records (an edit model's ``image``, relative to ``policy.image_root``).
Writes ``<out>/metrics.md`` (table: reward, mean, std, n), ``metrics.csv``, ``metrics.json``
(settings and per-prompt scores) and ``grid.png``, and prints the table.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from treegrpo.datasets.prompt_file import read_prompt_file  # noqa: E402
from treegrpo.hooks.evaluation import generate, per_prompt_noise  # noqa: E402
from treegrpo.inference import load_config, load_policy  # noqa: E402
from treegrpo.registry import REWARDS, build, registered_names  # noqa: E402
from treegrpo.rewards.base import check_rewards, load_reward_weights, metadata_caller  # noqa: E402
from treegrpo.benchmarking import PAPER_REWARD_MAX, normalized_reward  # noqa: E402
from treegrpo.utils import derive_seed, save_grid  # noqa: E402

TRAINING_REWARD = "reward"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Score a policy on a prompt file with several rewards")
    parser.add_argument("config", help="config file path")
    parser.add_argument("--checkpoint", help="a run folder or checkpoints/iter_<n> (default: base model)")
    parser.add_argument("--ema", action="store_true", help="load the checkpoint's EMA weights (EMAHook runs)")
    parser.add_argument("--prompts", required=True, help=".txt (one prompt per line) or .jsonl file")
    parser.add_argument("--rewards", required=True,
                        help="comma-separated names: eval_rewards entries, 'reward' or REWARDS types")
    parser.add_argument("--out", default="eval_out", help="output folder (default: eval_out)")
    parser.add_argument("--seed", type=int, default=1234, help="noise of prompt i: seed (seed, i)")
    parser.add_argument("--num-steps", type=int, help="ODE steps (default: the config's sampler)")
    parser.add_argument("--guidance-scale", type=float, help="CFG scale (default: the config's sampler)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per forward / reward call")
    parser.add_argument("--grid-size", type=int, default=64, help="images in grid.png (first N)")
    parser.add_argument("--device", help="where the policy runs (default: cuda when available, else cpu)")
    parser.add_argument("--baseline", help="metrics.json (or its folder) of the untuned model: adds the "
                        "paper's normalised reward (r - r_base) / (r_max - r_base) for HPSv2, "
                        "ImageReward, Aesthetic and CLIPScore")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config keys, e.g. policy.sigma_shift=3.0")
    args = parser.parse_args(argv)
    for key in ("batch_size", "grid_size", "num_steps"):
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    return args


def reward_configs(names: list[str], cfg) -> dict[str, dict]:
    """Reward names -> reward configs (see the module docstring for the lookup order).

    Raises ValueError for a duplicate or an unknown name, listing every available name.
    """
    eval_rewards = dict(cfg.get("eval_rewards") or {})
    registered = registered_names(REWARDS)
    configs = {}
    for name in names:
        if name in configs:
            raise ValueError(f"--rewards names {name!r} twice")
        if name in eval_rewards:
            configs[name] = dict(eval_rewards[name])
        elif name == TRAINING_REWARD and cfg.get("reward") is not None:
            configs[name] = dict(cfg.reward)
        elif name in registered:
            configs[name] = dict(type=name)
        else:
            raise ValueError(
                f"unknown reward name {name!r}: it is neither an entry of the config's "
                f"eval_rewards {sorted(eval_rewards)} nor '{TRAINING_REWARD}' (the config's "
                f"training reward) nor a registered REWARDS type {registered}. Add it to "
                f"eval_rewards in the config, or import its module via custom_imports."
            )
    return configs


def build_rewards(configs: dict[str, dict]) -> dict:
    """Build each reward and load its weights now, before any image is generated, so a missing
    file or argument fails at once."""
    rewards = {}
    for name, reward_cfg in configs.items():
        try:
            rewards[name] = build(REWARDS, reward_cfg)
        except TypeError as error:
            raise ValueError(
                f"reward {name!r} ({reward_cfg}) cannot be built: {error}. Give its arguments "
                f"(e.g. checkpoint=...) in the config's eval_rewards: "
                f"eval_rewards = dict({name}=dict(type='{reward_cfg['type']}', ...))"
            ) from error
        load_reward_weights(rewards[name])
    return rewards


def score(reward, name: str, images: torch.Tensor, prompts: list[str], batch_size: int,
          device: torch.device | str = "cpu", metadata: list[dict] | None = None) -> torch.Tensor:
    """Scores [P] float32 (checked by check_rewards), ``batch_size`` images per reward call; the
    images go to ``device`` (the policy's), where rewards without a device of their own run.
    ``metadata`` (P dicts: the prompt records' other fields) goes to rewards that accept it."""
    call = metadata_caller(reward)
    parts = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        meta = None if metadata is None else metadata[start:start + batch_size]
        with torch.no_grad():
            out = call(images[start:start + batch_size].to(device), chunk, meta)
        parts.append(check_rewards(out, len(chunk), name))
    return torch.cat(parts)


def summarize(scores: dict[str, torch.Tensor]) -> list[dict]:
    """{name: scores [P]} -> rows ``{'reward', 'mean', 'std', 'n'}`` (population std)."""
    return [{"reward": name, "mean": values.mean().item(),
             "std": values.std(correction=0).item(), "n": int(values.numel())}
            for name, values in scores.items()]


def read_baseline(baseline: str | Path) -> dict[str, dict]:
    """The ``rewards`` entry of a baseline metrics.json (a file or the folder holding it)."""
    path = Path(baseline)
    path = path / "metrics.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"--baseline {baseline}: no metrics.json there (run tools/eval.py "
                                "on the untuned model first)")
    return json.loads(path.read_text())["rewards"]


def add_normalized(rows: list[dict], configs: dict[str, dict], base: dict[str, dict]) -> None:
    """Add ``normalized`` to each row whose reward type has a paper maximum and a baseline mean
    (the row's name in the baseline's rewards); others get None."""
    for row in rows:
        maximum = PAPER_REWARD_MAX.get(configs[row["reward"]].get("type"))
        known = maximum is not None and row["reward"] in base
        row["normalized"] = (normalized_reward(row["mean"], base[row["reward"]]["mean"], maximum)
                             if known else None)


def markdown_table(rows: list[dict]) -> str:
    """Summary rows -> a markdown table with 4 decimals (a normalised column when present)."""
    normalized = any("normalized" in r for r in rows)
    lines = ["| reward | mean | std | n |" + (" normalised |" if normalized else ""),
             "|---|---:|---:|---:|" + ("---:|" if normalized else "")]
    for r in rows:
        line = f"| {r['reward']} | {r['mean']:.4f} | {r['std']:.4f} | {r['n']} |"
        if normalized:
            line += " - |" if r.get("normalized") is None else f" {r['normalized']:.4f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, rows: list[dict], info: dict, images: torch.Tensor, grid_size: int) -> None:
    """Write metrics.md, metrics.csv, metrics.json and grid.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.md").write_text(markdown_table(rows))
    with open(out / "metrics.csv", "w", newline="") as file:
        fields = ["reward", "mean", "std", "n"] + (["normalized"] if any("normalized" in r for r in rows) else [])
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (out / "metrics.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    save_grid(images[:grid_size], out / "grid.png", nrow=8)  # video clips: grid.gif


def main(argv=None) -> dict:
    """Run the evaluation; returns the content of metrics.json."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    names = [name.strip() for name in args.rewards.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--rewards must name at least one reward, got {args.rewards!r}")
    configs = reward_configs(names, cfg)
    prompts, metadata = read_prompt_file(args.prompts)
    baseline = read_baseline(args.baseline) if args.baseline else None
    rewards = build_rewards(configs)
    for name, reward in rewards.items():
        if getattr(reward, "normalize", None) == "batch":
            print(f"warning: reward {name!r} normalises over the batch: its scores depend on "
                  f"--batch-size and on the other prompts", file=sys.stderr)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy, kernel = load_policy(cfg, args.checkpoint, device, ema=args.ema)
    sampler = cfg.get("sampler") or {}
    num_steps = args.num_steps or sampler.get("num_steps")
    if num_steps is None:
        raise ValueError("the config has no sampler.num_steps: pass --num-steps")
    guidance = args.guidance_scale if args.guidance_scale is not None else sampler.get("guidance_scale", 1.0)
    # prompt i starts from noise seeded with (seed, i): its image does not depend on --batch-size,
    # which only sets how many prompts share a forward pass
    noise = per_prompt_noise(policy.latent_shape, args.seed, len(prompts))
    records = metadata if getattr(policy, "reads_records", False) else None  # e.g. an edit model's input image
    images = generate(policy, kernel, prompts, num_steps, guidance, args.seed, chunk_size=args.batch_size,
                      noise=noise, image_device="cpu", records=records)
    device = next(policy.denoiser.parameters()).device
    scores = {name: score(reward, name, images, prompts, args.batch_size, device, metadata)
              for name, reward in rewards.items()}

    rows = summarize(scores)
    if args.baseline:
        add_normalized(rows, configs, baseline)
    info = {
        "config": str(args.config),
        "cfg_options": dict(args.cfg_options),
        "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
        "ema": args.ema,
        "prompts_file": str(args.prompts),
        "seed": args.seed,
        "num_steps": num_steps,
        "guidance_scale": guidance,
        "batch_size": args.batch_size,
        "rewards": {name: {"config": configs[name], **{k: v for k, v in row.items() if k != "reward"}}
                    for name, row in zip(scores, rows)},
        "per_prompt": [{"index": i, "prompt": prompt, "noise_seed": derive_seed(args.seed, i),
                        "scores": {name: values[i].item() for name, values in scores.items()}}
                       for i, prompt in enumerate(prompts)],
    }
    out = Path(args.out)
    write_outputs(out, rows, info, images, args.grid_size)
    print(markdown_table(rows), end="")
    print(f"wrote {out}/metrics.md, metrics.csv, metrics.json, grid.png (video samples: grid.gif)")
    return info


if __name__ == "__main__":
    main()
