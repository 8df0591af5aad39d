"""treegrpo's ComfyUI custom-node pack.

Install: copy or link this folder into ``ComfyUI/custom_nodes/`` and install treegrpo into
ComfyUI's Python (``<ComfyUI python> -m pip install -e /path/to/treegrpo``). Nodes (category
"treegrpo"): Load treegrpo checkpoint, Apply treegrpo LoRA to MODEL, Branched denoising (treegrpo),
Score images (treegrpo); example workflows in ``workflows/``.

The pack imports without treegrpo or ComfyUI (nodes then say what is missing when run). Inside
ComfyUI it registers the model folder ``models/treegrpo`` (plus the treegrpo source tree, or
``$TREEGRPO_COMFY_ROOT``) for configs, runs and checkpoints; LoRAs come from ``models/loras``.
"""
if __name__.split(".")[-1] == "treegrpo":
    raise ImportError(
        "this node pack is imported as 'treegrpo', which hides the treegrpo library: name its "
        "folder in ComfyUI/custom_nodes/ something else, e.g. treegrpo_nodes"
    )

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
from .paths import register_comfy_folders  # noqa: E402

register_comfy_folders()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
