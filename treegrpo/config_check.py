"""Check a whole training config before anything heavy is loaded.

:func:`validate_config` collects every problem it finds (unknown or misspelt keys, component
arguments a class does not accept, a window that does not fit the sampler, unreadable prompt files,
impossible batch sizes, a tree with one leaf, WeightedSum weights that do not match its rewards,
implausible model paths) and raises one :class:`ConfigError` listing them all, each naming the key
and the fix. The runner calls it first; it can also be used on its own:

    python -m treegrpo.config_check configs/treegrpo_sd3_hps.py [--world-size 8] [--cfg-options key=value ...]
"""
from __future__ import annotations

import ast
import difflib
import inspect
import os
import sys
from pathlib import Path
from typing import Any

from .registry import (ADVANTAGES, DATASETS, DETECTORS, HOOKS, KERNELS, LOSSES, OCR_ENGINES, POLICIES,
                       REWARDS, SAMPLERS, SCHEDULES, resolve_type)

# Component keys: config key -> the registry its ``type`` is looked up in.
COMPONENT_KEYS = {
    "policy": POLICIES, "kernel": KERNELS, "schedule": SCHEDULES, "sampler": SAMPLERS,
    "reward": REWARDS, "advantage": ADVANTAGES, "loss": LOSSES, "train_dataset": DATASETS,
    "eval_dataset": DATASETS,
}
# Every other top-level key something reads: runner.py, hooks, tools/ (train, eval, benchmark),
# the ComfyUI pack, mmengine itself. Keep this list in step with new ``cfg.get(...)`` calls.
OTHER_KEYS = {
    "optimizer": "torch.optim optimizer dict (runner)",
    "update": "policy-update loop settings (runner)",
    "hooks": "list of hook dicts (runner)",
    "max_iters": "training iterations (runner)",
    "prompts_per_iter": "prompts per iteration (runner)",
    "seed": "random seed (runner)",
    "cpu": "force CPU (runner)",
    "mixed_precision": "'no' | 'bf16' | 'fp16' (runner)",
    "lr_warmup_iters": "linear lr warm-up (runner)",
    "max_nfe": "stop after this many model forwards (runner, benchmark)",
    "max_wall_time": "stop after this many training seconds (runner, benchmark)",
    "tensorboard": "write tensorboard events (runner)",
    "wandb": "wandb.init arguments (runner)",
    "eval_rewards": "name -> reward dict for tools/eval.py",
    "dist_timeout_s": "collective timeout of distributed runs (runner)",
    "overlap_reward": "score rollout t in a thread while rollout t+1 samples (runner, bool)",
    "fsdp": "None (DDP) or dict of FSDP settings for the denoiser (runner, treegrpo/distributed.py)",
    "custom_imports": "modules to import for plugins (mmengine)",
}
KNOWN_KEYS = frozenset(COMPONENT_KEYS) | frozenset(OTHER_KEYS)
# Arguments that name a local file or folder, never a hub id (reward checkpoints).
LOCAL_FILE_ARGS = ("checkpoint",)
# Arguments that name a hub id or a local folder.
HUB_OR_LOCAL_ARGS = {"policy": ("model_path",),
                     "reward": ("clip_path", "clip_model", "model", "tokenizer")}


class ConfigError(ValueError):
    """A config with one or more problems; the message lists each with its key and fix."""


def validate_config(cfg, world_size: int | None = None) -> None:
    """Raise :class:`ConfigError` listing every problem found in ``cfg`` (an mmengine Config or a
    dict); return None when there is none. Reads prompt files' existence only, loads no model.
    ``world_size``: processes of the run (default: the ``WORLD_SIZE`` that torchrun and
    ``accelerate launch`` set, else 1)."""
    problems = (check_top_level_keys(cfg) + check_components(cfg) + check_numbers(cfg, world_size)
                + check_window(cfg) + check_prompt_files(cfg) + check_weighted_sums(cfg.get("reward"), "reward")
                + check_paths(cfg))
    if problems:
        where = getattr(cfg, "filename", None)
        header = f"config {where} has {len(problems)} problem(s):" if where else \
            f"config has {len(problems)} problem(s):"
        raise ConfigError("\n".join([header] + [f"  - {problem}" for problem in problems]))


# ------------------------------------------------------------------ keys and arguments
def close_matches(word: str, candidates) -> str:
    """' (did you mean a, b?)' for the close matches of ``word`` among ``candidates``, else ''."""
    matches = difflib.get_close_matches(word, sorted(candidates), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(matches)}?)" if matches else ""


