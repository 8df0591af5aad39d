"""Distributed settings: FSDP for the trained denoiser (the ``fsdp`` config key -> accelerate's FSDP
plugin, FSDP2) and the collective timeout (``dist_timeout_s``).

``fsdp = None`` (the default) trains with DDP. ``fsdp = dict(...)`` shards the denoiser only (the
frozen text encoders and VAE are never prepared) with ``torch.distributed.fsdp.fully_shard``
through accelerate, one FSDP unit per transformer block:

- ``wrap_classes``: class names of the blocks to shard as units; default per policy family
  (:data:`WRAP_CLASSES`). Every name must occur in the denoiser.
- ``reshard_after_forward`` (default True): free the gathered weights after each block's forward
  (ZeRO-3); False keeps them until the backward (ZeRO-2, faster, more memory).
- ``cpu_offload`` (default False): keep the sharded weights and optimizer state in CPU memory.

FSDP2 shards parameters in place: the policy keeps the very module accelerate prepared, so sampling
forwards through ``policy.denoiser`` gather the weights as training forwards do, and LoRA's mixed
``requires_grad`` (frozen base, trained adapters) is supported per parameter. FSDP1 is not offered:
it flattens each unit's parameters, and the policy's module could no longer sample. Gradient checkpointing
is the policy's own ``gradient_checkpointing=True`` (diffusers' per-block checkpointing).

accelerate 1.16 applies its FSDP plugin only on GPUs: with ``Accelerator(cpu=True)`` it reports
``MULTI_CPU`` and silently wraps the model in DDP instead (measured). :func:`check_fsdp_active`
turns that into an error.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from mmengine.config import Config

# Blocks sharded as one FSDP unit each, per policy type (diffusers class names).
WRAP_CLASSES = {
    "SD3Policy": ("JointTransformerBlock",),
    "FluxPolicy": ("FluxTransformerBlock", "FluxSingleTransformerBlock"),
    "QwenImagePolicy": ("QwenImageTransformerBlock",),
    "StableDiffusionPolicy": ("BasicTransformerBlock", "ResnetBlock2D"),
    "WanPolicy": ("WanTransformerBlock",),
}
FSDP_DEFAULTS = dict(wrap_classes=None, reshard_after_forward=True, cpu_offload=False)


def fsdp_settings(fsdp: dict | None, policy_cfg: dict) -> dict[str, Any] | None:
    """The ``fsdp`` config key with defaults filled in and ``wrap_classes`` resolved for the
    policy family; None for DDP. Unknown keys or values raise a ValueError naming the fix."""
    if fsdp is None:
        return None
    if not isinstance(fsdp, dict):
        raise ValueError(f"fsdp must be None (DDP) or a dict such as dict(reshard_after_forward=True), "
                         f"got {fsdp!r}")
    unknown = sorted(set(fsdp) - set(FSDP_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown fsdp key(s) {unknown}; the supported keys are {sorted(FSDP_DEFAULTS)}")
    settings = {**FSDP_DEFAULTS, **fsdp}
    for key in ("reshard_after_forward", "cpu_offload"):
        if not isinstance(settings[key], bool):
            raise ValueError(f"fsdp.{key} must be True or False, got {settings[key]!r}")
    policy_type = policy_cfg.get("type")
    if settings["wrap_classes"] is None:
        if policy_type not in WRAP_CLASSES:
            raise ValueError(
                f"fsdp has no default block classes for policy {policy_type!r} (known: "
                f"{sorted(WRAP_CLASSES)}); set fsdp.wrap_classes=['<BlockClassName>', ...] to the "
                "denoiser's repeated block classes")
        settings["wrap_classes"] = WRAP_CLASSES[policy_type]
    names = settings["wrap_classes"]
    if isinstance(names, str) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"fsdp.wrap_classes must be a non-empty list of class names, got {names!r}")
    settings["wrap_classes"] = list(names)
    return settings


def make_fsdp_plugin(settings: dict[str, Any]):
    """accelerate's ``FullyShardedDataParallelPlugin`` (FSDP2, sharded state dicts) from
    :func:`fsdp_settings`."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=list(settings["wrap_classes"]),
        reshard_after_forward=settings["reshard_after_forward"],
        cpu_offload=settings["cpu_offload"],
        state_dict_type="SHARDED_STATE_DICT",
    )


