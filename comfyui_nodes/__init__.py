"""ComfyUI custom-node pack for treegrpo (placeholder).

The nodes (load a treegrpo checkpoint or LoRA, branched-denoising tree view, reward scoring) are
planned in issue 6. Until then the pack registers no nodes, so copying it into
``ComfyUI/custom_nodes/`` is harmless.
"""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
