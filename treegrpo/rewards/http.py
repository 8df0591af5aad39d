"""A reward computed by a server over HTTP (a big reward model on another machine or GPU).

Protocol (JSON over HTTP; ``tools/reward_server.py`` serves any registered reward with it)
------------------------------------------------------------------------------------------
Request: ``POST <url>`` with header ``Content-Type: application/json`` (plus any user headers,
e.g. ``Authorization``) and the UTF-8 JSON body::

    {"prompts": ["a cat", "a dog"],
     "images": ["<base64 PNG>", "<base64 PNG>"]}

``prompts`` and ``images`` are lists of equal length L >= 1, in the same order. When the caller
has prompt records, the body also holds ``"metadata": [{...}, ...]`` (L JSON objects, each at most
64 KiB as JSON: the fields of each image's prompt record); servers that do not know it ignore it. Each image is an
8-bit RGB PNG file (the image ``[3, H, W]`` in [0, 1] clamped, scaled by 255 and rounded),
encoded with standard base64 (RFC 4648, with padding, no line breaks).

Response: status 200, a JSON object ``{"scores": [s_0, ..., s_{L-1}]}`` with one finite number
per image, in the request's order. Any other keys are ignored.

Errors: the server answers 4xx when the request is malformed (not retried: sending it again
cannot help; except 408 and 429, timeout and rate limit, which are retried) and 5xx when scoring failed on its side (retried), ideally with a JSON body
``{"error": "<message>"}`` whose message the client shows.

Shared secret (optional): when the server has one, every request carries it in the header
``X-Treegrpo-Secret``; a missing one is answered 401, a wrong one 403.

``timeout`` bounds each whole try (connect, send, every read of the answer), not each socket
read: a server that drips its answer byte by byte fails the try after ``timeout`` seconds. The
client retries connection errors, timeouts, 408 / 429 and 5xx answers ``retries`` times, sleeping
``backoff * 2**attempt`` seconds between tries, then raises :class:`RewardError`; one request thus
takes at most ``(retries + 1) * timeout + backoff * (2**retries - 1)`` seconds (plus name
resolution, which the operating system bounds). Proxies (``http_proxy``) are not used.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import socket
import string
import threading
import time
import urllib.parse

import numpy as np
import torch
from PIL import Image

from treegrpo.registry import REWARDS
from treegrpo.rewards.base import Reward, RewardError, check_images, check_metadata
from treegrpo.rewards.image_stats import to_uint8

# Client errors worth another try: request timeout (408) and rate limiting (429).
RETRIED_CLIENT_CODES = (408, 429)

MAX_ERROR_CHARS = 500
MAX_ANSWER_BYTES = 16 * 2**20  # a scores answer is a few kB; more is a broken or hostile server

SECRET_HEADER = "X-Treegrpo-Secret"
MIN_SECRET_CHARS = 16
SECRET_CHARS = frozenset(string.ascii_letters + string.digits + string.punctuation)
MAKE_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class ImageLimitError(ValueError):
    """The images of a request decode to more pixels than allowed (checked before decoding)."""


def read_secret(env_name: str, what: str) -> str:
    """The shared secret held by environment variable ``env_name``; ValueError naming ``what``
    (the setting that named the variable) if it is unset or too weak."""
    secret = os.environ.get(env_name)
    if not secret:
        raise ValueError(
            f"{what} names the environment variable {env_name!r}, which is not set: "
            f"export {env_name}=$({MAKE_SECRET}) (the same value for the server and the client)"
        )
    if len(secret) < MIN_SECRET_CHARS or not set(secret) <= SECRET_CHARS:
        raise ValueError(
            f"the secret in ${env_name} must be at least {MIN_SECRET_CHARS} printable ASCII "
            f"characters without spaces; make one with {MAKE_SECRET}"
        )
    return secret


def encode_png(images: torch.Tensor) -> list[str]:
    """[L, 3, H, W] float in [0, 1] -> L base64 strings of 8-bit RGB PNG files."""
    encoded = []
    for pixels in to_uint8(images).numpy():
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


def decode_png(encoded: list[str], max_pixels: int | None = None) -> torch.Tensor:
    """L base64 PNG strings (all of one size) -> [L, 3, H, W] float32 in [0, 1] (pixel / 255).

    ``max_pixels`` caps the pixels of all images together: the first image's size is read from
    its header and ``L * H * W`` checked BEFORE any pixel is decoded (ImageLimitError), so a
    small file that would decode to gigabytes costs nothing. The images are decoded one at a
    time into the output. Raises ValueError naming the index of an image that is not valid
    base64 PNG, or whose size differs from the first image's.
    """
    if not encoded:
        return torch.zeros(0, 3, 0, 0)
    out = None
    for index, text in enumerate(encoded):
        with _open_png(text, index) as image:
            width, height = image.size  # from the header: no pixel decoded yet
            if out is None:
                out = _allocate(len(encoded), height, width, max_pixels)
            elif (height, width) != tuple(out.shape[2:]):
                raise ValueError(
                    f"images[{index}] has size {(height, width)}, images[0] has "
                    f"{tuple(out.shape[2:])}: all images of a request must have one size"
                )
            out[index] = torch.from_numpy(_decode_rgb(image, index)).permute(2, 0, 1)
    return out.div_(255.0)


def _open_png(text: str, index: int) -> Image.Image:
    """Open (header only, no pixels) the base64 PNG ``images[index]``; ValueError if it is not."""
    if not isinstance(text, str):
        raise ValueError(f"images[{index}] must be a base64 string, got {type(text).__name__}")
    try:
        return Image.open(io.BytesIO(base64.b64decode(text, validate=True)), formats=["PNG"])
    except Image.DecompressionBombError as err:
        raise ImageLimitError(f"images[{index}] is too large ({err})") from None
    except Exception as err:  # binascii.Error, PIL.UnidentifiedImageError, ...
        raise ValueError(f"images[{index}] is not a base64-encoded PNG ({err})") from None


def _decode_rgb(image: Image.Image, index: int) -> np.ndarray:
    """The pixels of an opened PNG as [H, W, 3] uint8; ValueError if its data is broken."""
    try:
        return np.array(image.convert("RGB"))  # a writable copy, for torch.from_numpy
    except Image.DecompressionBombError as err:
        raise ImageLimitError(f"images[{index}] is too large ({err})") from None
    except Exception as err:  # OSError for truncated or corrupt data
        raise ValueError(f"images[{index}] is not a base64-encoded PNG ({err})") from None


def _allocate(count: int, height: int, width: int, max_pixels: int | None) -> torch.Tensor:
    """The [count, 3, height, width] float32 output, once ``max_pixels`` allows it."""
    total = count * height * width
    if max_pixels is not None and total > max_pixels:
        raise ImageLimitError(
            f"images[0] is {width}x{height}: {count} image(s) of that size decode to {total} "
            f"pixels, over the limit of {max_pixels}"
        )
    return torch.empty(count, 3, height, width)


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


def _error_message(status: int, reason: str, body: bytes) -> str:
    """'HTTP <code> <reason>' plus the server's ``{"error": ...}`` message or body excerpt."""
    detail = ""
    try:
        data = json.loads(body.decode("utf-8"))
        if isinstance(data, dict) and "error" in data:
            detail = str(data["error"])[:MAX_ERROR_CHARS]
    except (UnicodeDecodeError, json.JSONDecodeError):
        detail = _shorten(body) if body else ""
    return f"HTTP {status} {reason}" + (f": {detail}" if detail else "")


