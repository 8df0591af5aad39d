"""The toy world's networks: prompt encoder, flow-matching denoiser and attribute classifier.

Only batch-independent layers are used (LayerNorm / GroupNorm, no BatchNorm, no dropout), so
row i of a batched forward never depends on the other rows. Every model's constructor kwargs
are its config (``model.config``), saved next to its weights.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from treegrpo.toy.prompts import ATTRIBUTES, MAX_TOKENS, VOCAB


class Attention(nn.Module):
    """Multi-head attention of queries [B, N, dim] over a context [B, M, context_dim]."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(context_dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, n, dim = x.shape
        q = self.to_q(x).view(batch, n, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(context).view(batch, context.shape[1], 2, self.heads, -1).unbind(2)
        out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2))
        return self.to_out(out.transpose(1, 2).reshape(batch, n, dim))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP block on [B, L, dim]."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h)
        return x + self.mlp(self.norm2(x))


class ToyTextEncoder(nn.Module):
    """Token ids [P, L] -> ``{'tokens': [P, L, dim], 'pooled': [P, dim]}``.

    Word + position embeddings, ``depth`` transformer blocks, a final LayerNorm; ``pooled`` is
    the mean over all L positions (padding included, so the all-padding null prompt is defined).
    """

    def __init__(
        self, vocab_size: int = len(VOCAB), max_len: int = MAX_TOKENS, dim: int = 64,
        depth: int = 2, heads: int = 4,
    ) -> None:
        super().__init__()
        self.config = dict(vocab_size=vocab_size, max_len=max_len, dim=dim, depth=depth, heads=heads)
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.embed(ids) + self.position[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return {"tokens": x, "pooled": x.mean(dim=1)}


def timestep_embedding(sigma: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of noise levels sigma [B] in [0, 1] (scaled by ``scale``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device) / half)
    angles = scale * sigma.float().view(-1, 1) * freqs.view(1, -1)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, FiLM (scale, shift from the embedding) on the second norm."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class ToyDenoiser(nn.Module):
    """Small text-conditional UNet predicting the flow velocity ``v = eps - x0``.

    Input x [B, 3, S, S] (x_t, image scale [-1, 1]), sigma [B] in [0, 1], text tokens
    [B, L, text_dim] and pooled text [B, text_dim]; output [B, 3, S, S]. The image is folded
    into ``patch_size``-pixel patches (pixel unshuffle) plus two coordinate channels, then runs
    through three levels (channels[0] at S/p, channels[1] at S/2p, channels[2] at S/4p) with
    FiLM from time + pooled text in every ResBlock and one cross-attention to the text tokens
    at the lowest level; skips are added, not concatenated.
    """

    def __init__(
        self, image_channels: int = 3, image_size: int = 32, patch_size: int = 2,
        channels: tuple[int, int, int] | list[int] = (32, 64, 96), text_dim: int = 64,
        emb_dim: int = 128, groups: int = 8, heads: int = 4,
    ) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"channels must list 3 widths, got {channels}")
        if image_size % (4 * patch_size):
            raise ValueError(f"image_size={image_size} must be divisible by 4 * patch_size={patch_size}")
        self.config = dict(
            image_channels=image_channels, image_size=image_size, patch_size=patch_size,
            channels=list(channels), text_dim=text_dim, emb_dim=emb_dim, groups=groups, heads=heads,
        )
        c0, c1, c2 = channels
        self.patch_size = patch_size
        self.time_dim = 64
        self.time_mlp = nn.Sequential(
            nn.Linear(self.time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.text_proj = nn.Linear(text_dim, emb_dim)
        side = image_size // patch_size
        axis = (torch.arange(side) + 0.5) / side * 2 - 1
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"))  # [2, side, side] (y, x)
        self.register_buffer("coords", grid.unsqueeze(0), persistent=False)
        self.conv_in = nn.Conv2d(image_channels * patch_size**2 + 2, c0, 3, padding=1)
        self.block0 = ResBlock(c0, c0, emb_dim, groups)
        self.down1 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.block1 = ResBlock(c1, c1, emb_dim, groups)
        self.down2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.block2 = ResBlock(c2, c2, emb_dim, groups)
        self.attn_norm = nn.GroupNorm(groups, c2)
        self.attn = Attention(c2, text_dim, heads)
        nn.init.zeros_(self.attn.to_out.weight)
        nn.init.zeros_(self.attn.to_out.bias)
        self.block3 = ResBlock(c2, c2, emb_dim, groups)
        self.up2 = nn.Conv2d(c2, c1, 1)
        self.block4 = ResBlock(c1, c1, emb_dim, groups)
        self.up1 = nn.Conv2d(c1, c0, 1)
        self.block5 = ResBlock(c0, c0, emb_dim, groups)
        self.norm_out = nn.GroupNorm(groups, c0)
        self.conv_out = nn.Conv2d(c0, image_channels * patch_size**2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, tokens: torch.Tensor, pooled: torch.Tensor
    ) -> torch.Tensor:
        batch = x.shape[0]
        emb = self.time_mlp(timestep_embedding(sigma.to(x.dtype), self.time_dim).to(x.dtype))
        emb = F.silu(emb + self.text_proj(pooled))
        h = F.pixel_unshuffle(x, self.patch_size)
        h = torch.cat([h, self.coords.to(h.dtype).expand(batch, -1, -1, -1)], dim=1)
        h0 = self.block0(self.conv_in(h), emb)
        h1 = self.block1(self.down1(h0), emb)
        h2 = self.block2(self.down2(h1), emb)
        seq = self.attn_norm(h2).flatten(2).transpose(1, 2)  # [B, N, c2]
        h2 = h2 + self.attn(seq, tokens).transpose(1, 2).reshape(h2.shape)
        h2 = self.block3(h2, emb)
        u1 = self.block4(F.interpolate(self.up2(h2), scale_factor=2.0, mode="nearest") + h1, emb)
        u0 = self.block5(F.interpolate(self.up1(u1), scale_factor=2.0, mode="nearest") + h0, emb)
        out = self.conv_out(F.silu(self.norm_out(u0)))
        return F.pixel_shuffle(out, self.patch_size)


class ToyClassifier(nn.Module):
    """Small CNN: images [B, 3, S, S] in [0, 1] -> logits per attribute.

    Returns ``{attribute: [B, num_values]}`` for every key of ``ATTRIBUTES`` (shape, colour,
    background, size, position). Inputs of another size are resized to ``image_size``.
    """

    def __init__(self, image_size: int = 32, width: int = 32, hidden: int = 256, groups: int = 8) -> None:
        super().__init__()
        if image_size % 8:
            raise ValueError(f"image_size={image_size} must be divisible by 8")
        self.config = dict(image_size=image_size, width=width, hidden=hidden, groups=groups)
        self.image_size = image_size
        w = width

        def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(groups, cout), nn.SiLU()]

        self.features = nn.Sequential(
            *stage(3, w, 1), *stage(w, 2 * w, 2), *stage(2 * w, 2 * w, 2), *stage(2 * w, 4 * w, 2)
        )
        self.trunk = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * w * (image_size // 8) ** 2, hidden), nn.LayerNorm(hidden), nn.SiLU()
        )
        self.heads = nn.ModuleDict(
            {name: nn.Linear(hidden, len(values)) for name, values in ATTRIBUTES.items()}
        )

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> penultimate features [B, hidden] (before the heads)."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return self.trunk(self.features(images * 2 - 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.embed(images)
        return {name: head(features) for name, head in self.heads.items()}


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


# --- sampling and scoring helpers (pure functions of the models) -------------------------------
def shifted_sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """[T+1] float32 noise levels from 1 to 0: ``shift*s / (1 + (shift-1)*s)`` of linspace(1, 0).

    ``shift = 1`` is the plain linear schedule; ``shift > 1`` spends more steps at high noise
    (the SD3 time shift).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"sigma_shift must be > 0, got {shift}")
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).float()


def euler_sample(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    sigmas: torch.Tensor,
) -> torch.Tensor:
    """Plain Euler ODE ``x <- x + v(x, sigma) (sigma_next - sigma)`` from noise [B, ...] at
    sigmas[0] to sigmas[-1]; ``velocity(x [B, ...], sigma [B]) -> v [B, ...]``. Returns x."""
    x = noise
    for i in range(sigmas.numel() - 1):
        sigma = sigmas[i].to(x.device).expand(x.shape[0])
        x = x + velocity(x, sigma) * (sigmas[i + 1] - sigmas[i]).item()
    return x


def attribute_probabilities(logits: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Probability [B, A] of each target value: logits per attribute [B, n_a] (in ``ATTRIBUTES``
    order), targets [B, A] long class indices."""
    columns = [
        logits[name].float().softmax(dim=-1).gather(1, targets[:, a : a + 1].to(logits[name].device))
        for a, name in enumerate(ATTRIBUTES)
    ]
    return torch.cat(columns, dim=1)


def spec_targets(specs: list) -> torch.Tensor:
    """Specs -> class indices [B, A] long in ``ATTRIBUTES`` order."""
    return torch.tensor([[spec.index(name) for name in ATTRIBUTES] for spec in specs], dtype=torch.long)


# --- weights files -------------------------------------------------------------------------
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "text_encoder": ToyTextEncoder, "denoiser": ToyDenoiser, "classifier": ToyClassifier,
}


