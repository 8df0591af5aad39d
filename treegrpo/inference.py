"""Load configs and trained policies outside the training loop (tools, evaluation, ComfyUI nodes)."""
from __future__ import annotations

from pathlib import Path

from mmengine.config import Config
from .checkpoint import read_weights, resolve_checkpoint
from .hooks.ema import EMA_FILE
from .registry import KERNELS, POLICIES, build


def load_config(path: str | Path, options: dict | None = None, seed: int | None = None) -> Config:
    """Read a config file (with ``_base_`` and ``custom_imports``) and apply ``options`` overrides
    (dotted keys, as ``--cfg-options`` gives them)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file {path} does not exist (see configs/ for examples)")
    cfg = Config.fromfile(str(path))
    if options:
        cfg.merge_from_dict(options)
    if seed is not None:
        cfg.seed = seed
    return cfg


def load_policy(cfg: Config, checkpoint: str | Path | None = None, device: str | None = None,
                ema: bool = False):
    """Build ``cfg.policy`` (and ``cfg.kernel``) and load the trained tensors of ``checkpoint``
    (a run folder or one of its ``checkpoints/iter_<n>``; None: the base model); with ``ema``, the
    EMA weights of the checkpoint (``ema.safetensors``, written when the run had an EMAHook).

    Returns ``(policy, kernel)`` with the denoiser in eval mode.
    """
    policy_cfg = dict(cfg.policy)
    if device is not None:
        policy_cfg["device"] = device
    policy = build(POLICIES, policy_cfg)
    if checkpoint is not None:
        folder = resolve_checkpoint(checkpoint)
        if ema:
            if not (folder / EMA_FILE).is_file():
                raise FileNotFoundError(f"{folder} has no {EMA_FILE}: the run had no EMAHook "
                                        "(add dict(type='EMAHook') to hooks), or load without ema")
            weights = folder / EMA_FILE
        else:
            weights = folder / "model.safetensors"
        policy.load_trainable_state_dict(read_weights(weights), source=str(weights))
    elif ema:
        raise ValueError("ema=True needs a checkpoint")
    policy.denoiser.eval()
    kernel = build(KERNELS, cfg.kernel)
    policy.check_kernel(kernel)
    return policy, kernel
