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


MODEL_PATH_KEY = "policy.model_path"


class ModelNotFoundError(FileNotFoundError):
    """A model, weight file or tokenizer that could not be found locally or on the hub."""


def is_hub_id(name: str, namespaced: bool = True) -> bool:
    """True when ``name`` is a valid Hugging Face repo id (``namespace/name``, dots allowed, as
    in ``black-forest-labs/FLUX.1-dev``), judged by huggingface_hub's own validator;
    ``namespaced=False`` also accepts legacy ids without a namespace (``bert-base-uncased``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return "/" in name or not namespaced


def how_to_provide(model_path: str, key: str = MODEL_PATH_KEY) -> str:
    """The two ways to provide a model: download the hub id, or point ``key`` at a local folder."""
    hub_id = model_path if is_hub_id(model_path) else "<hub id>"
    folder = f"models/{hub_id.rsplit('/', 1)[-1]}"
    return (f"download it with `hf download {hub_id} --local-dir {folder}` (older huggingface_hub: "
            f"`huggingface-cli download ...`; gated repos need `hf auth login` first) and pass "
            f"`--cfg-options {key}={folder}`; for offline tests write a tiny random-weight model "
            "with `python tools/make_tiny_models.py`")


def check_model_path(model_path: str, key: str = MODEL_PATH_KEY) -> str:
    """Classify ``model_path`` as 'local' (an existing path) or 'hub' (a valid repo id); anything
    else raises :class:`ModelNotFoundError` naming ``key`` and how to provide the model."""
    if not isinstance(model_path, (str, Path)) or not str(model_path):
        raise ValueError(f"{key} must be a hub id or a local folder, got {model_path!r}")
    model_path = str(model_path)
    if Path(model_path).expanduser().exists():
        return "local"
    if is_hub_id(model_path):
        return "hub"
    raise ModelNotFoundError(
        f"{key}={model_path!r} is neither an existing local path nor a hub id "
        f"(namespace/name): {how_to_provide(model_path, key)}")


def hub_offline() -> bool:
    """True when huggingface_hub runs offline (HF_HUB_OFFLINE=1, read by it at import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_pipeline_cached(repo_id: str) -> bool:
    """True when the hub cache holds the pipeline's ``model_index.json`` (no network access)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)


def load_failure(model_path: str, source: str, error: Exception, key: str = MODEL_PATH_KEY) -> str:
    """One message for a model that failed to load: which key, which id or folder, why, the fix."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if len(reason) > 300:
        reason = reason[:300] + "..."
    if source == "hub":
        where = ("HF_HUB_OFFLINE is set and it is not in the local cache" if hub_offline()
                 else "the hub could not be reached or refused it and it is not fully cached")
        return (f"{key}={model_path!r} could not be loaded from the Hugging Face hub ({where}; "
                f"{type(error).__name__}: {reason}): {how_to_provide(model_path, key)}")
    return (f"{key}={model_path!r} is a local folder that diffusers could not load (a weight file, "
            f"tokenizer or model_index.json missing or broken? {type(error).__name__}: {reason}): "
            f"re-download it ({how_to_provide(model_path, key)})")


def load_pipeline(pipeline_class, model_path: str, dtype: str, key: str = MODEL_PATH_KEY, **kwargs):
    """``pipeline_class.from_pretrained(model_path, torch_dtype=<dtype>, **kwargs)`` after checking
    ``dtype`` and ``model_path`` (:func:`check_dtype`, :func:`check_model_path`), with its progress
    bars off (the samplers call the denoiser themselves). A model that cannot be found (missing
    files, hub unreachable, HF_HUB_OFFLINE without a cached copy) raises one
    :class:`ModelNotFoundError` naming ``key``, the download command and the option to set."""
    torch_dtype = check_dtype(dtype)
    source = check_model_path(model_path, key)
    try:
        pipe = pipeline_class.from_pretrained(model_path, torch_dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as error:  # diffusers' EnvironmentError, missing components
        raise ModelNotFoundError(load_failure(str(model_path), source, error, key)) from None
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


def export_full_model(model, directory: Path, component: str, state: dict | None = None) -> Path:
    """Write ``directory/<component>/`` as a diffusers model folder: ``config.json`` plus the
    weights, hard-linked from ``directory/model.safetensors`` when that file holds exactly the
    model's state dict (names and dtypes), else saved with ``save_pretrained``. ``state``: the
    trained tensors gathered from a sharded model; the rest of the state dict (buffers, which FSDP
    does not shard) is read from ``model``."""
    target = directory / component
    checkpoint = directory / "model.safetensors"
    if state is not None:
        from safetensors.torch import save_file

        full = {name: state[name] if name in state else value.detach().cpu().contiguous()
                for name, value in model.state_dict().items()}
        model.save_config(target)
        save_file(full, str(target / "diffusion_pytorch_model.safetensors"))
        return target
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

    Subclasses set ``self.pipe``, ``self.vae``, the prompt settings (:meth:`set_prompt_settings`),
    the class attribute ``component`` (the pipeline's name of the
    denoiser: 'transformer' or 'unet') and implement ``_encode(prompts) -> dict of [P, ...] tensors``.
    """

    component: str = "transformer"

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def set_prompt_settings(self, model_path: str, negative_prompt: str, cache_prompt_embeds: bool,
                            embedding_cache_size: int, embedding_dir: str | None) -> None:
        """Store what the shared prompt methods read: the CFG null prompt, the embedding cache's
        switch, size and precomputed folder, and the model path (checked against a precomputed
        embeddings index)."""
        self.negative_prompt = negative_prompt
        self.cache_prompt_embeds = cache_prompt_embeds
        self.embedding_cache_size, self.embedding_dir = embedding_cache_size, embedding_dir
        self.model_path = model_path

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

    def save_export(self, directory: Path, state: dict | None = None) -> None:
        """Write the trained denoiser in diffusers' own format into ``directory`` (``state``: its
        trained tensors gathered to full size when the module is FSDP-sharded):

        - LoRA: ``lora/pytorch_lora_weights.safetensors`` (diffusers layout, ``lora_alpha`` kept in
          the metadata), so a stock pipeline loads it with ``pipe.load_lora_weights(directory/'lora')``;
        - full fine-tuning: ``<component>/`` (``config.json`` + safetensors), loadable with
          ``<ModelClass>.from_pretrained(directory/'<component>')`` or as the pipeline's component.
          When the checkpoint's ``model.safetensors`` already holds exactly the model's state dict,
          the component's weight file is a hard link to it (no second copy on disk).
        """
        model = self.denoiser
        if not getattr(model, "_hf_peft_config_loaded", False):
            export_full_model(model, Path(directory), self.component, state)
            return
        from peft.utils import get_peft_model_state_dict

        layers = {k: v.detach().cpu().contiguous()
                  for k, v in get_peft_model_state_dict(model, state_dict=state).items()}
        metadata = model.peft_config["default"].to_dict()  # lora_alpha sets the scale when loading
        type(self.pipe).save_lora_weights(
            Path(directory) / "lora", **{f"{self.component}_lora_layers": layers,
                                         f"{self.component}_lora_adapter_metadata": metadata})
