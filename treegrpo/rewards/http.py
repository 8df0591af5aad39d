"""A reward computed by a server over HTTP (a big reward model on another machine or GPU).

Protocol (JSON over HTTP; ``tools/reward_server.py`` serves any registered reward with it)
------------------------------------------------------------------------------------------
Request: ``POST <url>`` with header ``Content-Type: application/json`` (plus any user headers,
e.g. ``Authorization``) and the UTF-8 JSON body::

    {"prompts": ["a cat", "a dog"],
     "images": ["<base64 PNG>", "<base64 PNG>"]}

``prompts`` and ``images`` are lists of equal length L >= 1, in the same order. Each image is an
8-bit RGB PNG file (the image ``[3, H, W]`` in [0, 1] clamped, scaled by 255 and rounded),
encoded with standard base64 (RFC 4648, with padding, no line breaks).

Response: status 200, a JSON object ``{"scores": [s_0, ..., s_{L-1}]}`` with one finite number
per image, in the request's order. Any other keys are ignored.

Errors: the server answers 4xx when the request is malformed (not retried: sending it again
cannot help; except 408 and 429, timeout and rate limit, which are retried) and 5xx when scoring failed on its side (retried), ideally with a JSON body
``{"error": "<message>"}`` whose message the client shows.

The client retries connection errors, timeouts, 408 / 429 and 5xx answers ``retries`` times, sleeping
``backoff * 2**attempt`` seconds between tries, then raises :class:`RewardError`.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import math
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import torch
from PIL import Image

from treegrpo.registry import REWARDS
from treegrpo.rewards.base import Reward, RewardError, check_images
from treegrpo.rewards.image_stats import to_uint8

# Client errors worth another try: request timeout (408) and rate limiting (429).
RETRIED_CLIENT_CODES = (408, 429)

MAX_ERROR_CHARS = 500


def encode_png(images: torch.Tensor) -> list[str]:
    """[L, 3, H, W] float in [0, 1] -> L base64 strings of 8-bit RGB PNG files."""
    encoded = []
    for pixels in to_uint8(images).numpy():
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


def decode_png(encoded: list[str]) -> torch.Tensor:
    """L base64 PNG strings (all of one size) -> [L, 3, H, W] float32 in [0, 1] (pixel / 255).

    Raises ValueError naming the index of an image that is not valid base64 PNG, or a size
    that differs from the first image's.
    """
    arrays = []
    for index, text in enumerate(encoded):
        if not isinstance(text, str):
            raise ValueError(f"images[{index}] must be a base64 string, got {type(text).__name__}")
        try:
            with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as image:
                arrays.append(np.asarray(image.convert("RGB")))
        except Exception as err:  # binascii.Error, PIL.UnidentifiedImageError, ...
            raise ValueError(f"images[{index}] is not a base64-encoded PNG ({err})") from None
        if arrays[-1].shape != arrays[0].shape:
            raise ValueError(
                f"images[{index}] has size {arrays[-1].shape[:2]}, images[0] has "
                f"{arrays[0].shape[:2]}: all images of a request must have one size"
            )
    if not arrays:
        return torch.zeros(0, 3, 0, 0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def parse_scores(body: bytes, count: int, url: str) -> list[float]:
    """A 200 response body -> ``count`` floats; RewardError for anything else."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RewardError(f"reward server {url} answered a body that is not JSON ({err})") from None
    scores = data.get("scores") if isinstance(data, dict) else None
    if not isinstance(scores, list):
        raise RewardError(
            f"reward server {url} answered {_shorten(body)}, expected a JSON object "
            f"{{\"scores\": [...]}} with one number per image"
        )
    if len(scores) != count:
        raise RewardError(
            f"reward server {url} returned {len(scores)} scores for {count} images "
            f"(one score per image expected)"
        )
    for index, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise RewardError(
                f"reward server {url} returned a non-number at scores[{index}]: {score!r}"
            )
    return [float(s) for s in scores]


