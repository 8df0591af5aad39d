"""Atomic training checkpoints: safetensors weights + a weights-only torch file for the optimizer.

Layout of ``checkpoints/iter_<n>/``:
- ``model.safetensors``: the policy's trainable tensors (full weights or LoRA);
- ``training_state.pt``: optimizer, lr scheduler and RNG states (loaded with ``weights_only=True``),
  and every process's per-prompt reward statistics (``advantage_per_rank``);
- ``meta.json``: iteration, seed, world size, counters and the config file.
A checkpoint is written to a temporary folder beside its final name, flushed to disk (files and
folder fsynced) and renamed when complete, so an interrupted save never leaves a half-written
``iter_<n>``. Every file read here is checked; a damaged one gives a :class:`CheckpointError`
naming the file. An FSDP-sharded run writes the layout of :mod:`treegrpo.sharded_checkpoint`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CKPT_PATTERN = re.compile(r"^iter_(\d+)$")
PARTIAL_PATTERN = re.compile(r"^(iter_\d+)\.(tmp|old)-\d+$")  # left by a save that was killed
TRAINING_STATE_KEYS = ("optimizer", "lr_scheduler", "torch_rng")
OLDER_CHECKPOINT_HINT = "resume from an older checkpoints/iter_<n> of the run, or start a new run"


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be used (damaged, or from another model)."""


def fsync_tree(folder: Path) -> None:
    """Flush every file below ``folder``, then the folders themselves, to disk."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as file:
                os.fsync(file.fileno())
    for path in [*sorted(p for p in folder.rglob("*") if p.is_dir()), folder]:
        fsync_dir(path)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        fsync_tree(tmp)  # the data is on disk before the rename makes it visible
        old = final.with_name(final.name + f".old-{os.getpid()}")
        if final.exists():  # re-saving an iteration: keep the old copy until the new one is in place
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(final.parent)  # the rename itself survives a power loss
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def clean_partial_checkpoints(checkpoint_dir: str | Path) -> list[str]:
    """Remove what killed saves left in ``checkpoint_dir``: ``iter_<n>.tmp-<pid>`` folders
    (incomplete) and ``iter_<n>.old-<pid>`` copies; an ``.old`` copy whose ``iter_<n>`` is missing
    (killed between the two renames) is complete and is renamed back. Returns the names removed."""
    root = Path(checkpoint_dir)
    removed = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        match = PARTIAL_PATTERN.match(path.name)
        if not match or not path.is_dir():
            continue
        final = root / match.group(1)
        if match.group(2) == "old" and not final.exists():
            os.replace(path, final)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a missing, truncated or corrupt file names itself."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass a complete checkpoints/iter_<n> folder "
                                "(model.safetensors, training_state.pt, meta.json) or a run folder")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}): it is truncated "
                              f"or corrupt; {OLDER_CHECKPOINT_HINT}") from exc


def read_meta(path: str | Path) -> dict[str, Any]:
    """``meta.json``: a JSON object with an integer ``iteration``."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); {OLDER_CHECKPOINT_HINT}") from exc
    iteration = meta.get("iteration") if isinstance(meta, dict) else None
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise CheckpointError(f"{path} has no valid 'iteration' (a non-negative integer), got "
                              f"{iteration!r}; {OLDER_CHECKPOINT_HINT}")
    return meta


def read_training_state(path: str | Path) -> dict[str, Any]:
    """``training_state.pt`` (weights only) with the optimizer, lr scheduler and RNG states."""
    path = Path(path)
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises OSError, RuntimeError, UnpicklingError...
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc}): it is truncated "
                              f"or corrupt; {OLDER_CHECKPOINT_HINT}") from exc
    missing = [key for key in TRAINING_STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks the {missing} state needed to resume; "
                              f"{OLDER_CHECKPOINT_HINT}")
    return state


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
    meta = read_meta(path / "meta.json")
    return read_weights(path / "model.safetensors"), read_training_state(path / "training_state.pt"), meta