def post_within(url: str, body: bytes, headers: dict[str, str],
                timeout: float, max_bytes: int = MAX_ANSWER_BYTES) -> tuple[int, str, bytes]:
    """POST ``body`` to ``url`` -> (status, reason, answer body). The whole exchange (connect,
    send, every read) must end within ``timeout`` seconds: a timer then shuts the socket down
    and TimeoutError is raised. Connection and protocol failures raise OSError / HTTPException.
    At most ``max_bytes + 1`` bytes of the answer are read (more than ``max_bytes``: too large)."""
    parts = urllib.parse.urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection_class = (http.client.HTTPSConnection if parts.scheme == "https"
                        else http.client.HTTPConnection)
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        sock = connection.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked send / recv
            except OSError:
                pass

    def check_deadline() -> None:
        if expired.is_set():
            raise TimeoutError(f"no complete answer within {timeout:g} s (the whole request)")

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        connection.connect()
        check_deadline()
        connection.request("POST", target, body, headers)
        response = connection.getresponse()
        answer = response.read(max_bytes + 1)
        check_deadline()  # a shut-down socket can look like a short, complete answer
        return response.status, response.reason, answer
    except (OSError, http.client.HTTPException):
        check_deadline()
        raise
    finally:
        timer.cancel()
        connection.close()


