"""The server side of the HTTPReward protocol (treegrpo/rewards/http.py): one request body parsed
and checked against the server's :class:`Limits` before any image is decoded. Used by
tools/reward_server.py."""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from .base import MAX_METADATA_BYTES
from .http import ImageLimitError, decode_png


@dataclass(frozen=True)
class Limits:
    """What one request may cost the server; each field has the command-line flag in its doc."""

    max_body_bytes: int = 64 << 20   # --max-body-mb 64
    max_images: int = 64             # --max-images
    max_pixels: int = 1 << 24        # --max-pixels: decoded pixels per request, all images together
    request_timeout: float = 60.0    # --request-timeout: seconds to send the whole request
    workers: int = 4                 # --workers: requests handled at once
    queue: int = 16                  # --queue: accepted connections waiting for a worker

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Limits.{name} must be a number > 0, got {value!r}")


class BadRequest(ValueError):
    """The request does not follow the protocol (answered with 400)."""


class OverLimit(ValueError):
    """The request is larger than a server limit (answered with 413, naming the flag)."""


def parse_metadata(metadata, count: int) -> list[dict] | None:
    """The request's optional ``metadata``: None, or a list of ``count`` JSON objects of at most
    MAX_METADATA_BYTES each (OverLimit above that, BadRequest if malformed)."""
    if metadata is None:
        return None
    if not isinstance(metadata, list) or len(metadata) != count or not all(isinstance(m, dict) for m in metadata):
        raise BadRequest(f"'metadata' must be a list of {count} JSON objects (one per image)")
    for index, meta in enumerate(metadata):
        size = len(json.dumps(meta, separators=(",", ":")).encode("utf-8"))
        if size > MAX_METADATA_BYTES:
            raise OverLimit(f"metadata[{index}] is {size} bytes as JSON, over the limit of "
                            f"{MAX_METADATA_BYTES} bytes per image")
    return metadata


def parse_request(body: bytes, limits: Limits = Limits()) -> tuple[torch.Tensor, list[str], list[dict] | None]:
    """Request body -> (images [L, 3, H, W] float32 in [0, 1], L prompts, L metadata dicts or
    None when the request has none). BadRequest if malformed, OverLimit if it has more images or
    pixels than ``limits`` allow (checked before any image is decoded) or too large metadata."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"the body is not UTF-8 JSON ({err})") from None
    if not isinstance(data, dict) or "prompts" not in data or "images" not in data:
        raise BadRequest('the body must be a JSON object {"prompts": [...], "images": [...]}')
    prompts, images = data["prompts"], data["images"]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("'prompts' must be a list of strings")
    if not isinstance(images, list) or len(images) != len(prompts) or not images:
        raise BadRequest(
            f"'images' must be a non-empty list with one image per prompt "
            f"(got {len(images) if isinstance(images, list) else type(images).__name__} images "
            f"for {len(prompts)} prompts)"
        )
    if len(images) > limits.max_images:
        raise OverLimit(f"the request has {len(images)} images, over the server's limit of "
                        f"{limits.max_images} per request (--max-images)")
    metadata = parse_metadata(data.get("metadata"), len(prompts))
    try:
        return decode_png(images, max_pixels=limits.max_pixels), prompts, metadata
    except ImageLimitError as err:
        raise OverLimit(f"{err} (--max-pixels)") from None
    except ValueError as err:
        raise BadRequest(str(err)) from None