def _shorten(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace")
    return repr(text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "...")


def _error_message(err: urllib.error.HTTPError) -> str:
    """'HTTP <code> <reason>' plus the server's ``{"error": ...}`` message or body excerpt."""
    try:
        body = err.read()
    except Exception:  # the connection may already be gone
        body = b""
    detail = ""
    try:
        data = json.loads(body.decode("utf-8"))
        if isinstance(data, dict) and "error" in data:
            detail = str(data["error"])[:MAX_ERROR_CHARS]
    except (UnicodeDecodeError, json.JSONDecodeError):
        detail = _shorten(body) if body else ""
    return f"HTTP {err.code} {err.reason}" + (f": {detail}" if detail else "")


@REWARDS.register_module()
class HTTPReward(Reward):
    """``reward(images [L, 3, H, W] in [0, 1], prompts [L]) -> [L] float32`` scored by a server
    speaking the protocol of this module's docstring.

    Args:
        url: ``http://`` or ``https://`` address the requests are POSTed to.
        timeout: seconds to wait for each answer (> 0).
        retries: extra tries after a connection error, timeout, 408 / 429 or 5xx answer (>= 0).
        backoff: seconds before the first retry, doubled for each further one (>= 0).
        batch_size: images per request (None: all images of a call in one request).
        headers: extra HTTP headers, e.g. ``{'Authorization': 'Bearer ...'}``.
    """

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
                 batch_size: int | None = None, headers: dict[str, str] | None = None) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with 'http://' or 'https://', got {url!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        if (isinstance(backoff, bool) or not isinstance(backoff, (int, float))
                or not math.isfinite(backoff) or backoff < 0):
            raise ValueError(f"backoff must be a number of seconds >= 0, got {backoff!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
        headers = dict(headers or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise ValueError(f"headers must map strings to strings, got {headers!r}")
        self.url, self.timeout, self.retries = url, float(timeout), retries
        self.backoff, self.batch_size, self.headers = float(backoff), batch_size, headers

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts, self.name)
        size = self.batch_size or max(len(prompts), 1)
        scores: list[float] = []
        for start in range(0, len(prompts), size):
            chunk = list(prompts[start:start + size])
            scores += self.post(encode_png(images[start:start + size]), chunk)
        return torch.tensor(scores, dtype=torch.float32, device=images.device)

    def post(self, encoded_images: list[str], prompts: list[str]) -> list[float]:
        """POST one request (with retries) and return its ``len(prompts)`` scores."""
        body = json.dumps({"prompts": prompts, "images": encoded_images}).encode("utf-8")
        headers = {"Content-Type": "application/json", **self.headers}
        attempts = self.retries + 1
        last_error = ""
        for attempt in range(attempts):
            if attempt > 0:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    answer = response.read()
            except urllib.error.HTTPError as err:
                last_error = _error_message(err)
                if err.code < 500 and err.code not in RETRIED_CLIENT_CODES:
                    raise RewardError(
                        f"reward server {self.url} rejected the request with {last_error} "
                        f"(a client error, not retried); check the url, the headers and that "
                        f"the server speaks the protocol of treegrpo.rewards.http"
                    ) from None
                continue
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                    http.client.HTTPException) as err:
                reason = getattr(err, "reason", err)
                last_error = f"{type(reason).__name__}: {reason}"
                continue
            return parse_scores(answer, len(prompts), self.url)
        raise RewardError(
            f"reward server {self.url} failed after {attempts} attempt(s) "
            f"(timeout {self.timeout:g} s); last error: {last_error}. Check that the server is "
            f"running and reachable from here (e.g. python tools/reward_server.py --reward NAME "
            f"--port PORT) and look at its log."
        )

    def __repr__(self) -> str:
        return (f"HTTPReward(url={self.url!r}, timeout={self.timeout:g}, retries={self.retries}, "
                f"batch_size={self.batch_size})")