def check_url(url: str, what: str = "url") -> None:
    """ValueError (naming ``what``) unless ``url`` is http(s)://host[:port]..."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"{what} must start with 'http://' or 'https://', got {url!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        has_host = bool(parts.hostname) and parts.port != 0  # .port raises on a bad port
    except ValueError:
        has_host = False
    if not has_host:
        raise ValueError(f"{what} must name a host and an optional numeric port, got {url!r}")


def check_timeout(timeout: float, what: str = "timeout") -> None:
    """ValueError (naming ``what``) unless ``timeout`` is a finite number of seconds > 0."""
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout) or not timeout > 0):
        raise ValueError(f"{what} must be a number of seconds > 0, got {timeout!r}")


@REWARDS.register_module()
class HTTPReward(Reward):
    """``reward(images [L, 3, H, W] in [0, 1], prompts [L], metadata=None) -> [L] float32`` scored
    by a server speaking the protocol of this module's docstring.

    Args:
        url: ``http://`` or ``https://`` address the requests are POSTed to.
        timeout: seconds one try may take in all: connect, send and the whole answer (> 0).
        retries: extra tries after a connection error, timeout, 408 / 429 or 5xx answer (>= 0).
        backoff: seconds before the first retry, doubled for each further one (>= 0).
        batch_size: images per request (None: all images of a call in one request).
        headers: extra HTTP headers, e.g. ``{'Authorization': 'Bearer ...'}``.
        secret_env: name of the environment variable holding the server's shared secret (sent
            as ``X-Treegrpo-Secret``); the secret itself never goes into a config file.
    """

    sends_requests = True

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
                 batch_size: int | None = None, headers: dict[str, str] | None = None,
                 secret_env: str | None = None) -> None:
        check_url(url)
        check_timeout(timeout)
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
        if secret_env is not None:
            if not isinstance(secret_env, str) or not secret_env:
                raise ValueError(f"secret_env must be the name of an environment variable, got {secret_env!r}")
            headers[SECRET_HEADER] = read_secret(secret_env, f"HTTPReward secret_env={secret_env!r}")
        self.url, self.timeout, self.retries = url, float(timeout), retries
        self.backoff, self.batch_size, self.headers = float(backoff), batch_size, headers
        self.secret_env = secret_env

    def __call__(self, images: torch.Tensor, prompts: list[str],
                 metadata: list[dict] | None = None) -> torch.Tensor:
        check_images(images, prompts, self.name)
        if metadata is not None:
            check_metadata(metadata, len(prompts), self.name)
        size = self.batch_size or max(len(prompts), 1)
        scores: list[float] = []
        for start in range(0, len(prompts), size):
            chunk = list(prompts[start:start + size])
            meta = None if metadata is None else list(metadata[start:start + size])
            scores += self.post(encode_png(images[start:start + size]), chunk, meta)
        return torch.tensor(scores, dtype=torch.float32, device=images.device)

    def post(self, encoded_images: list[str], prompts: list[str],
             metadata: list[dict] | None = None) -> list[float]:
        """POST one request (with retries) and return its ``len(prompts)`` scores; ``metadata``
        (None: the key is left out) must be JSON-serialisable."""
        request = {"prompts": prompts, "images": encoded_images}
        if metadata is not None:
            request["metadata"] = metadata
        body = json.dumps(request).encode("utf-8")
        headers = {"Content-Type": "application/json", **self.headers}
        attempts = self.retries + 1
        last_error = ""
        for attempt in range(attempts):
            if attempt > 0:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status, reason, answer = post_within(self.url, body, headers, self.timeout)
            except (OSError, http.client.HTTPException) as err:  # TimeoutError is an OSError
                last_error = f"{type(err).__name__}: {err}"
                continue
            if len(answer) > MAX_ANSWER_BYTES:
                raise RewardError(f"reward server {self.url} answered more than "
                                  f"{MAX_ANSWER_BYTES} bytes; expected a small JSON object of scores")
            if 200 <= status < 300:
                return parse_scores(answer, len(prompts), self.url)
            last_error = _error_message(status, reason, answer)
            if status < 500 and status not in RETRIED_CLIENT_CODES:
                raise RewardError(
                    f"reward server {self.url} rejected the request with {last_error} "
                    f"(a client error, not retried); check the url, the headers, secret_env and "
                    f"that the server speaks the protocol of treegrpo.rewards.http"
                )
        raise RewardError(
            f"reward server {self.url} failed after {attempts} attempt(s) "
            f"(timeout {self.timeout:g} s each); last error: {last_error}. Check that the server is "
            f"running and reachable from here (e.g. python tools/reward_server.py --reward NAME "
            f"--port PORT) and look at its log."
        )

    def __repr__(self) -> str:
        secret = f", secret_env={self.secret_env!r}" if self.secret_env else ""
        return (f"HTTPReward(url={self.url!r}, timeout={self.timeout:g}, retries={self.retries}, "
                f"batch_size={self.batch_size}{secret})")
