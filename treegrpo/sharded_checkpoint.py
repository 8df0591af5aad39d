"""Checkpoints of an FSDP-sharded denoiser: every rank writes its shard, the main rank the export.

Layout of ``checkpoints/iter_<n>/`` (``meta.json`` has ``"sharded": true``):
- ``sharded/``: the model and optimizer shards in torch distributed checkpoint format
  (``__<rank>_0.distcp`` written by each rank, ``.metadata`` by the main rank): what resume reads;
- ``rank_<r>.pt``: each rank's own state (torch RNG, per-prompt reward statistics);
- ``training_state.pt``: the lr scheduler (the same on every rank);
- ``model.safetensors`` + the policy's export (``lora/`` or ``transformer/``): the trained tensors
  gathered to full size, written once by the main rank, the same files as an unsharded run's.
All ranks write into one temporary folder; after a barrier the main rank flushes and renames it
(see :func:`treegrpo.checkpoint.save_checkpoint` for the single-file layout).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor

from .checkpoint import (CheckpointError, checkpoint_meta, fsync_dir, fsync_tree, read_meta,
                         restore_component_states, write_exports)

SHARD_FOLDER = "sharded"


def rank_file(folder: Path, rank: int) -> Path:
    return Path(folder) / f"rank_{rank}.pt"


def gather_trainable(model: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """The full-size trained tensors of a sharded ``model`` on CPU, one parameter at a time (a
    collective: every rank calls it; ranks with ``keep=False`` drop each tensor at once)."""
    state = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        full = param.full_tensor() if isinstance(param, DTensor) else param
        if keep:
            state[name] = full.detach().to("cpu", copy=True).contiguous()
    return state


def collective_device() -> torch.device:
    """Where small tensors for collectives live: the current GPU under NCCL, else the CPU."""
    if "nccl" in str(dist.get_backend()).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agreed_tmp_folder(final: Path, is_main: bool) -> Path:
    """The temporary folder every rank writes into, named by the main rank's pid and created by it."""
    name = [f"{final.name}.tmp-{os.getpid()}" if is_main else None]
    dist.broadcast_object_list(name, src=0)
    tmp = final.with_name(name[0])
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist.barrier()
    return tmp


def save_sharded_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer,
                            shared_state: dict[str, Any], rank_state: dict[str, Any],
                            meta: dict[str, Any], export: Callable[[Path, dict], None] | None = None) -> Path:
    """Write ``directory`` atomically from every rank (a collective). ``shared_state``: identical on
    all ranks (written by the main rank); ``rank_state``: this rank's own; ``export(folder, full)``
    runs on the main rank with the gathered trained tensors (e.g. the policy's LoRA export)."""
    final, rank, is_main = Path(directory), dist.get_rank(), dist.get_rank() == 0
    tmp = agreed_tmp_folder(final, is_main)
    error: BaseException | None = None
    try:
        # the collectives first (DCP reports a failed write on every rank), then each rank's own files
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / SHARD_FOLDER))
        full = gather_trainable(model, keep=is_main)
        torch.save(rank_state, rank_file(tmp, rank))
        if is_main:
            save_file(full, str(tmp / "model.safetensors"))
            torch.save(shared_state, tmp / "training_state.pt")
            (tmp / "meta.json").write_text(json.dumps({**meta, "sharded": True}, indent=2))
            if export is not None:
                export(tmp, full)
        fsync_tree(tmp)  # every rank flushes what it wrote
    except BaseException as exc:  # noqa: BLE001 - every rank learns of it below, then re-raises
        error = exc
    failed = torch.tensor([float(error is not None)], device=collective_device())
    dist.all_reduce(failed)  # a rank that failed makes every rank drop the folder and raise
    if is_main and not failed.item():
        old = final.with_name(final.name + f".old-{os.getpid()}")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    elif is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    if error is not None:
        raise error
    if failed.item():
        raise CheckpointError(f"saving {final} failed on another rank; no checkpoint was written")
    return final


def is_sharded_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / SHARD_FOLDER).is_dir()


def load_sharded_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer,
                            world_size: int) -> tuple[dict, dict, dict]:
    """Restore the model and optimizer shards in place (a collective); returns (shared_state,
    this rank's rank_state, meta). A checkpoint saved by another number of ranks is refused."""
    path = Path(directory)
    meta = read_meta(path / "meta.json")
    saved = meta.get("world_size")
    if saved != world_size:
        raise CheckpointError(
            f"{path} is a sharded checkpoint written by {saved} processes, this run has {world_size}: "
            f"resume it with {saved} processes (exact continuation), or start a new run from its "
            f"gathered weights {path / 'model.safetensors'} (the same file an unsharded run writes)")
    rank = dist.get_rank()
    missing = [p for p in (path / "training_state.pt", rank_file(path, rank)) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete sharded checkpoint (missing {missing})")
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(path / SHARD_FOLDER))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    shared = torch.load(path / "training_state.pt", weights_only=True)
    own = torch.load(rank_file(path, rank), weights_only=True)
    return shared, own, meta


def save_runner_checkpoint(runner, path: Path) -> Path:
    """The runner's checkpoint of a sharded denoiser (every rank calls it): shards, per-rank
    RNG and reward statistics, the lr scheduler, and the main rank's gathered export."""
    rank_state = {"torch_rng": torch.get_rng_state(), "advantage": runner.advantage_state(),
                  "schedule": runner.schedule_state()}
    return save_sharded_checkpoint(path, runner.train_model, runner.optimizer,
                                   {"lr_scheduler": runner.lr_scheduler.state_dict()}, rank_state,
                                   checkpoint_meta(runner, fsdp=runner.fsdp),
                                   lambda folder, full: write_exports(runner, folder, full))


def resume_runner_checkpoint(runner, path: Path) -> dict:
    """Restore what :func:`save_runner_checkpoint` wrote (every rank calls it); returns meta."""
    sharded = is_sharded_checkpoint(path)
    if sharded != (runner.fsdp is not None):
        written, now = ("with", "without") if sharded else ("without", "with")
        raise CheckpointError(
            f"{path} was written {written} fsdp and this run is configured {now} it: resume with the "
            "fsdp setting of the run that wrote it (its config.py); the gathered trained tensors in "
            "model.safetensors can start a new run either way")
    shared, own, meta = load_sharded_checkpoint(path, runner.train_model, runner.optimizer,
                                                runner.world_size)
    runner.lr_scheduler.load_state_dict(shared["lr_scheduler"])
    torch.set_rng_state(own["torch_rng"])
    restore_component_states(runner, own.get("advantage"), own.get("schedule"))
    return meta
