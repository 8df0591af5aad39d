"""What the diffusers-based policies share: dtypes, model-path checks, making the denoiser trainable."""
from __future__ import annotations

import abc
import copy
import os
from pathlib import Path

import torch

from .base import Policy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}  # safetensors names
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def check_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def check_model_path(model_path: str) -> None:
    """A local-looking path that does not exist gets an error saying how to provide weights."""
    looks_local = model_path.startswith((".", "/", "~")) or Path(model_path).suffix or "\\" in model_path
    if looks_local and not Path(model_path).expanduser().exists():
        raise FileNotFoundError(
            f"model_path {model_path!r} does not exist: give a local diffusers folder (e.g. a "
            "downloaded stabilityai/stable-diffusion-3.5-medium) or a hub id; for offline tests "
            "write a tiny random-weight one with `python tools/make_tiny_models.py`"
        )


def load_pipeline(pipeline_class, model_path: str, dtype: str, **kwargs):
    """``pipeline_class.from_pretrained(model_path, torch_dtype=<dtype>, **kwargs)`` after checking
    ``dtype`` and ``model_path`` (:func:`check_dtype`, :func:`check_model_path`), with its progress
    bars off (the samplers call the denoiser themselves)."""
    torch_dtype = check_dtype(dtype)
    check_model_path(model_path)
    pipe = pipeline_class.from_pretrained(model_path, torch_dtype=torch_dtype, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def freeze(*modules) -> None:
    """No gradients and eval mode for every given module (None entries, absent parts, are skipped)."""
    for module in modules:
        if module is not None:
            module.requires_grad_(False).eval()


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Flow-model latents [B, C, h, w] -> images [B, 3, h * vae_scale_factor, ...] in [0, 1]: undo
    the VAE's scaling and shift factors, decode, map [-1, 1] to [0, 1]."""
    config = vae.config
    latents = latents.to(vae.dtype) / config.scaling_factor + config.shift_factor
    images = vae.decode(latents, return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def make_trainable(policy, lora: dict | None, keep_reference: bool, gradient_checkpointing: bool,
                   default_rank: int, compile_denoiser: bool | dict = False) -> None:
    """Set up ``policy.denoiser`` for training: LoRA adapters through peft with the base frozen
    (``lora = dict(r, alpha, target_modules)``; the reference policy is the adapters switched off),
    or all weights, with a frozen copy in ``policy.reference_denoiser`` when ``keep_reference``.
    ``compile_denoiser`` (True or ``torch.compile`` options such as ``dict(mode='max-autotune')``)
    compiles the denoiser's forward in place: parameter names and checkpoints do not change.

    Trained tensors are float32 whatever the pipeline's ``dtype`` (bf16 weights would round most
    AdamW steps at lr 1e-5 away): the LoRA adapters, or for a full fine-tune the whole denoiser;
    the frozen base and a full fine-tune's reference copy stay in the loaded dtype, and the
    forwards run under the runner's autocast."""
    denoiser = policy.denoiser
    if lora is not None:
        from peft import LoraConfig

        rank = lora.get("r", default_rank)
        denoiser.requires_grad_(False)
        denoiser.add_adapter(LoraConfig(
            r=rank, lora_alpha=lora.get("alpha", rank),
            target_modules=list(lora.get("target_modules", DEFAULT_LORA_TARGETS)),
            init_lora_weights="gaussian"))
        for param in denoiser.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    else:
        if keep_reference:
            policy.reference_denoiser = copy.deepcopy(denoiser).requires_grad_(False).eval()
        denoiser.float()
    if gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    if compile_denoiser:
        if not isinstance(compile_denoiser, (bool, dict)):
            raise ValueError(f"compile_denoiser must be a bool or a dict of torch.compile options, "
                             f"got {compile_denoiser!r}")
        denoiser.compile(**({} if compile_denoiser is True else dict(compile_denoiser)))


def export_full_model(model, directory: Path, component: str) -> Path:
    """Write ``directory/<component>/`` as a diffusers model folder: ``config.json`` plus the
    weights, hard-linked from ``directory/model.safetensors`` when that file holds exactly the
    model's state dict (names and dtypes), else saved with ``save_pretrained``."""
    target = directory / component
    checkpoint = directory / "model.safetensors"
    state = model.state_dict()
    if checkpoint.is_file():
        from safetensors import safe_open

        with safe_open(str(checkpoint), framework="pt") as file:
            same = set(file.keys()) == set(state) and all(
                file.get_slice(name).get_dtype() == DTYPE_NAMES.get(state[name].dtype) for name in state)
        if same:
            model.save_config(target)
            try:
                os.link(checkpoint, target / "diffusion_pytorch_model.safetensors")
                return target
            except OSError:  # a filesystem without hard links: write a copy below
                pass
    model.save_pretrained(target, safe_serialization=True)
    return target


class DiffusersPolicy(Policy):
    """Shared behaviour of the diffusers policies: device, cached prompt encoding, CFG null prompt.

    Subclasses set ``self.pipe``, ``self.vae``, ``self.negative_prompt``,
    ``self.cache_prompt_embeds``, the class attribute ``component`` (the pipeline's name of the
    denoiser: 'transformer' or 'unet') and implement ``_encode(prompts) -> dict of [P, ...] tensors``.
    """

    component: str = "transformer"

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @abc.abstractmethod
    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Run the text encoders on ``prompts`` (no cache)."""

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        if self.cache_prompt_embeds:
            return self.cached_encode(prompts, self._encode)
        return self._encode(prompts)

    def null_condition(self, batch_size: int) -> dict[str, torch.Tensor]:
        null = self.encode_prompts([self.negative_prompt])
        return {key: value.expand(batch_size, *value.shape[1:]) for key, value in null.items()}

    def save_export(self, directory: Path) -> None:
        """Write the trained denoiser in diffusers' own format into ``directory``:

        - LoRA: ``lora/pytorch_lora_weights.safetensors`` (diffusers layout, ``lora_alpha`` kept in
          the metadata), so a stock pipeline loads it with ``pipe.load_lora_weights(directory/'lora')``;
        - full fine-tuning: ``<component>/`` (``config.json`` + safetensors), loadable with
          ``<ModelClass>.from_pretrained(directory/'<component>')`` or as the pipeline's component.
          When the checkpoint's ``model.safetensors`` already holds exactly the model's state dict,
          the component's weight file is a hard link to it (no second copy on disk).
        """
        model = self.unwrapped_denoiser()
        if not getattr(model, "_hf_peft_config_loaded", False):
            export_full_model(model, Path(directory), self.component)
            return
        from peft.utils import get_peft_model_state_dict

        layers = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        metadata = model.peft_config["default"].to_dict()  # lora_alpha sets the scale when loading
        type(self.pipe).save_lora_weights(
            Path(directory) / "lora", **{f"{self.component}_lora_layers": layers,
                                         f"{self.component}_lora_adapter_metadata": metadata})
