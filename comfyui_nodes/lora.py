"""LoRA files: into a treegrpo policy (both exported layouts) and into ComfyUI's own MODEL.

Layouts read by :func:`to_trainable_state`, for a LoRA module ``m`` (e.g.
``transformer_blocks.0.attn.to_q``) of the policy's denoiser:
- treegrpo's own checkpoint names: ``m.lora_A.default.weight`` / ``m.lora_B.default.weight``;
- diffusers (``pipe.load_lora_weights``): ``transformer.m.lora_A.weight`` / ``...lora_B.weight``
  (``unet.`` for UNets), scaled like the policy (its ``lora_alpha`` is the config's);
- ComfyUI / kohya (``tools/export_lora.py``): ``lora_transformer_<m with _>.lora_down.weight``,
  ``.lora_up.weight`` and ``.alpha`` (``lora_unet_`` for UNets); applied as
  ``up @ down * alpha / rank`` (no alpha: scale 1, as ComfyUI does).
"""
from __future__ import annotations

import importlib
import re
from typing import Any

import torch

from .paths import require_safetensors, resolve_path

DIFFUSERS_KEY = re.compile(r"^(?:transformer|unet)\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
KOHYA_KEY = re.compile(r"^lora_(?:transformer|unet)_(?P<flat>.+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$")
PARTS = {"A": "down", "B": "up", "lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
PEFT_MARK = ".lora_A.default."


def _parse_key(key: str, by_flat: dict[str, str]) -> tuple[str, str, str]:
    """(module name, 'down' | 'up' | 'alpha', 'diffusers' | 'kohya') of one LoRA file key."""
    match = DIFFUSERS_KEY.match(key)
    if match:
        return match["module"], PARTS[match["part"]], "diffusers"
    match = KOHYA_KEY.match(key)
    if match and match["flat"] in by_flat:
        return by_flat[match["flat"]], PARTS[match["part"]], "kohya"
    raise KeyError(
        f"LoRA key {key!r} is neither diffusers (transformer.<module>.lora_A.weight) nor "
        "ComfyUI/kohya (lora_transformer_<module>.lora_down.weight) layout for a module the "
        "policy adapts"
    )


def to_trainable_state(state: dict[str, torch.Tensor], policy: Any) -> dict[str, torch.Tensor]:
    """Tensors of a LoRA file -> the policy's trainable state dict (peft names), rescaled so the
    policy's ``B @ A * lora_alpha / r`` equals the file's update. A state that already has the
    trainable names is returned unchanged."""
    denoiser = policy.unwrapped_denoiser()
    params = {n: p for n, p in denoiser.named_parameters() if p.requires_grad}
    if set(state) == set(params):
        return state
    modules = sorted({n.split(".lora_A.")[0] for n in params if ".lora_A." in n})
    if not modules:
        raise ValueError(
            f"{type(policy).__name__} trains no LoRA adapters (the config has no policy.lora), so a "
            "LoRA file cannot be loaded into it: give a run or checkpoints/iter_<n> folder instead"
        )
    by_flat = {m.replace(".", "_"): m for m in modules}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    layouts: dict[str, str] = {}
    for key, value in state.items():
        module, part, layout = _parse_key(key, by_flat)
        layouts[module] = layout
        groups.setdefault(module, {})[part] = value
    unknown = sorted(set(groups) - set(modules))
    missing = sorted(set(modules) - set(groups))
    if unknown or missing:
        raise KeyError(
            f"the LoRA file does not match the config's policy.lora modules: not in the policy "
            f"{unknown[:4]}, absent from the file {missing[:4]}"
        )
    out: dict[str, torch.Tensor] = {}
    for module in modules:
        group = groups[module]
        if "down" not in group or "up" not in group:
            raise KeyError(f"LoRA module {module!r} lacks its down/up (A/B) matrix")
        down, up = group["down"], group["up"]
        name_a, name_b = f"{module}.lora_A.default.weight", f"{module}.lora_B.default.weight"
        if down.shape != params[name_a].shape or up.shape != params[name_b].shape:
            raise ValueError(
                f"LoRA module {module!r}: file shapes down {list(down.shape)} / up {list(up.shape)} "
                f"differ from the policy's {list(params[name_a].shape)} / {list(params[name_b].shape)} "
                "(set policy.lora.r to the file's rank)"
            )
        factor = 1.0  # diffusers layout: the file's scale is the config's lora_alpha / r
        if layouts[module] == "kohya":
            file_scale = float(group["alpha"]) / down.shape[0] if "alpha" in group else 1.0
            factor = file_scale / float(denoiser.get_submodule(module).scaling["default"])
        out[name_a] = down
        out[name_b] = up * factor
    return out


def check_comfy_lora(state: dict[str, torch.Tensor], name: str) -> None:
    """Refuse a treegrpo training checkpoint given as a ComfyUI LoRA: ComfyUI would silently skip
    every one of its (peft-named) keys."""
    if any(PEFT_MARK in key for key in state):
        raise ValueError(
            f"{name} is a treegrpo training checkpoint (peft parameter names), which ComfyUI cannot "
            "read: export it with `python tools/export_lora.py` and load the exported file"
        )


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
    lora = comfy_utils.load_torch_file(str(path), safe_load=True)
    check_comfy_lora(lora, path.name)
    new_model, _ = comfy_sd.load_lora_for_models(model, None, lora, strength_model, 0)
    return new_model
