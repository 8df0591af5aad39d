"""Small helpers with no better home: derived seeds, timers, image grids."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

PURPOSES = {"prompts": 0, "schedule": 1, "sample": 2, "shuffle": 3, "eval": 4}


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (e.g. base seed, iteration, rank, purpose)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)


def make_generator(device: torch.device | str, *keys: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``derive_seed(*keys)``."""
    return torch.Generator(device=device).manual_seed(derive_seed(*keys))


def parse_json_object(text: str | dict | None, what: str) -> dict:
    """A JSON object given as text (None or blank: {}); ``what`` names the input in errors."""
    if isinstance(text, dict):
        return dict(text)
    if text is None or not str(text).strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} must be a JSON object such as {{\"quality\": 90}}: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


@contextmanager
def timer(times: dict[str, float], key: str, device: torch.device | str | None = None) -> Iterator[None]:
    """Add the wall time of the block to ``times[key]`` (seconds). On a CUDA ``device`` the
    queued GPU work is waited for at both ends, so each phase is charged its own kernels."""
    sync = device is not None and torch.device(device).type == "cuda"
    if sync:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        if sync:
            torch.cuda.synchronize(device)
        times[key] = times.get(key, 0.0) + time.perf_counter() - start


def save_grid(images: torch.Tensor, path, nrow: int = 8, fps: int = 8) -> Path:
    """Write a preview grid: images [B, 3, H, W] -> ``path`` as PNG; clips [B, F, 3, H, W] (video
    policies) -> an animated GIF next to it (``path`` with suffix ``.gif``; one grid per frame,
    ``fps`` frames a second, looping; Pillow's GIF writer, 256 colours). Returns the path written."""
    path = Path(path)
    if images.dim() != 5:
        image_grid(images, nrow=nrow).save(path)
        return path
    if not isinstance(fps, int) or isinstance(fps, bool) or fps < 1:
        raise ValueError(f"fps must be an int >= 1, got {fps!r}")
    frames = [image_grid(images[:, t], nrow=nrow) for t in range(images.shape[1])]
    path = path.with_suffix(".gif")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=max(1, round(1000 / fps)), loop=0)
    return path


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> Image.Image:
    """Images [B, 3, H, W] in [0, 1] -> one PIL RGB grid, ``nrow`` images per row."""
    b, _, h, w = images.shape
    ncol = min(nrow, b)
    nrows = (b + ncol - 1) // ncol
    canvas = torch.ones(3, nrows * (h + padding) + padding, ncol * (w + padding) + padding)
    for i in range(b):
        r, c = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        canvas[:, top : top + h, left : left + w] = images[i].detach().float().cpu().clamp(0, 1)
    array = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)
