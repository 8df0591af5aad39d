"""Detector backends of :class:`~treegrpo.rewards.structured.StructuredReward` (registry
``DETECTORS``): ``detector(images [L, 3, H, W] in [0, 1]) -> L lists of detections``.

HTTPDetector protocol: ``POST <url>`` with JSON ``{"images": ["<base64 PNG>", ...]}`` (PNGs as
in treegrpo/rewards/http.py; header ``X-Treegrpo-Secret`` when ``secret_env`` is set); answer
200 with ``{"detections": [[{"label": "dog", "score": 0.9, "box": [x0, y0, x1, y1],
"color": "red"}, ...], ...]}``: one list per image, boxes in pixels, ``color`` optional.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from treegrpo.rewards.base import RewardError
from treegrpo.rewards.http import SECRET_HEADER, check_timeout, check_url, encode_png, read_secret
from treegrpo.rewards.http_json import check_headers, check_max_bytes, post_json
from treegrpo.rewards.structured import DETECTORS, validate_detections
from treegrpo.toy import CLASSIFIER_WEIGHTS
from treegrpo.toy.models import load_models
from treegrpo.toy.prompts import ATTRIBUTES
from treegrpo.toy.render import POSITION_XY, SIZE_RADIUS


@DETECTORS.register_module()
class HTTPDetector:
    """Detections from a server (module docstring); one request per ``batch_size`` images.

    Args:
        url: ``http(s)://`` address.
        timeout: seconds one whole request may take (connect, send, answer).
        max_answer_bytes: larger answers are refused (RewardError).
        batch_size: images per request (None: all in one).
        headers: extra HTTP headers.
        secret_env: environment variable holding the shared secret (never the secret itself).
    """

    def __init__(self, url: str, timeout: float = 60.0, max_answer_bytes: int = 4 << 20,
                 batch_size: int | None = None, headers: dict[str, str] | None = None,
                 secret_env: str | None = None) -> None:
        check_url(url, "HTTPDetector url")
        check_timeout(timeout, "HTTPDetector timeout")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"HTTPDetector batch_size must be None or an integer >= 1, got {batch_size!r}")
        self.headers = check_headers(headers, "HTTPDetector headers")
        if secret_env is not None:
            if not isinstance(secret_env, str) or not secret_env:
                raise ValueError(f"HTTPDetector secret_env must name an environment variable, got {secret_env!r}")
            self.headers[SECRET_HEADER] = read_secret(secret_env, f"HTTPDetector secret_env={secret_env!r}")
        self.url, self.timeout, self.batch_size = url, float(timeout), batch_size
        self.max_answer_bytes = check_max_bytes(max_answer_bytes, "HTTPDetector max_answer_bytes")

    def __call__(self, images: torch.Tensor) -> list[list[dict]]:
        size = self.batch_size or max(images.shape[0], 1)
        out: list[list[dict]] = []
        for start in range(0, images.shape[0], size):
            chunk = images[start:start + size]
            answer = post_json(self.url, {"images": encode_png(chunk)}, self.headers, self.timeout,
                               self.max_answer_bytes, "detector server")
            found = answer.get("detections") if isinstance(answer, dict) else None
            if not isinstance(found, list) or len(found) != chunk.shape[0]:
                raise RewardError(f"detector server {self.url} must answer {{\"detections\": [...]}} with "
                                  f"{chunk.shape[0]} lists (one per image), got {str(answer)[:200]}")
            try:
                out += [validate_detections(d, f"detector server {self.url}: detections[{start + i}]")
                        for i, d in enumerate(found)]
            except ValueError as err:
                raise RewardError(str(err)) from None
        return out

    def __repr__(self) -> str:
        return f"HTTPDetector(url={self.url!r}, timeout={self.timeout:g}, batch_size={self.batch_size})"


@DETECTORS.register_module()
class ToyDetector:
    """One detection per toy-world image from the shipped attribute classifier: label = the
    most likely shape (score = its probability), color = the most likely colour, box = the
    square around the most likely position's centre with the most likely size's radius
    (treegrpo/toy/render.py), in pixels of the input.

    Args:
        checkpoint: classifier safetensors (None: the shipped one), loaded on first use.
        device: where the classifier runs.
    """

    def __init__(self, checkpoint: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        self.checkpoint = Path(checkpoint) if checkpoint is not None else CLASSIFIER_WEIGHTS
        self.device = torch.device(device)
        self._model = None

    def load(self) -> "ToyDetector":
        if self._model is None:
            model = load_models(self.checkpoint, ("classifier",), self.device)["classifier"]
            self._model = model.requires_grad_(False).eval()
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[list[dict[str, Any]]]:
        self.load()
        height, width = images.shape[-2:]
        logits = self._model(images.to(self.device, torch.float32))
        probs = {name: logits[name].float().softmax(dim=-1).cpu() for name in ATTRIBUTES}
        out = []
        for i in range(images.shape[0]):
            pick = {name: ATTRIBUTES[name][int(probs[name][i].argmax())] for name in ATTRIBUTES}
            cx, cy = POSITION_XY[pick["position"]]
            radius = SIZE_RADIUS[pick["size"]]
            box = [(cx - radius) * width, (cy - radius) * height, (cx + radius) * width, (cy + radius) * height]
            out.append([{"label": pick["shape"], "score": float(probs["shape"][i].max()),
                         "box": [float(v) for v in box], "color": pick["colour"]}])
        return out

    def __repr__(self) -> str:
        return f"ToyDetector(checkpoint={str(self.checkpoint)!r}, device={str(self.device)!r})"