def check_state_dict(state: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor],
                     source: str, owner: str) -> None:
    """Raise a :class:`CheckpointError` unless ``state`` has exactly the names of ``params``, each
    with the same shape and a compatible dtype (floating into floating; no broadcasting)."""
    unexpected, missing = sorted(set(state) - set(params)), sorted(set(params) - set(state))
    if unexpected or missing:
        raise CheckpointError(
            f"{source} does not match {owner}'s trainable parameters: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)}), unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)}); load it with the config "
            "of the run that wrote it (its config.py: same model, LoRA rank and target modules)"
        )
    for name, value in state.items():
        param = params[name]
        if tuple(value.shape) != tuple(param.shape):
            raise CheckpointError(
                f"tensor {name!r} in {source} has shape {list(value.shape)}, {owner} expects "
                f"{list(param.shape)}: the file is from another model or LoRA rank; load it with "
                "the config of the run that wrote it (its config.py)"
            )
        if value.is_floating_point() != param.is_floating_point() or value.is_complex() != param.is_complex():
            raise CheckpointError(
                f"tensor {name!r} in {source} has dtype {value.dtype}, {owner} expects "
                f"{param.dtype}: the file is not a treegrpo checkpoint of this model"
            )


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, source: Path) -> None:
    """``optimizer.load_state_dict(state)``; a state made for other parameters (their number, or
    per-parameter tensors of other shapes, which the optimizer would broadcast) names ``source``."""
    hint = f"resume with the config of the run that wrote it (its config.py), or {OLDER_CHECKPOINT_HINT}"
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"the optimizer state in {source} does not fit this run's optimizer "
                              f"({exc}); {hint}") from exc
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param in enumerate(params):
        for key, value in optimizer.state.get(param, {}).items():
            if torch.is_tensor(value) and value.ndim > 0 and value.shape != param.shape:
                raise CheckpointError(
                    f"the optimizer state {key!r} of parameter {index} in {source} has shape "
                    f"{list(value.shape)}, the parameter has {list(param.shape)}; {hint}")


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


def checkpoint_meta(runner, **extra: Any) -> dict[str, Any]:
    """``meta.json`` of a runner checkpoint: iteration, seed, counters, config, world size."""
    return {"iteration": runner.iteration, "seed": runner.seed, "counters": runner.counters,
            "config": runner.cfg.filename, "world_size": runner.world_size, **extra}


def write_exports(runner, folder: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """The policy's own export format (``state``: gathered trained tensors of a sharded model) plus
    the hooks' checkpoint files (e.g. the EMA weights) into ``folder``."""
    if state is None:  # policies written before sharded exports take only the folder
        runner.policy.save_export(folder)
    else:
        runner.policy.save_export(folder, state=state)
    runner.call_hooks("save_to_checkpoint", folder)


def restore_component_states(runner, advantage: dict | None, schedule: dict | None) -> None:
    """Per-prompt reward statistics and schedule (bandit) state from a checkpoint; both optional
    (checkpoints written before them, or components without state)."""
    if hasattr(runner.advantage, "load_state_dict"):
        runner.advantage.load_state_dict(advantage or {})
    if schedule is not None:
        runner.schedule.load_state_dict(schedule)


def save_unsharded(runner, path: Path) -> None:
    """The runner's checkpoint when every process holds the whole model (every process calls it,
    the main one writes): trained tensors, optimizer, lr scheduler, RNG, each process's copy of the
    per-prompt reward statistics (identical, as they come from gathered rewards), the export."""
    from accelerate.utils import gather_object

    advantage = gather_object([runner.advantage_state()])
    if not runner.is_main:
        return
    training_state = {
        "optimizer": runner.optimizer.state_dict(),
        "lr_scheduler": runner.lr_scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "advantage": advantage[0], "advantage_per_rank": advantage,
        "schedule": runner.schedule_state(),
    }
    meta = checkpoint_meta(runner, time=time.strftime("%Y-%m-%d %H:%M:%S"))
    save_checkpoint(path, runner.policy.trainable_state_dict(), training_state, meta,
                    lambda folder: write_exports(runner, folder))


def resume_unsharded(runner, path: Path) -> dict:
    """Restore what :func:`save_unsharded` wrote into the runner's components; returns meta."""
    model_state, training_state, meta = load_checkpoint(path)
    runner.policy.load_trainable_state_dict(model_state, source=str(path / "model.safetensors"))
    load_optimizer_state(runner.optimizer, training_state["optimizer"], path / "training_state.pt")
    runner.lr_scheduler.load_state_dict(training_state["lr_scheduler"])
    torch.set_rng_state(training_state["torch_rng"])
    per_rank = training_state.get("advantage_per_rank") or []  # this process's own copy when saved
    own = per_rank[runner.rank] if len(per_rank) == runner.world_size else training_state.get("advantage")
    restore_component_states(runner, own, training_state.get("schedule"))
    if meta.get("seed") != runner.seed or meta.get("world_size") != runner.world_size:
        warnings.warn(
            f"resuming a checkpoint made with seed={meta.get('seed')}, "
            f"world_size={meta.get('world_size')} under seed={runner.seed}, "
            f"world_size={runner.world_size}: the run will not continue bit-identically",
            stacklevel=3,
        )
    return meta