def check_top_level_keys(cfg) -> list[str]:
    """Unknown top-level keys (e.g. ``max_iter``) with their close matches."""
    return [f"unknown top-level key '{key}'{close_matches(key, KNOWN_KEYS)}; known keys: "
            f"{', '.join(sorted(KNOWN_KEYS))}" for key in cfg.keys()
            if key not in KNOWN_KEYS and not key.startswith("_")]


def registered_class(registry, type_name: Any):
    """The class registered under ``type_name`` (:func:`resolve_type`: registered names and
    classes only); None when it is not one (``registry.build`` reports that with the names)."""
    try:
        return resolve_type(registry, type_name)
    except (KeyError, TypeError):
        return None


def accepted_arguments(cls) -> tuple[set[str] | None, set[str]]:
    """(accepted argument names or None when the class takes ``**kwargs``, required names)."""
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):  # no introspectable signature: accept anything
        return None, set()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None, set()
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return {p.name for p in named}, {p.name for p in named if p.default is p.empty}


def check_component(component: Any, key: str, registry, origin=None) -> list[str]:
    """Arguments of one component dict that its registered class does not accept, and required
    ones it lacks; nested dicts with a registered ``type`` are checked as well."""
    if not hasattr(component, "keys") or "type" not in component:
        return []
    type_name = component["type"]
    cls = registered_class(registry, type_name)
    if cls is None:  # an unknown type is reported by registry.build, with the registered names
        return []
    accepted, required = accepted_arguments(cls)
    problems = []
    given = [arg for arg in component if arg not in ("type", "_delete_")]
    if accepted is not None:
        for arg in given:
            if arg not in accepted:
                source = origin(key, arg) if origin else ""
                problems.append(
                    f"{key}.{arg} is not an argument of {type_name}{close_matches(arg, accepted)}"
                    f"{source}; {type_name} accepts: {', '.join(sorted(accepted)) or 'no arguments'}")
        for arg in sorted(required - set(given)):
            problems.append(f"{key}.{arg} is required by {type_name} and missing: set {key}.{arg}=...")
    for arg in given:
        problems += check_nested(component[arg], f"{key}.{arg}", origin)
    return problems


def check_nested(value: Any, key: str, origin=None) -> list[str]:
    """Check dicts with a ``type`` inside a component's arguments (WeightedSum parts, a hook's
    dataset, an OCR engine, a detector): each against the registry that has its type."""
    if isinstance(value, (list, tuple)):
        return [p for i, item in enumerate(value) for p in check_nested(item, f"{key}[{i}]", origin)]
    if not hasattr(value, "keys"):
        return []
    if "type" not in value:  # a mapping of named components (EvalHook's extra_rewards)
        return [p for name, item in value.items() for p in check_nested(item, f"{key}.{name}", origin)]
    for registry in (*COMPONENT_KEYS.values(), OCR_ENGINES, DETECTORS):
        if registered_class(registry, value["type"]) is not None:
            return check_component(value, key, registry, origin)
    return []


def check_components(cfg) -> list[str]:
    """Every component's arguments (and each hook's) against its class's signature."""
    origin = ArgumentOrigin(getattr(cfg, "filename", None))
    problems = []
    for key, registry in COMPONENT_KEYS.items():
        if key in cfg:
            problems += check_component(cfg[key], key, registry, origin)
    for i, hook in enumerate(cfg.get("hooks") or []):
        problems += check_component(hook, f"hooks[{i}]", HOOKS, origin)
    return problems


class ArgumentOrigin:
    """Which config file a component argument comes from, for the message of a leftover key:
    mmengine merges a child's dict into its base's, so the base's arguments stay unless the
    child sets ``_delete_=True``."""

    def __init__(self, filename: str | None) -> None:
        self.filename = filename

    def __call__(self, key: str, arg: str) -> str:
        if not self.filename or not Path(self.filename).is_file():
            return ""
        component = key.split(".")[0].split("[")[0]
        if "." in key or "[" in key:
            return ""  # nested arguments: the base-file search below only knows top-level dicts
        found = defining_file(Path(self.filename), component, arg)
        if found is None:
            return " (set by --cfg-options or a hook)"
        if found == Path(self.filename):
            return f" (set in {found})"
        return (f"; it comes from the base config's {component} ({found}): add _delete_=True to "
                f"{component} in {self.filename} to replace the whole dict")


