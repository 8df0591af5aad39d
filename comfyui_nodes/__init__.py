"""treegrpo's ComfyUI custom-node pack.

Install: copy or link this folder into ``ComfyUI/custom_nodes/`` under any name but ``treegrpo``
and install treegrpo into ComfyUI's Python (``<ComfyUI python> -m pip install -e
/path/to/treegrpo``). Nodes (category "treegrpo"): Load treegrpo checkpoint, Apply treegrpo LoRA
to MODEL, Branched denoising (treegrpo), Score images (treegrpo); example workflows in
``workflows/``.

The pack imports without treegrpo or ComfyUI (nodes then say what is missing when run). Inside
ComfyUI it registers the model folder "treegrpo": ``models/treegrpo``, ``$TREEGRPO_COMFY_ROOT`` and
the checkout's ``configs/`` and ``work_dirs/`` (see :mod:`.paths`); LoRAs come from ``models/loras``.
"""
from pathlib import Path

# Recent ComfyUI names the module after the folder's full path: check the folder's own name under
# custom_nodes/ (a link keeps its name here).
if Path(__file__).parent.name == "treegrpo":
    raise ImportError(
        "this node pack's folder is named 'treegrpo', which hides the treegrpo library: name its "
        "folder in ComfyUI/custom_nodes/ something else, e.g. treegrpo_nodes"
    )

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
from .paths import register_comfy_folders  # noqa: E402

register_comfy_folders()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
