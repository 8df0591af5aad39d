"""Convert treegrpo LoRA adapters between the diffusers/peft layout and ComfyUI's "Load LoRA" layout.

A LoRA module at path ``M`` of the denoiser (e.g. ``transformer_blocks.0.attn.to_q``) holds
``down`` = lora_A ``[r, in]``, ``up`` = lora_B ``[out, r]`` and ``alpha``; it changes the weight by
``W += (alpha / r) * up @ down``. Layouts (``M_`` = ``M`` with every ``.`` replaced by ``_``):

- diffusers (``checkpoints/iter_<n>/lora/pytorch_lora_weights.safetensors``): keys
  ``<prefix>.M.lora_A.weight`` / ``<prefix>.M.lora_B.weight``; alpha = ``lora_alpha`` (and
  ``alpha_pattern``) of the JSON metadata entry ``lora_adapter_metadata``.
- peft (``checkpoints/iter_<n>/model.safetensors``): keys ``M.lora_A.default.weight`` /
  ``M.lora_B.default.weight``; no alpha: read from the run's ``config.py`` (``policy.lora.alpha``,
  default r).
- ComfyUI (what we export): keys ``<comfy prefix>M_.lora_down.weight`` (= A),
  ``<comfy prefix>M_.lora_up.weight`` (= B) and ``<comfy prefix>M_.alpha`` (float32 scalar).

The family's key layout (prefixes, ComfyUI module names, which modules ComfyUI maps, family
detection) is in :mod:`treegrpo.lora_keys`; its names are re-exported here.

Why ComfyUI reads the values (comfyanonymous/ComfyUI):
- ``load_lora`` (now ``comfy/weight_adapter/lora.py::LoRAAdapter.load``) reads ``<key>.lora_up.weight``
  / ``<key>.lora_down.weight`` and ``<key>.alpha`` (``.item()``); ``calculate_weight`` applies
  ``W += strength * (alpha / lora_down.shape[0]) * (lora_up.flatten(1) @ lora_down.flatten(1))``.
  A file without ``.alpha`` gets scale 1 - which is why the diffusers file (alpha only in the
  metadata) is not loaded correctly by ComfyUI when alpha != r, and why we write ``.alpha``.
The ComfyUI keys drop the dots (and rename Wan's modules), so :func:`from_comfyui` needs the set
of real module names to undo the mapping (an underscore may be a dot or part of a name: ``to_out_0`` -> ``to_out.0``).
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .lora_keys import (COMFYUI_MODULES, FAMILIES, POLICY_FAMILY, WAN_RENAMES,  # noqa: F401 - re-exported
                        check_family, check_family_matches, comfyui_key, comfyui_name, detect_family,
                        underscore_index, unsupported_modules)

METADATA_KEY = "lora_adapter_metadata"
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"


@dataclass
class LoraModule:
    """One adapted layer: ``down`` [r, in, ...] (lora_A), ``up`` [out, r, ...] (lora_B), ``alpha``."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """The factor ComfyUI and peft (without rsLoRA) apply: alpha / r."""
        return self.alpha / self.rank

    def delta(self) -> torch.Tensor:
        """[out, in * prod(kernel)] float32: ``(alpha / r) * up @ down`` (reshape to the weight's shape)."""
        return self.scale * (self.up.flatten(1).float() @ self.down.flatten(1).float())


def check_alpha(alpha: float | None) -> float | None:
    """None (keep the stored alpha) or a positive finite number; ValueError otherwise (a
    negative alpha flips the LoRA's update, 0 removes it)."""
    if alpha is None:
        return None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive number (LoRA scale = alpha / rank), got alpha={alpha!r}; "
                         "leave it out to keep the run's alpha")
    return float(alpha)


