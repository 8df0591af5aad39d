"""LoRA files: into a treegrpo policy (both exported layouts) and into ComfyUI's own MODEL (a
diffusers-layout file converted on load, :func:`comfy_lora_state`).

Layouts read by :func:`to_trainable_state`, for a LoRA module ``m`` (e.g.
``transformer_blocks.0.attn.to_q``) of the policy's denoiser; the parsing is
``treegrpo.lora_export``'s (``from_diffusers`` / ``from_comfyui``):
- treegrpo's own checkpoint names: ``m.lora_A.default.weight`` / ``m.lora_B.default.weight``;
- diffusers (``pipe.load_lora_weights``): ``transformer.m.lora_A.weight`` / ``...lora_B.weight``
  (``unet.`` for UNets), alpha from the ``lora_adapter_metadata`` of the safetensors metadata
  (no metadata: alpha = r, as diffusers loads it);
- ComfyUI / kohya (``tools/export_lora.py``): ``lora_transformer_<m with _>.lora_down.weight``,
  ``.lora_up.weight`` and ``.alpha`` (``lora_unet_`` for UNets); applied as
  ``up @ down * alpha / rank`` (no alpha: scale 1, as ComfyUI does).
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import torch

from .paths import require_safetensors, resolve_path

PEFT_MARK = ".lora_A.default."
DIFFUSERS_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
logger = logging.getLogger(__name__)


def read_lora_modules(state: dict[str, torch.Tensor], metadata: dict[str, str] | None, policy: Any,
                      adapted: list[str]) -> dict[str, Any]:
    """{module: treegrpo.lora_export.LoraModule} of a diffusers or ComfyUI/kohya LoRA file for
    ``policy``, whose LoRA modules are ``adapted``; KeyError when the file does not fit them."""
    from treegrpo.lora_export import (FAMILIES, POLICY_FAMILY, detect_family, from_comfyui, from_diffusers,
                                      known_module_names)

    family = POLICY_FAMILY.get(type(policy).__name__) or detect_family(adapted)
    diffusers_prefix, comfy_prefix = FAMILIES[family]
    if any(key.startswith(comfy_prefix) for key in state):
        modules = from_comfyui(state, family, known_module_names(policy.denoiser))
    else:
        prefix, modules = from_diffusers(state, metadata)
        if prefix != diffusers_prefix:
            raise KeyError(f"the LoRA file adapts the {prefix!r} component, but {type(policy).__name__} "
                           f"trains {diffusers_prefix!r} (keys {diffusers_prefix}.<module>.lora_A.weight)")
    unknown = sorted(set(modules) - set(adapted))
    missing = sorted(set(adapted) - set(modules))
    if unknown or missing:
        raise KeyError(
            f"the LoRA file does not match the config's policy.lora modules: not in the policy "
            f"{unknown[:4]}, absent from the file {missing[:4]}"
        )
    return modules


def to_trainable_state(state: dict[str, torch.Tensor], policy: Any,
                       metadata: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors (and safetensors ``metadata``) of a LoRA file -> the policy's trainable state dict
    (peft names), rescaled so the policy's ``B @ A * lora_alpha / r`` equals the file's update. A
    state that already has the trainable names is returned unchanged."""
    denoiser = policy.denoiser
    params = {n: p for n, p in denoiser.named_parameters() if p.requires_grad}
    if set(state) == set(params):
        return state
    adapted = sorted({n.split(".lora_A.")[0] for n in params if ".lora_A." in n})
    if not adapted:
        raise ValueError(
            f"{type(policy).__name__} trains no LoRA adapters (the config has no policy.lora), so a "
            "LoRA file cannot be loaded into it: give a run or checkpoints/iter_<n> folder instead"
        )
    modules = read_lora_modules(state, metadata, policy, adapted)
    out: dict[str, torch.Tensor] = {}
    for name in adapted:
        module = modules[name]
        name_a, name_b = f"{name}.lora_A.default.weight", f"{name}.lora_B.default.weight"
        if module.down.shape != params[name_a].shape or module.up.shape != params[name_b].shape:
            raise ValueError(
                f"LoRA module {name!r}: file shapes down {list(module.down.shape)} / up "
                f"{list(module.up.shape)} differ from the policy's {list(params[name_a].shape)} / "
                f"{list(params[name_b].shape)} (set policy.lora.r to the file's rank)"
            )
        out[name_a] = module.down
        out[name_b] = module.up * (module.scale / float(denoiser.get_submodule(name).scaling["default"]))
    return out


