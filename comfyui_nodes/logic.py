"""What the nodes do, as plain functions (no ComfyUI needed): load a trained treegrpo pipeline,
draw one prompt's branched denoising tree, score images with a registered reward.

Images cross the node boundary in ComfyUI's IMAGE convention: float tensors [B, H, W, C] in [0, 1].
treegrpo itself is imported lazily, so the pack imports (and lists its nodes) without it.
"""
from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .comfy_env import DEVICES, comfy_loading, comfy_progress, free_comfy_memory, pick_device  # noqa: F401
from .lora import to_trainable_state
from .paths import require_safetensors, resolve_config, resolve_path
from .safety import (allowed_reward_class, check_built_reward, check_reward_kwargs, check_reward_spec,
                     pack_reward_names, policy_model_folder, refuse_forbidden_keys, resolve_path_values)

MAX_LEAVES = 512
# reward combos when the registry cannot be read (the nodes then say what is wrong when run)
FALLBACK_REWARDS = ("Aesthetic", "CLIPScore", "Colorfulness", "HPSv2", "ImageReward", "JPEGCompressibility",
                    "JPEGIncompressibility", "PickScore", "ToyAlignmentReward", "WeightedSum")
logger = logging.getLogger(__name__)


def require_treegrpo() -> None:
    """Raise a RuntimeError that says how to install treegrpo when it is not importable."""
    try:
        importlib.import_module("treegrpo")
    except ImportError as error:
        raise RuntimeError(
            "the treegrpo nodes need the treegrpo package in ComfyUI's Python: run "
            "`<ComfyUI python> -m pip install -e /path/to/treegrpo` (or `pip install treegrpo`) "
            f"and restart ComfyUI ({error})"
        ) from error


@dataclass
class TreegrpoPipeline:
    """What flows on a TREEGRPO_PIPELINE link: the loaded policy and kernel and their config."""

    policy: Any  # treegrpo.policies.base.Policy, denoiser in eval mode
    kernel: Any  # the config's transition kernel
    cfg: Any  # mmengine Config the policy was built from
    source: str  # human-readable origin (config and checkpoint)

    def __repr__(self) -> str:
        return f"TreegrpoPipeline({type(self.policy).__name__}, {self.source})"