# ----------------------------------------------------------------------------------- parsing
def _pattern_value(pattern: dict, name: str, default):
    """peft's rule for rank_pattern / alpha_pattern: a key matches a module name ending in it."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _pair(halves: dict[str, dict[str, torch.Tensor]], alpha_of) -> dict[str, LoraModule]:
    modules = {}
    for name in sorted(halves):
        if set(halves[name]) != {"A", "B"}:
            raise KeyError(f"LoRA module {name!r} lacks lora_{'B' if 'A' in halves[name] else 'A'}")
        modules[name] = LoraModule(down=halves[name]["A"], up=halves[name]["B"],
                                   alpha=float(alpha_of(name, halves[name]["A"].shape[0])))
    return modules


def from_diffusers(state: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> tuple[str, dict[str, LoraModule]]:
    """A diffusers LoRA file (``<prefix>.M.lora_A.weight``; alpha in the JSON metadata) ->
    (prefix, {M: LoraModule}). Without metadata alpha = r (diffusers' own default)."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    prefixes = set()
    for key, value in state.items():
        match = re.match(r"^([^.]+)\.(.+)\.lora_([AB])\.weight$", key)
        if match is None:
            raise KeyError(f"{key!r} is not a diffusers LoRA key (<prefix>.<module>.lora_A/B.weight)")
        prefixes.add(match.group(1))
        halves.setdefault(match.group(2), {})[match.group(3)] = value
    if len(prefixes) != 1:
        raise KeyError(f"expected LoRA weights of one model, found prefixes {sorted(prefixes)}")
    prefix = prefixes.pop()
    config = {}
    if metadata and METADATA_KEY in metadata:
        raw = json.loads(metadata[METADATA_KEY])
        config = {k[len(prefix) + 1:]: v for k, v in raw.items() if k.startswith(prefix + ".")}
    if config.get("use_dora") or config.get("lora_bias"):
        raise ValueError("DoRA / LoRA-bias adapters are not supported by this export")
    rslora = bool(config.get("use_rslora"))

    def alpha_of(name: str, rank: int) -> float:
        alpha = _pattern_value(config.get("alpha_pattern") or {}, name, config.get("lora_alpha", rank))
        return alpha * math.sqrt(rank) if rslora else alpha  # rsLoRA scale alpha/sqrt(r) as alpha'/r

    return prefix, _pair(halves, alpha_of)


def from_peft(state: dict[str, torch.Tensor], alpha: float | None) -> dict[str, LoraModule]:
    """A checkpoint's ``model.safetensors`` (``M.lora_A.<adapter>.weight``) -> {M: LoraModule}.

    ``alpha`` is not stored there: pass the run's ``lora.alpha`` (None: alpha = r, peft's default
    as used by treegrpo). Raises ValueError for a full fine-tuning checkpoint (no LoRA keys)."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    adapters, other = set(), []
    for key, value in state.items():
        match = re.match(r"^(.+)\.lora_([AB])\.([^.]+)\.weight$", key)
        if match is None:
            other.append(key)
            continue
        adapters.add(match.group(3))
        halves.setdefault(match.group(1), {})[match.group(2)] = value
    if not halves:
        raise ValueError(
            f"the checkpoint holds no LoRA tensors ({len(state)} tensors such as {sorted(state)[:3]}): "
            "it is a full fine-tuning checkpoint; there is no LoRA to export (load the weights with "
            "treegrpo.inference.load_policy and save the whole model instead)")
    if other or len(adapters) != 1:
        raise ValueError(f"expected only the tensors of one LoRA adapter, found adapters {sorted(adapters)} "
                         f"and other tensors {other[:3]}")
    return _pair(halves, lambda name, rank: rank if alpha is None else alpha)


# ----------------------------------------------------------------------------------- writing
def to_comfyui(modules: dict[str, LoraModule], family: str,
               dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """{M: LoraModule} -> ComfyUI state dict: ``<key>.lora_down.weight`` / ``.lora_up.weight``
    (in ``dtype``, default: as stored) and ``<key>.alpha`` (float32 scalar)."""
    state: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        key = comfyui_key(family, name)
        if key + ".alpha" in state:
            raise ValueError(f"modules {name!r} and another one map to the same ComfyUI key {key!r}")
        cast = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
        state[key + ".lora_down.weight"] = cast(module.down).contiguous()
        state[key + ".lora_up.weight"] = cast(module.up).contiguous()
        state[key + ".alpha"] = torch.tensor(float(module.alpha), dtype=torch.float32)
    return state


def from_comfyui(state: dict[str, torch.Tensor], family: str, known_modules) -> dict[str, LoraModule]:
    """ComfyUI state dict -> {M: LoraModule}; ``known_modules`` (the model's module names, or
    those of a diffusers file) resolve which underscores were dots. A missing ``.alpha`` means
    ComfyUI's scale 1, i.e. alpha = r."""
    prefix = FAMILIES[check_family(family)][1]
    index = underscore_index(known_modules, family)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = re.match(rf"^{re.escape(prefix)}(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$", key)
        if match is None:
            raise KeyError(f"{key!r} is not a {family} ComfyUI LoRA key ({prefix}<module>.lora_down.weight, "
                           ".lora_up.weight or .alpha)")
        if match.group(1) not in index:
            raise KeyError(f"{key!r} names no known module (e.g. {sorted(index.values())[:3]})")
        parts.setdefault(index[match.group(1)], {})[match.group(2)] = value
    modules = {}
    for name in sorted(parts):
        down, up = parts[name].get("lora_down.weight"), parts[name].get("lora_up.weight")
        if down is None or up is None:
            raise KeyError(f"ComfyUI LoRA module {name!r} lacks lora_down or lora_up")
        alpha = parts[name].get("alpha")
        modules[name] = LoraModule(down=down, up=up, alpha=float(down.shape[0]) if alpha is None else alpha.item())
    return modules


def _plain(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def diffusers_state(modules: dict[str, LoraModule], prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """{M: LoraModule} -> (diffusers LoRA state dict, safetensors metadata) that
    ``pipe.load_lora_weights`` reads: the most common rank / alpha as ``r`` / ``lora_alpha``, the
    others in ``rank_pattern`` / ``alpha_pattern`` (escaped full module names)."""
    state: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        state[f"{prefix}.{name}.lora_A.weight"] = module.down
        state[f"{prefix}.{name}.lora_B.weight"] = module.up
    rank = Counter(m.rank for m in modules.values()).most_common(1)[0][0]
    alpha = Counter(m.alpha for m in modules.values()).most_common(1)[0][0]
    config = {
        "r": rank, "lora_alpha": _plain(alpha), "target_modules": sorted(modules),
        "rank_pattern": {re.escape(n): m.rank for n, m in modules.items() if m.rank != rank},
        "alpha_pattern": {re.escape(n): _plain(m.alpha) for n, m in modules.items() if m.alpha != alpha},
        "use_dora": False, "use_rslora": False, "lora_bias": False, "init_lora_weights": True,
    }
    metadata = {"format": "pt", METADATA_KEY: json.dumps({f"{prefix}.{k}": v for k, v in config.items()},
                                                          indent=2, sort_keys=True)}
    return state, metadata


def to_diffusers(state: dict[str, torch.Tensor], family: str,
                 known_modules) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """ComfyUI layout -> diffusers layout (state dict, metadata): the inverse of :func:`to_comfyui`."""
    return diffusers_state(from_comfyui(state, family, known_modules), FAMILIES[check_family(family)][0])


def known_module_names(model: nn.Module) -> list[str]:
    """Names of the Linear / Conv layers of a (possibly peft-wrapped) denoiser, as LoRA targets."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            names.append(re.sub(r"\.base_layer$", "", name))
    return sorted(n for n in set(names) if ".lora_" not in n)


# ----------------------------------------------------------------------------------- file I/O
def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return load_file(str(path)), metadata


def write_safetensors(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


LORA_SOURCES = ("auto", "diffusers", "peft", "ema")


def load_checkpoint_lora(checkpoint: str | Path, source: str = "auto",
                         alpha: float | None = None) -> tuple[dict[str, LoraModule], dict]:
    """Read the LoRA of one ``checkpoints/iter_<n>`` folder.

    ``source``: 'diffusers' (``lora/pytorch_lora_weights.safetensors``), 'peft'
    (``model.safetensors`` + alpha from ``alpha`` or the run's ``config.py``), 'ema' (the EMA
    weights ``ema.safetensors`` of an EMAHook run, same names and alpha as 'peft') or 'auto'
    (diffusers when present). Returns ({M: LoraModule}, info with 'source', 'prefix', 'policy_type')."""
    if source not in LORA_SOURCES:
        raise ValueError(f"source must be one of {list(LORA_SOURCES)}, got source={source!r}")
    alpha = check_alpha(alpha)
    ckpt = Path(checkpoint)
    lora_file = ckpt / "lora" / DIFFUSERS_FILE
    model_file = ckpt / ("ema.safetensors" if source == "ema" else "model.safetensors")
    lora_cfg, policy_type = _run_lora_config(ckpt)
    info = {"checkpoint": str(ckpt), "policy_type": policy_type, "prefix": None}
    if source == "diffusers" or (source == "auto" and lora_file.is_file()):
        if not lora_file.is_file():
            raise FileNotFoundError(f"{lora_file} does not exist (the policy wrote no diffusers LoRA); "
                                    "use source='peft' to read model.safetensors")
        info["prefix"], modules = from_diffusers(*read_safetensors(lora_file))
        info["source"] = str(lora_file)
        if alpha is not None:
            modules = {n: LoraModule(m.down, m.up, float(alpha)) for n, m in modules.items()}
        return modules, info
    if not model_file.is_file():
        hint = ("the run had no EMAHook" if source == "ema" else
                "pass a checkpoints/iter_<n> folder or a run folder that contains checkpoints/")
        raise FileNotFoundError(f"{model_file} does not exist: {hint}")
    if alpha is None and lora_cfg is not None:
        alpha = lora_cfg.get("alpha")  # None: alpha = r, as treegrpo's make_trainable does
    info["source"] = str(model_file)
    return from_peft(read_safetensors(model_file)[0], alpha), info


def _run_lora_config(ckpt: Path) -> tuple[dict | None, str | None]:
    """(policy.lora, policy.type) from the run's dumped ``config.py`` (two folders up), if readable."""
    config_file = ckpt.parent.parent / "config.py"
    if not config_file.is_file():
        return None, None
    from mmengine.config import Config

    try:
        policy = Config.fromfile(str(config_file)).get("policy", {})
    except Exception:  # noqa: BLE001 - a config that no longer parses just gives no hints
        return None, None
    lora = policy.get("lora")
    return (dict(lora) if lora is not None else None), policy.get("type")
