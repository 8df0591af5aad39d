"""Export a treegrpo LoRA checkpoint as one safetensors file for ComfyUI's stock "Load LoRA" node.

    python tools/export_lora.py work_dirs/treegrpo_sd35_jpeg/<stamp> --out treegrpo_sd35.safetensors
    python tools/export_lora.py RUN/checkpoints/iter_300 --out lora.safetensors --family sd3 --dtype bfloat16

Copy the file to ``ComfyUI/models/loras/``. Keys: ``lora_unet_<module>`` (SD1.x, Qwen-Image, Wan
with the original Wan module names) or ``lora_transformer_<module>`` (SD3/3.5, FLUX) with
``.lora_down.weight``, ``.lora_up.weight`` and ``.alpha`` (see treegrpo/lora_keys.py for the
mapping and the ComfyUI code it relies on).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from treegrpo.checkpoint import list_checkpoints  # noqa: E402
from treegrpo.lora_export import (FAMILIES, LORA_SOURCES, check_alpha, check_family,  # noqa: E402
                                  check_family_matches, detect_family, load_checkpoint_lora, to_comfyui,
                                  unsupported_modules, write_safetensors)
from treegrpo.policies.diffusers_common import check_dtype  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a run folder (newest checkpoint) or a checkpoints/iter_<n> folder")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--family", help=f"one of {sorted(FAMILIES)} (default: from the run's config / the keys)")
    parser.add_argument("--dtype", help="cast lora_down/lora_up to float32 | bfloat16 | float16 (default: as stored)")
    parser.add_argument("--source", default="auto", choices=list(LORA_SOURCES),
                        help="read lora/pytorch_lora_weights.safetensors (diffusers), model.safetensors "
                        "(peft) or the EMA weights ema.safetensors (ema; runs with an EMAHook)")
    parser.add_argument("--alpha", type=float, help="override the LoRA alpha, > 0 (scale = alpha / rank)")
    return parser.parse_args(argv)


def check_out_path(out: str | Path) -> Path:
    """``--out`` must name a ``.safetensors`` file (what is written, and what ComfyUI's Load LoRA
    node reads as safetensors); ValueError otherwise."""
    path = Path(out)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"--out must end in .safetensors (the file is written in that format), got "
                         f"{str(out)!r}; e.g. --out {path.with_suffix('.safetensors').name}")
    if path.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder; give the file to write, e.g. {path / 'lora.safetensors'}")
    return path


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder itself, or the newest ``checkpoints/iter_<n>`` of a run folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass a run folder or a checkpoints/iter_<n> folder")
    if (path / "model.safetensors").is_file() or (path / "lora").is_dir():
        return path
    found = list_checkpoints(path)
    if not found:
        raise FileNotFoundError(f"no checkpoint found in {path} (expected checkpoints/iter_<n>/ with "
                                "model.safetensors, or lora/pytorch_lora_weights.safetensors)")
    return found[-1]


def main(argv=None) -> Path:
    args = parse_args(argv)
    if args.family is not None:
        check_family(args.family)
    check_alpha(args.alpha)
    check_out_path(args.out)
    dtype = check_dtype(args.dtype) if args.dtype else None
    checkpoint = find_checkpoint(args.path)
    modules, info = load_checkpoint_lora(checkpoint, args.source, args.alpha)
    if args.family is None:
        family = detect_family(modules, info["prefix"], info["policy_type"])
    else:
        family = check_family_matches(args.family, modules, info["prefix"], info["policy_type"])
    skipped = unsupported_modules(family, modules)
    if skipped:
        print(f"warning: ComfyUI's {family} LoRA loader does not map {len(skipped)} module(s), e.g. "
              f"{skipped[:3]}; it will skip them", file=sys.stderr)
    state = to_comfyui(modules, family, dtype)
    ranks = sorted({m.rank for m in modules.values()})
    alphas = sorted({m.alpha for m in modules.values()})
    metadata = {"format": "pt", "treegrpo_family": family, "treegrpo_checkpoint": str(checkpoint),
                "treegrpo_source": info["source"], "ss_network_module": "networks.lora",
                "ss_network_dim": json.dumps(ranks[0] if len(ranks) == 1 else ranks),
                "ss_network_alpha": json.dumps(alphas[0] if len(alphas) == 1 else alphas)}
    out = write_safetensors(args.out, state, metadata)
    print(f"wrote {out}: {len(modules)} {family} LoRA modules (rank {ranks}, alpha {alphas}) from {info['source']}")
    return out


if __name__ == "__main__":
    main()