def file_assignments(path: Path) -> dict[str, ast.expr]:
    """Top-level ``name = value`` assignments of a config file, unevaluated."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return {}
    return {node.targets[0].id: node.value for node in tree.body
            if isinstance(node, ast.Assign) and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)}


def defining_file(path: Path, component: str, arg: str) -> Path | None:
    """The file (``path`` itself, else the deepest of its ``_base_`` files) whose own
    ``component = dict(...)`` sets ``arg``; None when no file does."""
    assigned = file_assignments(path)
    value = assigned.get(component)
    if isinstance(value, ast.Call) and any(kw.arg == arg for kw in value.keywords):
        return path
    deletes = isinstance(value, ast.Call) and any(kw.arg == "_delete_" for kw in value.keywords)
    if deletes:
        return None
    try:
        bases = ast.literal_eval(assigned["_base_"]) if "_base_" in assigned else []
    except ValueError:
        return None
    for base in reversed([bases] if isinstance(bases, str) else list(bases)):
        found = defining_file((path.parent / base).resolve(), component, arg)
        if found is not None:
            return found
    return None


# ------------------------------------------------------------------ values
def _positive_int(cfg_value: Any) -> bool:
    return isinstance(cfg_value, int) and not isinstance(cfg_value, bool) and cfg_value > 0


def check_numbers(cfg, world_size: int | None = None) -> list[str]:
    """prompts_per_iter, max_iters and update.micro_batch_size / num_minibatches are ints > 0;
    prompts_per_iter is divisible by the number of processes; overlap_reward is a bool."""
    problems = []
    for key in ("prompts_per_iter", "max_iters"):
        if key in cfg and not _positive_int(cfg[key]):
            problems.append(f"{key} must be an integer > 0, got {cfg[key]!r}: set {key}=<n>")
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    per_iter = cfg.get("prompts_per_iter")
    if _positive_int(per_iter) and per_iter % world_size:
        problems.append(f"prompts_per_iter={per_iter} is not divisible by the {world_size} processes "
                        f"(each samples the same number of prompts): set prompts_per_iter to a "
                        f"multiple of {world_size}, e.g. {-(-per_iter // world_size) * world_size}")
    if "overlap_reward" in cfg and not isinstance(cfg["overlap_reward"], bool):
        problems.append(f"overlap_reward must be True or False, got {cfg['overlap_reward']!r}: "
                        "set overlap_reward=True to score in a background thread (default False)")
    update = cfg.get("update") or {}
    for key in ("micro_batch_size", "num_minibatches", "num_inner_epochs"):
        if key in update and not _positive_int(update[key]):
            problems.append(f"update.{key} must be an integer > 0, got {update[key]!r}: "
                            f"set update.{key}=<n>")
    return problems


def check_window(cfg) -> list[str]:
    """Build the (cheap) schedule and plan iteration 0 for the sampler's num_steps, so that a
    window that does not fit, a per-depth k list of the wrong length and a tree with a single leaf
    (k ** depth = 1: every advantage is zero) are found now."""
    from .registry import build

    schedule_cfg, sampler_cfg = cfg.get("schedule"), cfg.get("sampler") or {}
    if not hasattr(schedule_cfg, "keys") or registered_class(SCHEDULES, schedule_cfg.get("type")) is None:
        return []
    num_steps = sampler_cfg.get("num_steps", 10)
    try:
        schedule = build(SCHEDULES, schedule_cfg)
        plan = schedule.plan(0, num_steps)
    except (TypeError, ValueError) as error:
        return [f"schedule {dict(schedule_cfg)} with sampler.num_steps={num_steps!r}: {error}"]
    if sampler_cfg.get("type") == "TreeSampler" and plan.num_leaves < 2:
        return [f"schedule.k={plan.k} with depth={plan.depth} gives 1 leaf per prompt (the product of "
                "k over the depths): every advantage would be zero and nothing would train; set "
                "schedule.k >= 2 (or a per-depth list with a product > 1)"]
    return []


def _dataset_paths(cfg) -> list[tuple[str, Any]]:
    found = [(key, cfg[key]) for key in ("train_dataset", "eval_dataset") if key in cfg]
    for i, hook in enumerate(cfg.get("hooks") or []):
        if hasattr(hook, "keys") and "dataset" in hook:
            found.append((f"hooks[{i}].dataset", hook["dataset"]))
    return [(f"{key}.path", dataset["path"]) for key, dataset in found
            if hasattr(dataset, "keys") and "path" in dataset]


def check_prompt_files(cfg) -> list[str]:
    """Every dataset ``path`` (training, evaluation, EvalHook) is a readable file."""
    problems = []
    for key, path in _dataset_paths(cfg):
        try:
            with open(Path(str(path)).expanduser(), "rb") as file:
                file.read(1)
        except OSError as error:
            problems.append(f"{key}={str(path)!r} cannot be read ({error.strerror or error}): "
                            f"write one prompt per line there or set --cfg-options {key}=<file>")
    return problems


def check_weighted_sums(reward: Any, key: str) -> list[str]:
    """A WeightedSum needs one weight (and one name, when names are given) per reward."""
    if not hasattr(reward, "keys") or reward.get("type") != "WeightedSum":
        return []
    parts, weights, names = reward.get("rewards"), reward.get("weights"), reward.get("names")
    if not isinstance(parts, (list, tuple)):
        return [f"{key}.rewards must be a list of reward dicts, got {parts!r}"]
    problems = []
    if not isinstance(weights, (list, tuple)) or len(weights) != len(parts):
        problems.append(f"{key}.weights must list one number per reward ({len(parts)}), got "
                        f"{weights!r}: set {key}.weights=[{', '.join(['1.0'] * len(parts))}]")
    if names is not None and (not isinstance(names, (list, tuple)) or len(names) != len(parts)):
        problems.append(f"{key}.names must list one name per reward ({len(parts)}), got {names!r}")
    for i, part in enumerate(parts):
        problems += check_weighted_sums(part, f"{key}.rewards[{i}]")
    return problems


def check_paths(cfg) -> list[str]:
    """Model paths are plausible: a hub-or-local argument is an existing path or a hub id (the
    policy's, offline, a cached one); a reward checkpoint is an existing file (WeightedSum parts
    too)."""
    from .policies.diffusers_common import how_to_provide, hub_offline, hub_pipeline_cached, is_hub_id

    problems = []
    policy = cfg.get("policy")
    model_path = policy.get("model_path") if hasattr(policy, "keys") else None
    if (isinstance(model_path, str) and hub_offline() and not Path(model_path).expanduser().exists()
            and is_hub_id(model_path) and not hub_pipeline_cached(model_path)):
        problems.append(f"policy.model_path={model_path!r} is a hub id, HF_HUB_OFFLINE is set and "
                        f"the hub cache does not hold it: {how_to_provide(model_path)}")
    components = [("policy", policy, "policy")] if hasattr(policy, "keys") else []
    components += [(key, part, "reward") for key, part in _reward_parts(cfg.get("reward"), "reward")]
    for key, component, kind in components:
        for arg in HUB_OR_LOCAL_ARGS[kind]:
            value = component.get(arg)
            if isinstance(value, str) and value and not Path(value).expanduser().exists() \
                    and not is_hub_id(value, namespaced=kind == "policy"):
                problems.append(f"{key}.{arg}={value!r} is neither an existing path nor a hub id "
                                f"(namespace/name): {how_to_provide(value, f'{key}.{arg}')}")
        for arg in LOCAL_FILE_ARGS if kind == "reward" else ():
            value = component.get(arg)
            if isinstance(value, str) and value and not Path(value).expanduser().exists():
                problems.append(f"{key}.{arg}={value!r} does not exist: download the "
                                f"{component.get('type')} weights (README 'Reward models' says from "
                                f"where) or set --cfg-options {key}.{arg}=<file>")
    return problems


def _reward_parts(reward: Any, key: str) -> list[tuple[str, Any]]:
    """(key, dict) of a reward and, for a WeightedSum, of each of its parts."""
    if not hasattr(reward, "keys"):
        return []
    parts = [(key, reward)]
    if reward.get("type") == "WeightedSum" and isinstance(reward.get("rewards"), (list, tuple)):
        for i, part in enumerate(reward["rewards"]):
            parts += _reward_parts(part, f"{key}.rewards[{i}]")
    return parts


def main(argv: list[str] | None = None) -> int:
    """``python -m treegrpo.config_check CONFIG [--cfg-options key=value ...]``: exit status 0 and
    'ok', or 1 and the list of problems."""
    import argparse

    from mmengine.config import DictAction

    from .inference import load_config

    parser = argparse.ArgumentParser(description="Check a treegrpo config without loading models")
    parser.add_argument("config")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    parser.add_argument("--world-size", type=int, help="processes of the run (default: $WORLD_SIZE or 1)")
    args = parser.parse_args(argv)
    try:
        validate_config(load_config(args.config, args.cfg_options), args.world_size)
    except (ConfigError, FileNotFoundError) as error:
        print(error)
        return 1
    print(f"{args.config}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