def check_comfy_lora(state: dict[str, torch.Tensor], name: str) -> None:
    """Refuse a treegrpo training checkpoint given as a ComfyUI LoRA: ComfyUI would silently skip
    every one of its (peft-named) keys."""
    if any(PEFT_MARK in key for key in state):
        raise ValueError(
            f"{name} is a treegrpo training checkpoint (peft parameter names), which ComfyUI cannot "
            "read: export it with `python tools/export_lora.py` and load the exported file"
        )


def read_metadata(path: Path) -> dict[str, str]:
    """The JSON metadata of a safetensors file (the header only; no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def comfy_lora_state(state: dict[str, torch.Tensor], metadata: dict[str, str], name: str) -> dict[str, torch.Tensor]:
    """The tensors to give ComfyUI's LoRA loader for the file ``name``: a ComfyUI / kohya file
    unchanged; a diffusers-layout file (what a run writes under ``lora/``) converted to the
    ComfyUI layout with its alpha written as ``.alpha`` (ComfyUI would read its keys but ignore
    the alpha in the metadata: scale 1 instead of alpha / r, half strength at alpha = 2r); a
    treegrpo training checkpoint, or a diffusers file that cannot be converted, refused."""
    from treegrpo.lora_export import detect_family, from_diffusers, to_comfyui, unsupported_modules

    check_comfy_lora(state, name)
    if not any(key.endswith(DIFFUSERS_SUFFIXES) for key in state):
        return state
    try:
        prefix, modules = from_diffusers(state, metadata)
        family = detect_family(modules, prefix)
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"{name} is a diffusers-layout LoRA that cannot be converted for ComfyUI ({error}); ComfyUI "
            "would apply it ignoring its alpha. Export the run for ComfyUI and load that file: `python "
            "tools/export_lora.py work_dirs/<config>/<stamp> --out "
            f"ComfyUI/models/loras/{Path(name).stem}_comfyui.safetensors`"
        ) from None
    skipped = unsupported_modules(family, modules)
    if skipped:
        logger.warning("treegrpo LoRA %s: ComfyUI has no key for %d module(s), e.g. %s; they are skipped",
                       name, len(skipped), skipped[:3])
    logger.info("treegrpo LoRA %s: diffusers layout converted to ComfyUI's (alpha written per module)", name)
    return to_comfyui(modules, family)


def apply_lora_to_model(model: Any, lora_name: str, strength_model: float) -> Any:
    """ComfyUI's MODEL patched with the LoRA file ``lora_name`` (in the "loras" folders), through
    ComfyUI's own loader, as its LoraLoaderModelOnly does. Raises RuntimeError outside ComfyUI."""
    try:
        comfy_utils = importlib.import_module("comfy.utils")
        comfy_sd = importlib.import_module("comfy.sd")
    except ImportError as error:
        raise RuntimeError(
            "Apply treegrpo LoRA to MODEL needs ComfyUI (comfy.utils / comfy.sd are not importable): "
            "copy or link comfyui_nodes/ into ComfyUI/custom_nodes/ and run it there; to use a "
            "LoRA outside ComfyUI, load it with 'Load treegrpo checkpoint'"
        ) from error
    path = require_safetensors(resolve_path(lora_name, "loras"))
    if strength_model == 0:
        return model
    lora = comfy_lora_state(comfy_utils.load_torch_file(str(path), safe_load=True), read_metadata(path), path.name)
    new_model, _ = comfy_sd.load_lora_for_models(model, None, lora, strength_model, 0)
    return new_model
