"""What the nodes accept from a workflow (a workflow is untrusted input: anyone who can queue a
prompt can set every widget).

- Every path-valued argument, at any depth of the ``options`` / ``reward_kwargs`` JSON (nested
  objects, dotted keys, lists), is resolved inside the treegrpo model folders (:mod:`paths`). Path
  arguments are those named ``checkpoint``, ``weights``, ``path``, ``model_path``, ``*_path`` and
  the reward models' ``model``, ``tokenizer``, ``clip_model``.
- Nothing downloads from a node: a reward's model argument (given, or its default, e.g.
  PickScore's ``yuvalkirstain/PickScore_v1``) and the policy's ``model_path`` must name a folder
  or file inside the model folders; a Hugging Face hub id is refused.
- Weights load from safetensors only: a ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` reward
  checkpoint is refused (convert it once with the reward's converter, e.g.
  ``python -m treegrpo.rewards.clip_convert``), as is a model folder with pickle-only weights.
- No JSON input chooses what is built or imported: ``options`` and ``reward_kwargs`` may not hold
  the keys :data:`FORBIDDEN_KEYS` at any depth (dotted keys too, ``"kernel.type"``). The one
  exception is a WeightedSum's parts: each item of its ``"rewards"`` list names its reward in
  ``"type"``; the node's own reward comes from its ``reward`` widget.
- Only the rewards :func:`pack_allows` are run, checked by class after resolution in the reward
  registry (at every nesting level, and again on the built object): the local rewards treegrpo
  ships, plus plugin rewards whose class sets ``comfyui_allowed = True``. Rewards that reach the
  network (``Reward.sends_requests``: HTTPReward, VLMJudgeReward, StructuredReward, and anything
  subclassing them; a workflow could make the server send requests to any address) are refused,
  opted in or not.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from .paths import check_model_folder, model_roots, require_safetensors, resolve_path

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")

PATH_KEYS = ("checkpoint", "weights", "path", "model_path", "model", "tokenizer", "clip_model")
# keys that would let a JSON input pick a class, drop a config section or import code
FORBIDDEN_KEYS = ("type", "_delete_", "custom_imports", "_base_", "_scope_")
SHIPPED_REWARDS_PACKAGE = "treegrpo.rewards."


def is_path_key(key: Any) -> bool:
    """True for a (dotted) key whose last part names a path: :data:`PATH_KEYS` or ``*_path``."""
    last = str(key).rsplit(".", 1)[-1]
    return last in PATH_KEYS or last.endswith("_path")


def is_network_reward(cls: type) -> bool:
    """True for rewards that may send requests (``sends_requests``: HTTPReward, the VLM judge,
    the structured reward's detectors) and every subclass of HTTPReward, whatever it sets."""
    from treegrpo.rewards.http import HTTPReward

    return issubclass(cls, HTTPReward) or getattr(cls, "sends_requests", False) is not False


def pack_allows(cls: type) -> bool:
    """True for a reward class the nodes run: not a network reward, and shipped by treegrpo
    (defined in ``treegrpo.rewards``) or a plugin class that sets ``comfyui_allowed = True``."""
    shipped = cls.__module__.startswith(SHIPPED_REWARDS_PACKAGE)
    return not is_network_reward(cls) and (shipped or getattr(cls, "comfyui_allowed", False) is True)


def check_pack_reward(cls: type, where: str) -> type:
    """``cls`` if the nodes run it (:func:`pack_allows`), else a ValueError naming the fix."""
    if is_network_reward(cls):
        raise ValueError(
            f"{where}: {cls.__name__} is not available in the ComfyUI nodes: it sends the images to a URL "
            "that a workflow could point at any address reachable from the ComfyUI server (SSRF). Score "
            "with a local reward here, or use HTTPReward in training configs (tools/train.py)"
        )
    if not pack_allows(cls):
        raise ValueError(
            f"{where}: the plugin reward {cls.__module__}.{cls.__name__} is not enabled for the ComfyUI "
            "nodes; its author enables it by setting the class attribute comfyui_allowed = True (for a "
            "reward that runs locally and names its file arguments as in comfyui_nodes/safety.py PATH_KEYS)"
        )
    return cls


def allowed_reward_class(type_: Any, where: str) -> type:
    """The reward class ``type_`` names in the reward registry (never an import path), checked
    by :func:`check_pack_reward`; a ValueError naming ``where`` otherwise."""
    from treegrpo.registry import REWARDS, resolve_type

    try:
        cls = resolve_type(REWARDS, type_)
    except KeyError:
        raise ValueError(f"{where}: unknown reward {type_!r} (a registered reward name is needed; import "
                         f"paths are not followed); the nodes run {pack_reward_names()}") from None
    except TypeError as error:
        raise ValueError(f"{where}: {error}") from None
    return check_pack_reward(cls, where)


def pack_reward_names() -> list[str]:
    """Sorted names of the registered rewards the nodes run (:func:`pack_allows`)."""
    from treegrpo.registry import REWARDS, registered_names, resolve_type

    return [name for name in registered_names(REWARDS) if pack_allows(resolve_type(REWARDS, name))]


def is_combination(cls: type) -> bool:
    """True for WeightedSum (and subclasses): rewards whose ``rewards`` argument lists parts."""
    from treegrpo.rewards.combine import WeightedSum

    return issubclass(cls, WeightedSum)


def refuse_forbidden_keys(values: Any, where: str) -> None:
    """Raise ValueError if a key of :data:`FORBIDDEN_KEYS` (or a dotted key with one as a part)
    appears at any depth of the JSON-like ``values``."""
    if isinstance(values, dict):
        for key, item in values.items():
            at = f"{where}.{key}"
            if any(part in FORBIDDEN_KEYS for part in str(key).split(".")):
                raise ValueError(
                    f"{at}: a workflow may not set the keys {list(FORBIDDEN_KEYS)} (they choose which "
                    "classes are built or which code is imported). Pick the reward with the node's "
                    "reward input; change the policy, kernel or imports in the config file in the treegrpo "
                    "model folder"
                )
            refuse_forbidden_keys(item, at)
    elif isinstance(values, (list, tuple)):
        for index, item in enumerate(values):
            refuse_forbidden_keys(item, f"{where}[{index}]")


def check_reward_kwargs(kwargs: dict, cls: type, where: str = "reward_kwargs") -> None:
    """Refuse :data:`FORBIDDEN_KEYS` in the arguments ``kwargs`` of the reward class ``cls``,
    except each part's ``type`` in the ``rewards`` list of a WeightedSum, which must name a
    reward the nodes run (:func:`allowed_reward_class`; nested WeightedSums checked the same way)."""
    for key, value in kwargs.items():
        if key == "rewards" and is_combination(cls) and isinstance(value, (list, tuple)):
            for index, part in enumerate(value):
                at = f"{where}.rewards[{index}]"
                if not isinstance(part, dict) or "type" not in part:
                    raise ValueError(f'{at} must be an object naming its reward, e.g. {{"type": "Colorfulness"}}')
                part_cls = allowed_reward_class(part["type"], f"{at}.type")
                check_reward_kwargs({k: v for k, v in part.items() if k != "type"}, part_cls, at)
        else:
            refuse_forbidden_keys({key: value}, where)


def check_reward_classes(spec: Any, where: str = "reward") -> None:
    """Every reward of a full spec (``type`` at its root and in each WeightedSum's parts, at any
    depth) is one the nodes run (:func:`allowed_reward_class`)."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a reward config object with a type, got {type(spec).__name__}")
    cls = allowed_reward_class(spec.get("type"), f"{where}.type")
    if is_combination(cls):
        for index, part in enumerate(spec.get("rewards") or []):
            check_reward_classes(part, f"{where}.rewards[{index}]")


def check_built_reward(reward: Any, where: str = "reward") -> Any:
    """``reward`` if its class and those of every reward it holds (WeightedSum.parts, a wrapper's
    inner reward such as FrameAveragedReward.reward: any attribute that is a Reward or a list of
    them, at any depth) are ones the nodes run."""
    from treegrpo.rewards.base import Reward

    check_pack_reward(type(reward), where)
    for name, value in vars(reward).items():
        items = value if isinstance(value, (list, tuple)) else [value]
        for index, item in enumerate(items):
            if isinstance(item, Reward):
                at = f"{where}.{name}" + (f"[{index}]" if isinstance(value, (list, tuple)) else "")
                check_built_reward(item, at)
    return reward


def resolve_model_value(value: str, where: str, how: str = "") -> str:
    """``value`` (a name relative to a treegrpo model folder, or an absolute path inside one) ->
    its absolute path; a FileNotFoundError that says where to put the model (and ``how`` to
    name it) otherwise."""
    try:
        return str(resolve_path(value, "treegrpo"))
    except FileNotFoundError:
        roots = model_roots("treegrpo")
        home = roots[0] if roots else Path("ComfyUI/models/treegrpo")
        raise FileNotFoundError(
            f"{where} = {value!r} is not in the treegrpo model folders ({', '.join(map(str, roots))}). "
            "The nodes load models only from these folders and download nothing (a Hugging Face hub "
            f"id is not fetched): put the model folder under {home} (e.g. {home / Path(value).name}) "
            f"and give its name {how or 'relative to that folder'}"
        ) from None


def safe_weights(path: str) -> str:
    """A resolved weight path: a file must be safetensors (or a config / text file), a folder
    must not hold pickle-only weights. Convert reward checkpoints once (e.g. ``python -m
    treegrpo.rewards.clip_convert HPS_v2.1_compressed.pt OUT_DIR``) to use them here."""
    resolved = Path(path)
    if resolved.is_dir():
        check_model_folder(resolved)
    elif resolved.suffix in PICKLE_SUFFIXES:
        require_safetensors(resolved)
    return path


def resolve_path_values(values: Any, where: str = "options") -> Any:
    """A copy of ``values`` (JSON-like: dicts, lists, scalars) with every string under a path key
    (:func:`is_path_key`, at any depth; list items under a path key too) resolved inside the
    treegrpo model folders. Raises PathNotAllowedError for a path outside them,
    FileNotFoundError for one not in them."""

    label = "reward_kwargs" if where == "reward" else where

    def walk(value: Any, at: str, key: str | None) -> Any:
        if isinstance(value, dict):
            out = {}
            for name, item in value.items():
                out[name] = walk(item, f"{at}.{name}", str(name) if is_path_key(name) else None)
            return out
        if isinstance(value, (list, tuple)):
            return type(value)(walk(item, f"{at}[{i}]", key) for i, item in enumerate(value))
        if key is not None and isinstance(value, str) and value.strip():
            return safe_weights(resolve_model_value(value.strip(), at, f'as "{key}" in {label}'))
        return value

    return walk(values, where, None)


def with_model_defaults(spec: Any) -> Any:
    """A copy of a reward spec where every registered reward (nested ones too, e.g. in a
    WeightedSum) gets the defaults of its path arguments written out (so a default hub id is
    checked like a given one)."""
    from treegrpo.registry import REWARDS, resolve_type

    if isinstance(spec, (list, tuple)):
        return type(spec)(with_model_defaults(item) for item in spec)
    if not isinstance(spec, dict):
        return spec
    out = {key: with_model_defaults(item) for key, item in spec.items()}
    try:
        cls = resolve_type(REWARDS, out["type"]) if "type" in out else None
    except (KeyError, TypeError):
        cls = None  # not a reward: check_reward_classes has checked every reward type
    if inspect.isclass(cls):
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name not in out and is_path_key(name) and isinstance(param.default, str) and param.default:
                out[name] = param.default
    return out


def check_reward_spec(spec: dict) -> dict:
    """The reward spec to build: every reward class checked (:func:`check_reward_classes`), path
    arguments (defaults included) resolved inside the model folders."""
    check_reward_classes(spec)
    return resolve_path_values(with_model_defaults(spec), "reward")


def policy_model_folder(value: str) -> str:
    """``policy.model_path`` (from the config, ``options`` or the model_path widget) -> the
    diffusers folder inside the model folders, with safetensors weights (:func:`check_model_folder`)."""
    return str(check_model_folder(Path(resolve_model_value(value.strip(), "policy.model_path",
                                                            "as the model_path input"))))
