"""Encode a prompt set once and write the embeddings to safetensors shards.

    python tools/precompute_embeddings.py configs/treegrpo_sd3_hps.py --out embeds/hps_train
    python tools/precompute_embeddings.py CONFIG --prompts FILE --out DIR --batch-size 32 --shard-size 4096

Then train with ``--cfg-options policy.embedding_dir=DIR``: the policy reads a prompt's row from
the shards (lazily, one row at a time) instead of running its text encoders; prompts not in the
shards are still encoded. Prompts default to the config's ``train_dataset.path``; the policy's
negative prompt (CFG) is always included. Layout: see :mod:`treegrpo.embedding_cache`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from treegrpo.datasets.prompt_file import read_prompt_file  # noqa: E402
from treegrpo.embedding_cache import INDEX_FILE  # noqa: E402
from treegrpo.inference import load_config, load_policy  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Precompute prompt embeddings into safetensors shards")
    parser.add_argument("config", help="config file path (its policy's text encoders are used)")
    parser.add_argument("--out", required=True, help="output folder (index.json + embeddings-*.safetensors)")
    parser.add_argument("--prompts", help=".txt or .jsonl prompt file (default: train_dataset.path)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per text-encoder forward")
    parser.add_argument("--shard-size", type=int, default=4096, help="prompts per safetensors file")
    parser.add_argument("--device", help="where the text encoders run (default: cuda when available)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    return parser.parse_args(argv)


def prompt_list(cfg, path: str | None) -> list[str]:
    """Unique prompts of ``path`` (or the config's ``train_dataset.path``), in file order."""
    if path is None:
        path = (cfg.get("train_dataset") or {}).get("path")
        if path is None:
            raise ValueError("the config's train_dataset has no 'path': pass --prompts FILE")
    prompts, _ = read_prompt_file(path)
    return list(dict.fromkeys(prompts))


def main(argv=None) -> Path:
    args = parse_args(argv)
    if args.batch_size < 1 or args.shard_size < 1:
        raise ValueError("--batch-size and --shard-size must be >= 1")
    cfg = load_config(args.config, args.cfg_options)
    prompts = prompt_list(cfg, args.prompts)
    negative = getattr(cfg.policy, "get", lambda *_: None)("negative_prompt", "")
    prompts = list(dict.fromkeys(prompts + [negative or ""]))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy, _ = load_policy(cfg, device=device)
    encode = getattr(policy, "_encode", policy.encode_prompts)  # the text encoders, no cache
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list] = {}
    keys: list[str] = []
    for shard, start in enumerate(range(0, len(prompts), args.shard_size)):
        part = prompts[start : start + args.shard_size]
        name = f"embeddings-{shard:05d}.safetensors"
        chunks: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for b in range(0, len(part), args.batch_size):
                for key, value in encode(part[b : b + args.batch_size]).items():
                    chunks.setdefault(key, []).append(value.detach().cpu())
        keys = sorted(chunks)
        save_file({key: torch.cat(chunks[key]).contiguous() for key in keys}, str(out / name))
        rows.update({prompt: [name, i] for i, prompt in enumerate(part)})
        print(f"{out / name}: {len(part)} prompts")
    index = {"policy": cfg.policy["type"], "model_path": cfg.policy.get("model_path"), "keys": keys,
             "prompts": rows}
    (out / INDEX_FILE).write_text(json.dumps(index))
    print(f"{out / INDEX_FILE}: {len(rows)} prompts; train with --cfg-options policy.embedding_dir={out}")
    return out


if __name__ == "__main__":
    main()
