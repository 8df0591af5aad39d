"""The parts of ComfyUI the nodes use when they run inside it, each with a fallback outside it:
the device (``comfy.model_management.get_torch_device``), freeing ComfyUI's models before a big
load (``unload_all_models``, ``soft_empty_cache``), progress of long loads
(``comfy.utils.comfy_tqdm``) and of sampling (``comfy.utils.ProgressBar``, with the cancel check).
"""
from __future__ import annotations

import contextlib
import importlib
from types import ModuleType
from typing import Callable, Iterator

import torch

DEVICES = ("auto", "cpu", "cuda")


def comfy_module(name: str) -> ModuleType | None:
    """ComfyUI's module ``name`` (e.g. ``comfy.model_management``), or None outside ComfyUI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def pick_device(device: str) -> str:
    """'cpu' / 'cuda' as given ('cuda' without a CUDA GPU: a RuntimeError saying what to pick);
    'auto': ComfyUI's device inside ComfyUI (it honours ``--cpu``,
    ``--cuda-device``, MPS, XPU, ...), else CUDA when available, else CPU."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise RuntimeError(
            f"device is 'cuda' but PyTorch sees no CUDA GPU here (torch {torch.__version__}, {build}): "
            "set device to 'auto' (ComfyUI's device) or 'cpu', or install a CUDA build of PyTorch "
            "in ComfyUI's Python"
        )
    if device != "auto":
        return device
    management = comfy_module("comfy.model_management")
    if management is not None and hasattr(management, "get_torch_device"):
        return str(management.get_torch_device())
    return "cuda" if torch.cuda.is_available() else "cpu"


def free_comfy_memory() -> None:
    """Inside ComfyUI, offload its loaded models and empty the allocator cache, so a treegrpo
    pipeline fits next to them; no-op outside ComfyUI."""
    management = comfy_module("comfy.model_management")
    for name in ("unload_all_models", "soft_empty_cache"):
        function = getattr(management, name, None)
        if function is not None:
            function()


@contextlib.contextmanager
def comfy_loading() -> Iterator[None]:
    """Show the tqdm bars of a long load (diffusers / transformers shards) on ComfyUI's progress
    bar (``comfy.utils.comfy_tqdm``); no-op outside ComfyUI or in versions without it."""
    utils = comfy_module("comfy.utils")
    context = getattr(utils, "comfy_tqdm", None)
    with (context() if context is not None else contextlib.nullcontext()):
        yield


def comfy_progress(total: int) -> Callable[[int], None] | None:
    """``update(value)`` on ComfyUI's progress bar (``comfy.utils.ProgressBar``), which also stops
    the run when the user cancels it in ComfyUI; None outside ComfyUI."""
    utils = comfy_module("comfy.utils")
    if utils is None or not hasattr(utils, "ProgressBar"):
        return None
    bar = utils.ProgressBar(total)
    management = comfy_module("comfy.model_management")
    check_cancel = getattr(management, "throw_exception_if_processing_interrupted", None)

    def update(value: int) -> None:
        if check_cancel is not None:
            check_cancel()
        bar.update_absolute(min(value, total), total)

    return update
