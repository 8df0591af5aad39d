"""Run the ComfyUI pack's toy-world branched-denoising node outside ComfyUI and save its outputs.

    python tools/comfyui_example.py          # work_dirs/comfyui_example/comfyui_branched_denoising.png
    python tools/comfyui_example.py --docs   # the README picture, docs/comfyui_branched_denoising.png
    python tools/comfyui_example.py --checkpoint work_dirs/treegrpo_toy_shapes/<stamp> --out tree.png

Calls the same functions as the workflow ``comfyui_nodes/workflows/toy_branched_denoising_api.json``
(Load treegrpo checkpoint -> Branched denoising) with its settings, converts the node's IMAGE output
([1, H, W, 3] in [0, 1]) to a PNG and prints the node's reward / advantage table. CPU, no download.
Paths are looked up in the pack's model folders: $TREEGRPO_COMFY_ROOT, then the checkout's ``configs/``
and ``work_dirs/`` (names as in the checkout: ``configs/...``, ``work_dirs/...``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from comfyui_nodes.nodes import (TOY_CONFIG, TOY_PROMPT, TreegrpoBranchedDenoising,  # noqa: E402
                                 TreegrpoLoadCheckpoint)

PICTURE = "comfyui_branched_denoising.png"
DEFAULT_OUT = ROOT / "work_dirs" / "comfyui_example" / PICTURE
DOCS_OUT = ROOT / "docs" / PICTURE


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=TOY_CONFIG)
    parser.add_argument("--checkpoint", default="", help="run folder / checkpoint / LoRA (default: base weights)")
    parser.add_argument("--prompt", default=TOY_PROMPT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--window-start", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eta", type=float, default=0.7)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", default=str(DEFAULT_OUT),
                       help=f"PNG to write (default: {DEFAULT_OUT.relative_to(ROOT)})")
    where.add_argument("--docs", action="store_const", const=str(DOCS_OUT), dest="out",
                       help=f"write the README picture {DOCS_OUT.relative_to(ROOT)} (tracked in git)")
    return parser.parse_args(argv)


def comfy_image_to_pil(image) -> Image.Image:
    """The first image of a ComfyUI IMAGE batch [B, H, W, 3] in [0, 1] -> PIL RGB."""
    array = (image[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array, "RGB")


def main(argv=None) -> Path:
    args = parse_args(argv)
    (pipeline,) = TreegrpoLoadCheckpoint().load(args.config, args.checkpoint, "cpu")
    tree, leaves, table = TreegrpoBranchedDenoising().run(
        pipeline, args.prompt, args.seed, args.k, args.depth, args.window_start, args.steps, args.eta)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    comfy_image_to_pil(tree).save(out)
    print(table)
    print(f"wrote {out} (tree {list(tree.shape)}, leaves {list(leaves.shape)})")
    return out


if __name__ == "__main__":
    main()
