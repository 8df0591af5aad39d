"""Render one prompt's TreeGRPO tree: node previews, edges with advantages, leaves with rewards.

    python tools/visualize_tree.py configs/treegrpo_toy_shapes.py \
        --prompt "a small red circle on a blue background at the top" --out tree.png
    python tools/visualize_tree.py CONFIG --checkpoint work_dirs/<cfg>/<stamp> --prompt "..." \
        --start 0 --depth 3 --k 2

Video policies (Wan: leaves [L, F, 3, H, W]) get an animated GIF, one tree picture per frame
(``--out`` with suffix ``.gif``, ``--fps`` frames a second), written by treegrpo.utils.save_grid.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from treegrpo.inference import load_config, load_policy  # noqa: E402
from treegrpo.registry import REWARDS, SCHEDULES, build  # noqa: E402
from treegrpo.schedules import BranchPlan  # noqa: E402
from treegrpo.utils import make_generator, save_grid  # noqa: E402
from treegrpo.visualization import branched_sample, tree_advantage  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Draw one TreeGRPO tree for a prompt")
    parser.add_argument("config")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--checkpoint", help="a run folder or checkpoints/iter_<n> (default: base model)")
    parser.add_argument("--out", default="tree.png", help="PNG to write (default: tree.png; video: a .gif)")
    parser.add_argument("--fps", type=int, default=8, help="frames a second of a video tree's GIF (default: 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, help="window start (default: the config's schedule)")
    parser.add_argument("--depth", type=int, help="tree depth (default: the config's schedule)")
    parser.add_argument("--k", type=int, help="children per node (default: the config's schedule)")
    parser.add_argument("--thumb", type=int, default=64, help="preview size in pixels")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    if args.fps < 1:
        raise ValueError(f"--fps must be an int >= 1, got {args.fps}")
    cfg = load_config(args.config, args.cfg_options)
    policy, kernel = load_policy(cfg, args.checkpoint)
    reward, advantage = build(REWARDS, cfg.reward), tree_advantage(cfg.advantage)
    num_steps = cfg.sampler.num_steps
    default = build(SCHEDULES, cfg.schedule).plan(0, num_steps, make_generator("cpu", args.seed, 1))
    plan = BranchPlan(start=default.start if args.start is None else args.start,
                      depth=default.depth if args.depth is None else args.depth,
                      k=default.k if args.k is None else args.k)
    tree = branched_sample(
        policy, kernel, reward, cfg.reward["type"], advantage, args.prompt, plan, num_steps,
        cfg.sampler.get("guidance_scale", 1.0), make_generator("cpu", args.seed, 2), thumb=args.thumb)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if tree.frames:  # video: the tree's pictures as frames [1, F, 3, H, W] of one animated GIF
        clip = torch.stack([torch.from_numpy(np.array(f)).permute(2, 0, 1) for f in tree.frames]).float() / 255
        out = save_grid(clip[None], out, nrow=1, fps=args.fps)
    else:
        tree.picture.save(out)
    print(f"wrote {out} ({tree.rollout.num_nodes} nodes, {tree.rollout.leaf_nodes.numel()} leaves)")
    return out


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
