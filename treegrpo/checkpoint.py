"""Atomic training checkpoints: safetensors weights + a weights-only torch file for the optimizer.

Layout of ``checkpoints/iter_<n>/``:
- ``model.safetensors``: the policy's trainable tensors (full weights or LoRA);
- ``training_state.pt``: optimizer, lr scheduler and RNG states (loaded with ``weights_only=True``);
- ``meta.json``: iteration, seed, world size, counters and the config file.
A checkpoint is written to a temporary folder beside its final name and renamed when complete,
so an interrupted save never leaves a half-written ``iter_<n>``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

CKPT_PATTERN = re.compile(r"^iter_(\d+)$")


def save_checkpoint(
    directory: str | Path,
    model_state: dict[str, torch.Tensor],
    training_state: dict[str, Any],
    meta: dict[str, Any],
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write one checkpoint folder atomically; returns its final path. ``write_extra(folder)``
    may add files (e.g. an exported LoRA) before the folder is renamed into place."""
    final = Path(directory)
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
        torch.save(training_state, tmp / "training_state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if write_extra is not None:
            write_extra(tmp)
        old = final.with_name(final.name + f".old-{os.getpid()}")
        if final.exists():  # re-saving an iteration: keep the old copy until the new one is in place
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict]:
    """Read (model_state, training_state, meta) from a checkpoint folder."""
    path = Path(directory)
    expected = ["model.safetensors", "training_state.pt", "meta.json"]
    missing = [name for name in expected if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path} is not a complete treegrpo checkpoint (missing {missing}); pass a "
            "checkpoints/iter_<n> folder or a run folder that contains checkpoints/"
        )
    model_state = load_file(str(path / "model.safetensors"))
    training_state = torch.load(path / "training_state.pt", weights_only=True)
    meta = json.loads((path / "meta.json").read_text())
    return model_state, training_state, meta


def list_checkpoints(run_or_ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``<dir>/checkpoints`` (or ``<dir>`` itself), oldest first."""
    root = Path(run_or_ckpt_dir)
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CKPT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CKPT_PATTERN.match(p.name).group(1)))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or the newest checkpoint inside a run folder."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise FileNotFoundError(f"no checkpoint found at {path} (expected checkpoints/iter_<n>/)")
    return found[-1]