def make_accelerator(cfg, settings: dict[str, Any] | None, kwargs_handlers: list) -> Accelerator:
    """The run's Accelerator: DDP, or FSDP with :func:`make_fsdp_plugin` when ``settings`` is set."""
    return Accelerator(
        cpu=cfg.get("cpu", False) or not torch.cuda.is_available(),
        mixed_precision=cfg.get("mixed_precision", "no"),
        kwargs_handlers=kwargs_handlers,
        fsdp_plugin=None if settings is None else make_fsdp_plugin(settings),
    )


def check_fsdp_active(accelerator, settings: dict[str, Any] | None) -> None:
    """Raise unless accelerate runs FSDP exactly when the config asks for it (accelerate silently
    falls back to DDP on CPU and to no wrapper with one process; an accelerate launch config with
    ``distributed_type: FSDP`` would shard a run whose config has ``fsdp=None``)."""
    fsdp_running = accelerator.distributed_type == DistributedType.FSDP
    if settings is None and fsdp_running:
        raise ValueError(
            "accelerate was launched for FSDP (an accelerate config with distributed_type: FSDP, or "
            "ACCELERATE_USE_FSDP=true) but the treegrpo config has fsdp=None: set fsdp=dict() in the "
            "config (or --cfg-options fsdp.reshard_after_forward=True); the runner builds the FSDP "
            "plugin from it and checkpoints the shards")
    if settings is None or fsdp_running:
        return
    raise ValueError(
        f"fsdp is set but accelerate runs {accelerator.distributed_type} with "
        f"{accelerator.num_processes} process(es): accelerate 1.16 applies FSDP only on 2 or more "
        "GPUs (on CPU it would train with DDP instead). Launch on GPUs (e.g. accelerate launch "
        "--multi_gpu --num_processes 8 tools/train.py CONFIG), or set fsdp=None "
        "(--cfg-options fsdp=None) for DDP")


def check_wrap_classes(model: torch.nn.Module, names: list[str]) -> None:
    """Raise a ValueError naming each ``names`` entry that is no class of a submodule of ``model``."""
    present = {type(module).__name__ for module in model.modules()}
    missing = [name for name in names if name not in present]
    if missing:
        raise ValueError(
            f"fsdp.wrap_classes {missing} do not occur in the denoiser {type(model).__name__}; its "
            f"block classes include {sorted(n for n in present if 'Block' in n)}")


def check_fsdp_hooks(hooks: list) -> None:
    """Hooks that read the trained tensors as full tensors do not support FSDP yet."""
    unsupported = sorted({type(h).__name__ for h in hooks if type(h).__name__ == "EMAHook"})
    if unsupported:
        raise ValueError(f"{unsupported} do not support fsdp yet (the EMA would hold sharded tensors "
                         "and cannot be exported): remove the hook or set fsdp=None")


def is_sharded(model: torch.nn.Module) -> bool:
    """True when ``model``'s parameters are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


# Seconds a process waits in a collective (gather, barrier, gradient all-reduce) for the others
# before the job fails, instead of torch's 30 minutes. Processes do the same work between two
# collectives (same prompts per rank, same tree), so a wait this long means a hung or dead rank. The
# longest legitimate wait is the other ranks idling while rank 0 writes a checkpoint: seconds for a
# LoRA, about a minute for a full SD3.5-medium fine-tune (10 GB weights + 20 GB AdamW state) on a
# local disk. Raise ``dist_timeout_s`` for slow network disks or when one node downloads the model.
DEFAULT_DIST_TIMEOUT_S = 600


def collective_timeout(cfg: Config) -> InitProcessGroupKwargs:
    """The process-group settings from the config key ``dist_timeout_s`` (positive seconds)."""
    seconds = cfg.get("dist_timeout_s", DEFAULT_DIST_TIMEOUT_S)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(f"dist_timeout_s must be a positive number of seconds, got {seconds!r} "
                         f"(default {DEFAULT_DIST_TIMEOUT_S}; e.g. --cfg-options dist_timeout_s=1800)")
    return InitProcessGroupKwargs(timeout=timedelta(seconds=seconds))