def save_models(path: str | Path, models: dict[str, nn.Module]) -> None:
    """Write ``{prefix: model}`` to one safetensors file (tensors ``prefix.name``, each model's
    config as JSON in the metadata under its prefix), via a temp file renamed into place."""
    path = Path(path)
    tensors = {
        f"{prefix}.{name}": value.detach().cpu().contiguous()
        for prefix, model in models.items()
        for name, value in model.state_dict().items()
    }
    metadata = {prefix: json.dumps(model.config) for prefix, model in models.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def load_models(
    path: str | Path, prefixes: tuple[str, ...], device: str | torch.device = "cpu"
) -> dict[str, nn.Module]:
    """Rebuild the models saved by :func:`save_models` (eval mode, on ``device``).

    Raises FileNotFoundError naming the file and the tool that makes it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"toy weights {str(path)!r} not found; run `python tools/pretrain_toy.py` to make them"
        )
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(str(path))
    models = {}
    for prefix in prefixes:
        if prefix not in metadata:
            raise KeyError(f"{str(path)!r} holds no {prefix!r} model (has {sorted(metadata)})")
        model = MODEL_CLASSES[prefix](**json.loads(metadata[prefix]))
        state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        model.load_state_dict(state)
        models[prefix] = model.to(device).eval()
    return models
