"""A tiny random-weight ``FluxKontextPipeline`` for offline tests (called by make_tiny_models.py).

FLUX.1 Kontext has FLUX.1-dev's components (CLIP + T5 text encoders, a guidance-distilled
``FluxTransformer2DModel``, the 16-channel VAE, the shifted flow-matching scheduler); only the
pipeline differs. So the tiny Kontext model is the tiny FLUX of :mod:`tools.make_tiny_models`
wrapped in ``FluxKontextPipeline`` (same seeds, same weights).
"""
from __future__ import annotations


def tiny_flux_kontext_pipeline(seed: int = 0):
    """FluxKontextPipeline built from the tiny FLUX.1-dev components (no image encoder)."""
    from diffusers import FluxKontextPipeline

    from tools.make_tiny_models import tiny_flux_pipeline

    flux = tiny_flux_pipeline(seed)
    parts = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
    return FluxKontextPipeline(**{name: getattr(flux, name) for name in parts})
