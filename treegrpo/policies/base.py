"""The interface every generator wrapper implements (toy flow model, SD3, SD1.x, FLUX).

A policy owns the denoiser network (the trainable part), the prompt encoder, the decoder and the
noise schedule. Samplers and the update step talk to the model only through these methods.
"""
from __future__ import annotations

import abc
import contextlib
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..checkpoint import check_state_dict
from ..embedding_cache import DEFAULT_CACHE_SIZE, EmbeddingCache, EmbeddingStore
from ..registry import KERNELS, resolve_type


class Policy(nn.Module, abc.ABC):
    """Base class: a text-conditional denoiser plus everything needed to use it.

    Subclasses set ``self.denoiser`` (the bare ``nn.Module`` that is trained) and implement the
    abstract methods. The policy never holds a wrapper: the runner keeps what
    ``accelerator.prepare`` returns (DDP / FSDP) and passes it as ``model`` to :meth:`predict` for
    the training forwards; the reference policy comes from :meth:`reference` the same way. ``nfe`` counts model evaluations per sample
    (a forward on a batch of B rows adds B; with classifier-free guidance 2B).
    """

    denoiser: nn.Module
    latent_shape: tuple[int, int, int]
    kernel_type: str | None = None  # registered kernel that reads this model's outputs (None: any)
    reads_records = False  # True: encode() needs the prompt records (e.g. an edit model's input image)

    def __init__(self) -> None:
        super().__init__()
        self.nfe = 0

    def check_kernel(self, kernel) -> None:
        """Raise ValueError when ``kernel`` cannot interpret this policy's model outputs (e.g. a
        DDIM kernel on a flow model, or an epsilon kernel on a v-prediction UNet). Subclasses of the
        needed kernel (e.g. a plugin's variant of FlowMatchingKernel) are accepted."""
        if self.kernel_type is not None and not isinstance(kernel, resolve_type(KERNELS, self.kernel_type)):
            raise ValueError(
                f"{type(self).__name__} needs kernel type {self.kernel_type!r}, the config has "
                f"{type(kernel).__name__!r}: set kernel = dict(type='{self.kernel_type}', ...)"
            )

    # --- conditioning -------------------------------------------------------------------
    @abc.abstractmethod
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Prompts -> conditioning dict of tensors, each [P, ...] (no grad)."""

    def encode(self, prompts: list[str], records: list[dict] | None = None) -> dict[str, torch.Tensor]:
        """Conditioning of a prompt batch, each tensor [P, ...]: the prompts' records (the prompt
        file's other fields, one dict per prompt) reach the policy only here. Text-only policies
        ignore ``records``; policies with ``reads_records = True`` (edit models) override this."""
        return self.encode_prompts(prompts)

    @abc.abstractmethod
    def null_condition(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Unconditional (empty prompt) conditioning for CFG, each tensor [B, ...]."""

    # --- schedule -----------------------------------------------------------------------
    @abc.abstractmethod
    def noise_levels(self, num_steps: int) -> torch.Tensor:
        """[T+1] float32 noise levels of a T-step schedule (sigmas 1 -> 0 for flow models)."""

    # --- model --------------------------------------------------------------------------
    @abc.abstractmethod
    def model_output(
        self, latents: torch.Tensor, level: torch.Tensor, cond: dict[str, torch.Tensor],
        model: nn.Module | None = None,
    ) -> torch.Tensor:
        """One raw forward of ``model`` (default: ``self.denoiser``; the runner passes its
        DDP / FSDP wrapper or the reference). latents [B, C, H, W], level [B] -> [B, C, H, W].
        Attributes such as ``dtype`` or ``config`` are read from ``self.denoiser``, never through
        ``model``, which may be a wrapper."""

    def predict(
        self,
        latents: torch.Tensor,
        level: torch.Tensor,
        cond: dict[str, torch.Tensor],
        guidance_scale: float = 1.0,
        model: nn.Module | None = None,
    ) -> torch.Tensor:
        """Guided output [B, C, H, W] of ``model`` (default: the bare ``self.denoiser``); with
        ``guidance_scale > 1`` the unconditional and conditional rows go through the model as one
        batch of 2B. Counts NFE."""
        batch = latents.shape[0]
        if guidance_scale <= 1.0:
            self.nfe += batch
            return self.model_output(latents, level, cond, model)
        null = self.null_condition(batch)
        both = {key: torch.cat([null[key], cond[key]]) for key in cond}
        self.nfe += 2 * batch
        out = self.model_output(torch.cat([latents, latents]), torch.cat([level, level]), both, model)
        uncond, conditional = out.chunk(2)
        return uncond + guidance_scale * (conditional - uncond)

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, h, w] -> images [B, 3, H, W] float in [0, 1]."""

    # --- training -----------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trained tensors (full weights or LoRA), on CPU, for checkpoints."""
        return {
            name: p.detach().to("cpu", copy=True).contiguous()
            for name, p in self.denoiser.named_parameters()
            if p.requires_grad
        }

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Copy checkpoint tensors into the trainable parameters. Names must match exactly and every
        shape must be equal (``copy_`` would broadcast a [1, 64] tensor into [192, 64]); otherwise
        a CheckpointError names the tensor and ``source`` (the file it came from)."""
        params = {n: p for n, p in self.denoiser.named_parameters() if p.requires_grad}
        check_state_dict(state, params, source, type(self).__name__)
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def cached_encode(self, prompts: list[str], encode) -> dict[str, torch.Tensor]:
        """``encode(prompts)`` through a bounded per-prompt cache (text encoders are frozen, and each
        prompt's embedding does not depend on the batch): only prompts neither cached nor in the
        precomputed shards of ``self.embedding_dir`` are encoded. The cache keeps at most
        ``self.embedding_cache_size`` prompts (least recently used dropped first) on the CPU; the
        result {key: [P, ...]} is on the policy's device. See :mod:`treegrpo.embedding_cache`."""
        cache = self.__dict__.get("_embedding_cache")
        if cache is None:
            directory = getattr(self, "embedding_dir", None)
            store = None if directory is None else EmbeddingStore(
                directory, type(self).__name__, getattr(self, "model_path", None))
            cache = EmbeddingCache(getattr(self, "embedding_cache_size", DEFAULT_CACHE_SIZE), store)
            self.__dict__["_embedding_cache"] = cache
        device = getattr(self, "device", None) or next(self.denoiser.parameters()).device
        return cache.encode(prompts, encode, device)

    def save_export(self, directory: Path, state: dict | None = None) -> None:
        """Write weights in the model family's own format into ``directory`` (e.g. a diffusers
        LoRA that ``pipe.load_lora_weights`` reads). Called inside each checkpoint; default: none.
        ``state``: the trained tensors gathered to full size when the denoiser is FSDP-sharded."""

    @contextlib.contextmanager
    def reference(self) -> Iterator[nn.Module]:
        """Yields the frozen reference policy's module (for the KL term), to pass as ``model``:
        ``with policy.reference() as ref: policy.predict(..., model=ref)``.

        Full fine-tuning: the frozen copy in ``self.reference_denoiser`` (kept by the subclass
        when asked). LoRA: the bare denoiser with its adapters disabled inside the context (no
        copy). Run it under the training forward's autocast so that both agree before an update.
        """
        frozen = getattr(self, "reference_denoiser", None)
        if frozen is not None:
            # A copy kept in lower precision than the float32 trained weights runs under an
            # autocast to its own dtype (inputs arrive in the trained denoiser's dtype).
            frozen_dtype = next(frozen.parameters()).dtype
            trained_dtype = next(self.denoiser.parameters()).dtype
            low = frozen_dtype in (torch.bfloat16, torch.float16) and frozen_dtype != trained_dtype
            device = next(frozen.parameters()).device
            with torch.autocast(device.type, dtype=frozen_dtype) if low else contextlib.nullcontext():
                yield frozen
            return
        model = self.denoiser
        if not hasattr(model, "disable_adapters") or not getattr(model, "_hf_peft_config_loaded", False):
            raise RuntimeError(
                f"{type(self).__name__} has no reference policy for the KL term: train LoRA "
                "adapters, or build the policy with keep_reference=True"
            )
        model.disable_adapters()
        try:
            yield model
        finally:
            model.enable_adapters()
