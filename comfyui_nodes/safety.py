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
- Rewards that reach the network (``HTTPReward``: a workflow could make the server send requests
  to any address) are refused.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from .paths import check_model_folder, model_roots, require_safetensors, resolve_path

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")

PATH_KEYS = ("checkpoint", "weights", "path", "model_path", "model", "tokenizer", "clip_model")
REFUSED_REWARDS = ("HTTPReward",)


def is_path_key(key: Any) -> bool:
    """True for a (dotted) key whose last part names a path: :data:`PATH_KEYS` or ``*_path``."""
    last = str(key).rsplit(".", 1)[-1]
    return last in PATH_KEYS or last.endswith("_path")


def refuse_reward(name: str) -> None:
    """Raise ValueError for a reward type the nodes do not run."""
    if name in REFUSED_REWARDS:
        raise ValueError(
            f"{name} is not available in the ComfyUI nodes: it sends the images to a URL that a "
            "workflow could point at any address reachable from the ComfyUI server (SSRF). Score "
            "with a local reward here, or use HTTPReward in training configs (tools/train.py)"
        )


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
    FileNotFoundError for one not in them, ValueError for a refused reward ``type``."""

    label = "reward_kwargs" if where == "reward" else where

    def walk(value: Any, at: str, key: str | None) -> Any:
        if isinstance(value, dict):
            out = {}
            for name, item in value.items():
                if str(name).rsplit(".", 1)[-1] == "type":
                    refuse_reward(item if isinstance(item, str) else getattr(item, "__name__", item))
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
    from treegrpo.registry import REWARDS

    if isinstance(spec, (list, tuple)):
        return type(spec)(with_model_defaults(item) for item in spec)
    if not isinstance(spec, dict):
        return spec
    out = {key: with_model_defaults(item) for key, item in spec.items()}
    cls = REWARDS.get(out["type"]) if isinstance(out.get("type"), str) else None
    if inspect.isclass(cls):
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name not in out and is_path_key(name) and isinstance(param.default, str) and param.default:
                out[name] = param.default
    return out


def check_reward_spec(spec: dict) -> dict:
    """The reward spec to build: refused types rejected, path arguments (defaults included)
    resolved inside the model folders."""
    return resolve_path_values(with_model_defaults(spec), "reward")


def policy_model_folder(value: str) -> str:
    """``policy.model_path`` (from the config, ``options`` or the model_path widget) -> the
    diffusers folder inside the model folders, with safetensors weights (:func:`check_model_folder`)."""
    return str(check_model_folder(Path(resolve_model_value(value.strip(), "policy.model_path",
                                                            "as the model_path input"))))
