"""The ComfyUI node classes: thin wrappers that declare inputs/outputs and call :mod:`logic`."""
from __future__ import annotations

from . import logic
from .lora import apply_lora_to_model
from .paths import list_files

CATEGORY = "treegrpo"
PIPELINE = "TREEGRPO_PIPELINE"  # our custom link type: a logic.TreegrpoPipeline
TOY_CONFIG = "configs/treegrpo_toy_shapes.py"
TOY_PROMPT = "a small red circle on a blue background at the top"
JSON_HINT = ("JSON object, e.g. {\"quality\": 90}; paths and models (checkpoint, model, tokenizer, "
             "clip_model, *_path) are looked up in the treegrpo model folders: nothing is downloaded")


class TreegrpoLoadCheckpoint:
    """A treegrpo config (+ trained run, checkpoint or LoRA file) -> a TREEGRPO_PIPELINE."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "config": ("STRING", {"default": TOY_CONFIG, "tooltip": "config file in the treegrpo model "
                                      "folder; empty: the config.py of the run given as checkpoint"}),
                "checkpoint": ("STRING", {"default": "", "tooltip": "run folder, checkpoints/iter_<n> or "
                                          "LoRA .safetensors file; empty: base weights"}),
                "device": (list(logic.DEVICES), {"default": "auto"}),
            },
            "optional": {
                "model_path": ("STRING", {"default": "", "tooltip": "diffusers model folder in the treegrpo "
                                          "model folder that replaces the config's policy.model_path"}),
                "options": ("STRING", {"default": "{}", "multiline": True, "tooltip": "config overrides as "
                                       "JSON with dotted keys, e.g. {\"policy.resolution\": 512}"}),
            },
        }

    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Load a treegrpo policy (toy world or diffusers model) with its trained weights."

    @classmethod
    def IS_CHANGED(cls, config, checkpoint, device, model_path="", options="{}"):
        return logic.checkpoint_fingerprint(config, checkpoint)  # reload when a new checkpoint lands

    def load(self, config, checkpoint, device, model_path="", options="{}"):
        return (logic.load_pipeline(config, checkpoint, device, model_path, options),)


class TreegrpoApplyLoRA:
    """ComfyUI MODEL + a LoRA exported by tools/export_lora.py -> the patched MODEL."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "lora_name": (list_files("loras"), {"tooltip": "LoRA .safetensors file in models/loras"}),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = "Patch a MODEL with a treegrpo LoRA through ComfyUI's own LoRA loader."

    def apply(self, model, lora_name, strength_model):
        return (apply_lora_to_model(model, lora_name, strength_model),)


def _reward_choices(with_config: bool) -> list[str]:
    return (["config"] if with_config else []) + logic.reward_names()


class TreegrpoBranchedDenoising:
    """Sample one prompt's TreeGRPO tree: tree picture, leaf images and a reward/advantage table."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (PIPELINE,),
                "prompt": ("STRING", {"default": TOY_PROMPT, "multiline": True}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "k": ("INT", {"default": 2, "min": 1, "max": 8, "tooltip": "children per node"}),
                "depth": ("INT", {"default": 3, "min": 1, "max": 8, "tooltip": "SDE steps in the window"}),
                "window_start": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": "first SDE step"}),
                "steps": ("INT", {"default": 10, "min": 1, "max": 1000}),
                "eta": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 5.0, "step": 0.05, "tooltip": "SDE noise level"}),
            },
            "optional": {
                "reward": (_reward_choices(True), {"default": "config", "tooltip": "'config': the pipeline config's reward"}),
                "reward_kwargs": ("STRING", {"default": "{}", "multiline": False, "tooltip": JSON_HINT}),
                "thumb": ("INT", {"default": 64, "min": 16, "max": 512, "step": 8, "tooltip": "preview size"}),
            },
        }

    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("tree", "leaves", "table")
    FUNCTION = "run"
    CATEGORY = CATEGORY
    DESCRIPTION = "Branched denoising of one prompt, as TreeGRPO samples it during training."

    def run(self, pipeline, prompt, seed, k, depth, window_start, steps, eta, reward="config",
            reward_kwargs="{}", thumb=64):
        return logic.branched_denoising(pipeline, prompt, seed, k, depth, window_start, steps, eta,
                                        reward, reward_kwargs, thumb)


class TreegrpoScoreImages:
    """IMAGE + prompt -> scores of a registered treegrpo reward."""

    @classmethod
    def INPUT_TYPES(cls):
        names = _reward_choices(False)
        return {
            "required": {
                "images": ("IMAGE",),
                "prompt": ("STRING", {"default": TOY_PROMPT, "multiline": True}),
                "reward": (names, {"default": "ToyAlignmentReward"} if "ToyAlignmentReward" in names else {}),
            },
            "optional": {
                "reward_kwargs": ("STRING", {"default": "{}", "multiline": False, "tooltip": JSON_HINT}),
            },
        }

    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("scores", "table")
    OUTPUT_IS_LIST = (True, False)
    FUNCTION = "score"
    CATEGORY = CATEGORY
    DESCRIPTION = "Score images with a registered treegrpo reward (one score per image)."

    def score(self, images, prompt, reward, reward_kwargs="{}"):
        return logic.score_images(images, prompt, reward, reward_kwargs)


NODE_CLASS_MAPPINGS = {
    "TreegrpoLoadCheckpoint": TreegrpoLoadCheckpoint,
    "TreegrpoApplyLoRA": TreegrpoApplyLoRA,
    "TreegrpoBranchedDenoising": TreegrpoBranchedDenoising,
    "TreegrpoScoreImages": TreegrpoScoreImages,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TreegrpoLoadCheckpoint": "Load treegrpo checkpoint",
    "TreegrpoApplyLoRA": "Apply treegrpo LoRA to MODEL",
    "TreegrpoBranchedDenoising": "Branched denoising (treegrpo)",
    "TreegrpoScoreImages": "Score images (treegrpo)",
}