# --- small helpers -----------------------------------------------------------------------------
def to_comfy_images(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> ComfyUI IMAGE [B, H, W, 3] float32 on CPU."""
    return images.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def from_comfy_images(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] (C = 1, 3 or 4; alpha dropped) -> [B, 3, H, W] float in [0, 1]."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] not in (1, 3, 4):
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"IMAGE must be a [B, H, W, C] tensor with C in (1, 3, 4), got {shape}")
    rgb = images[..., :3] if images.shape[-1] != 1 else images.expand(-1, -1, -1, 3)
    return rgb.float().clamp(0, 1).permute(0, 3, 1, 2).contiguous()


def pil_to_comfy(picture) -> torch.Tensor:
    """PIL image -> IMAGE [1, H, W, 3]."""
    array = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array)[None]


def expected_forward_rows(steps: int, start: int, depth: int, k: int, guidance_scale: float) -> int:
    """Model rows one tree plus its node previews costs: the NFE floor
    ``p + sum_{l=1..d} k^(l-1) + k^d * s`` plus one preview row per node, doubled with CFG."""
    prefix, suffix = start, steps - start - depth
    tree = prefix + sum(k ** (level - 1) for level in range(1, depth + 1)) + k ** depth * suffix
    nodes = sum(k ** level for level in range(depth + 1))
    return (tree + nodes) * (2 if guidance_scale > 1.0 else 1)


def leaf_paths(parent: list[int], leaf_nodes: list[int]) -> list[str]:
    """Branch choices from the root to each leaf, e.g. '0-1-1' (child rank at each depth)."""
    rank, seen = [0] * len(parent), {}
    for node, par in enumerate(parent):
        if par >= 0:
            rank[node] = seen.get(par, 0)
            seen[par] = rank[node] + 1
    paths = []
    for leaf in leaf_nodes:
        chain, node = [], leaf
        while parent[node] >= 0:
            chain.append(str(rank[node]))
            node = parent[node]
        paths.append("-".join(reversed(chain)) or "root")
    return paths


# --- load -------------------------------------------------------------------------------------
def read_trainable_state(path: Path, policy: Any) -> dict[str, torch.Tensor]:
    """Trained tensors from a run folder, a checkpoints/iter_<n> folder (its model.safetensors;
    the optimizer state is never read) or a LoRA .safetensors file in any layout of :mod:`lora`
    (a diffusers file's alpha read from its metadata)."""
    from safetensors.torch import load_file
    from treegrpo.checkpoint import resolve_checkpoint
    from treegrpo.lora_export import read_safetensors

    if path.is_dir():
        weights = resolve_checkpoint(path) / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing: not a complete treegrpo checkpoint")
        return load_file(str(weights))
    state, metadata = read_safetensors(require_safetensors(path))
    return to_trainable_state(state, policy, metadata)


def checkpoint_fingerprint(config: str, checkpoint: str) -> str:
    """Changes whenever the config file or the weights :func:`load_pipeline` would read change
    (a newer checkpoint in a run folder included); ComfyUI's IS_CHANGED. Path errors are left
    for the node itself to report; inputs that are not strings (ComfyUI passes None for an input
    fed by a link) are skipped."""
    parts = []
    for name in (config, checkpoint):
        if not isinstance(name, str) or not name.strip():  # a linked input reaches IS_CHANGED as None
            continue
        try:
            path = resolve_path(name)
            if path.is_dir():
                from treegrpo.checkpoint import resolve_checkpoint

                path = resolve_checkpoint(path) / "model.safetensors"
            parts.append(f"{path}@{path.stat().st_mtime_ns}")
        except (OSError, ValueError, ImportError) as error:
            parts.append(f"{name}:{type(error).__name__}")
    return "|".join(parts)


def load_pipeline(config: str, checkpoint: str = "", device: str = "auto", model_path: str = "",
                  options: str | dict = "") -> TreegrpoPipeline:
    """Build the config's policy (base weights) and load a trained checkpoint or LoRA into it.

    Args:
        config: config file in the treegrpo model folders; empty: the ``config.py`` of the run
            folder given as ``checkpoint``.
        checkpoint: run folder, ``checkpoints/iter_<n>`` folder or LoRA ``.safetensors`` file
            (empty: the base model).
        device: 'auto' (ComfyUI's device inside ComfyUI, else CUDA when available), 'cpu' or 'cuda'.
        model_path: local diffusers model folder replacing ``policy.model_path`` (safetensors only).
        options: JSON object of config overrides (dotted keys, ``{"policy.resolution": 512}``, or
            nested objects); path values are resolved in the model folders (:mod:`safety`).

    Whatever sets it (config, options or ``model_path``), ``policy.model_path`` must be a diffusers
    folder inside the model folders: nothing is downloaded.
    """
    require_treegrpo()
    from treegrpo.inference import load_config, load_policy
    from treegrpo.utils import parse_json_object

    device = pick_device(device)  # a missing GPU is reported before anything is read or loaded
    ckpt_path = resolve_path(checkpoint) if checkpoint.strip() else None
    if config.strip():
        config_path = resolve_config(config)
    elif ckpt_path is not None and (ckpt_path / "config.py").is_file():
        config_path = ckpt_path / "config.py"
    else:
        raise ValueError("config is empty: give a config file, or a run folder (with its config.py) as checkpoint")
    overrides = parse_json_object(options, "options")
    refuse_forbidden_keys(overrides, "options")
    overrides = resolve_path_values(overrides, "options")
    if model_path.strip():
        overrides["policy.model_path"] = model_path.strip()
    cfg = load_config(config_path, overrides)
    folder = cfg.get("policy", {}).get("model_path")
    if folder is not None:
        cfg.policy.model_path = policy_model_folder(str(folder))
    free_comfy_memory()
    with comfy_loading():
        policy, kernel = load_policy(cfg, None, device)
        if ckpt_path is not None:
            policy.load_trainable_state_dict(read_trainable_state(ckpt_path, policy))
    source = f"config {config_path.name}" + (f", checkpoint {ckpt_path.name}" if ckpt_path else ", base weights")
    return TreegrpoPipeline(policy=policy, kernel=kernel, cfg=cfg, source=source)


# --- rewards ----------------------------------------------------------------------------------
def reward_names() -> list[str]:
    """Registered reward types the nodes run (:func:`safety.pack_allows`; for the node combos).
    Never raises, as ComfyUI calls it from INPUT_TYPES: when the registry cannot be read (treegrpo
    missing or broken), the error is logged and :data:`FALLBACK_REWARDS` is returned."""
    try:
        return pack_reward_names()
    except Exception as error:  # noqa: BLE001 - INPUT_TYPES must not fail
        logger.warning("treegrpo nodes: cannot list the registered rewards (%s: %s); showing the "
                       "built-in names", type(error).__name__, error)
        return list(FALLBACK_REWARDS)


_REWARD_CACHE: dict[str, Any] = {}


def build_reward(name: str, kwargs: str | dict = "", base: dict | None = None) -> tuple[Any, str]:
    """(reward object, type name). ``name`` is a registered reward type, or 'config' for ``base``
    (the pipeline config's reward); ``kwargs`` (JSON) override its arguments and may not name
    classes (:func:`safety.check_reward_kwargs`: only a WeightedSum's parts have a ``type``).
    Every reward class, nested ones too, is checked after resolution and again on the built
    object (:mod:`safety`: local rewards only, models only from the model folders). The last two
    built rewards are kept (weights loaded), so a reward model loads once per session."""
    require_treegrpo()
    from treegrpo.registry import REWARDS, build
    from treegrpo.rewards.base import load_reward_weights
    from treegrpo.utils import parse_json_object

    extra = parse_json_object(kwargs, "reward_kwargs")
    if name == "config":
        if not base:
            raise ValueError("reward 'config' needs a pipeline whose config has a reward: pick a reward type")
        reward_cls = allowed_reward_class(base.get("type"), "the config's reward.type")
        check_reward_kwargs(extra, reward_cls)
        spec = {**dict(base), **extra, "type": base["type"]}
    else:
        check_reward_kwargs(extra, allowed_reward_class(name, "reward"))
        spec = {**extra, "type": name}
    spec = check_reward_spec(spec)
    key = json.dumps(spec, sort_keys=True, default=str)
    if key not in _REWARD_CACHE:
        while len(_REWARD_CACHE) >= 2:
            _REWARD_CACHE.pop(next(iter(_REWARD_CACHE)))
        with comfy_loading():
            reward = check_built_reward(build(REWARDS, spec))
            load_reward_weights(reward)
        _REWARD_CACHE[key] = reward
    return _REWARD_CACHE[key], str(spec["type"])


def score_images(images: torch.Tensor, prompt: str, reward: str, reward_kwargs: str = "") -> tuple[list[float], str]:
    """IMAGE [B, H, W, C] + one prompt for all -> (B scores, a text table). The images are moved
    to ComfyUI's device (IMAGE tensors live on the CPU), where the reward models run."""
    require_treegrpo()
    from treegrpo.rewards.base import check_rewards

    model, name = build_reward(reward, reward_kwargs)
    batch = from_comfy_images(images).to(pick_device("auto"))
    with torch.no_grad():
        scores = check_rewards(model(batch, [prompt] * batch.shape[0]), batch.shape[0], name)
    lines = [f"reward {name}  |  prompt: {prompt}", "image  score"]
    lines += [f"{i:<5d}  {s:.4f}" for i, s in enumerate(scores.tolist())]
    lines.append(f"mean {scores.mean():.4f}" + (f"  std {scores.std():.4f}" if scores.numel() > 1 else ""))
    return scores.tolist(), "\n".join(lines)


# --- branched denoising -----------------------------------------------------------------------
def check_tree_args(steps: int, window_start: int, depth: int, k: int, eta: float) -> None:
    for key, value, low in (("steps", steps, 1), ("window_start", window_start, 0), ("depth", depth, 1), ("k", k, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
    if window_start + depth > steps:
        raise ValueError(
            f"the branching window (window_start {window_start} + depth {depth}) must fit in steps={steps}"
        )
    if k ** depth > MAX_LEAVES:
        raise ValueError(f"k**depth = {k ** depth} leaves is more than {MAX_LEAVES}: lower k or depth")
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")


@torch.no_grad()
def branched_denoising(pipeline: TreegrpoPipeline, prompt: str, seed: int = 0, k: int = 2, depth: int = 3,
                       window_start: int = 0, steps: int = 10, eta: float = 0.7, reward: str = "config",
                       reward_kwargs: str = "", thumb: int = 64) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Sample one TreeGRPO tree for ``prompt`` and draw it (as ``tools/visualize_tree.py`` does).

    ODE steps ``[0, window_start)``, ``depth`` SDE steps with ``eta`` each splitting every node in
    ``k``, ODE to the end of ``steps``; leaves scored by ``reward`` and advantages backed up.
    Returns (tree picture IMAGE [1, H, W, 3], leaves IMAGE [k**depth, h, w, 3], text table).
    """
    require_treegrpo()
    from treegrpo.registry import KERNELS, build
    from treegrpo.schedules import BranchPlan
    from treegrpo.utils import make_generator
    from treegrpo.visualization import branched_sample, tree_advantage

    if not isinstance(pipeline, TreegrpoPipeline):
        raise TypeError(f"pipeline must come from 'Load treegrpo checkpoint', got {type(pipeline).__name__}")
    if not prompt.strip():
        raise ValueError("prompt is empty")
    check_tree_args(steps, window_start, depth, k, eta)
    policy, cfg = pipeline.policy, pipeline.cfg
    kernel = build(KERNELS, {**dict(cfg.kernel), "eta": float(eta)})
    sampler_cfg = cfg.get("sampler", {})
    guidance_scale = sampler_cfg.get("guidance_scale", 1.0)
    plan = BranchPlan(start=window_start, depth=depth, k=k)
    scorer, reward_name = build_reward(reward, reward_kwargs, cfg.get("reward"))
    advantage = tree_advantage(cfg.get("advantage"))

    total = expected_forward_rows(steps, window_start, depth, k, guidance_scale) + 1
    progress = comfy_progress(total)
    tree = branched_sample(policy, kernel, scorer, reward_name, advantage, prompt, plan, steps, guidance_scale,
                           make_generator("cpu", seed, 2), chunk_size=sampler_cfg.get("chunk_size"),
                           thumb=thumb, eta=eta, on_rows=progress)
    if progress is not None:
        progress(total)

    rollout, rewards, adv = tree.rollout, tree.rewards, tree.advantages
    parent, leaves = rollout.parent.tolist(), rollout.leaf_nodes.tolist()
    lines = [f"prompt: {prompt}",
             f"{pipeline.source}; steps {steps}, SDE window {plan.start}..{plan.stop - 1}, k={k}, "
             f"eta={eta:g}, seed {seed}, reward {reward_name}, NFE {rollout.nfe}",
             "leaf  node  path        reward    advantage"]
    for i, (node, path) in enumerate(zip(leaves, leaf_paths(parent, leaves))):
        lines.append(f"{i:<4d}  {node:<4d}  {path:<10s}  {rewards[i]:8.4f}  {adv.node[node]:+9.4f}")
    lines.append(f"mean reward {rewards.mean():.4f}, std {rewards.std(unbiased=False):.4f}"
                 + ("  (all rewards equal: advantages are 0)" if adv.zero_std_groups else ""))
    return pil_to_comfy(tree.picture), to_comfy_images(rollout.images), "\n".join(lines)
