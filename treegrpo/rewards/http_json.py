"""One JSON request / JSON answer over HTTP with a whole-request timeout and an answer size cap,
shared by the HTTP detector (structured_detectors.py) and the VLM judge (vlm_judge.py).
Every failure is a RewardError naming the server, the cause and the setting to change."""
from __future__ import annotations

import http.client
import json
import math
from typing import Any

from treegrpo.rewards.base import RewardError
from treegrpo.rewards.http import _error_message, _shorten, post_within

MAX_ANSWER_CAP = 256 << 20  # the largest max_answer_bytes a config may set


def check_max_bytes(value: Any, what: str = "max_answer_bytes") -> int:
    """ValueError unless ``value`` is an integer in [1, MAX_ANSWER_CAP]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ANSWER_CAP:
        raise ValueError(f"{what} must be an integer number of bytes in [1, {MAX_ANSWER_CAP}], got {value!r}")
    return value


def check_headers(headers: Any, what: str = "headers") -> dict[str, str]:
    """A copy of ``headers`` (None: empty); ValueError unless it maps strings to strings."""
    headers = dict(headers or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError(f"{what} must map strings to strings, got {headers!r}")
    return headers


def post_json(url: str, payload: Any, headers: dict[str, str], timeout: float, max_bytes: int,
              what: str) -> Any:
    """POST ``payload`` as JSON, return the decoded 2xx JSON answer. RewardError (naming
    ``what`` and ``url``) on a connection error or timeout, a non-2xx status (with the server's
    message), an answer over ``max_bytes`` or one that is not JSON."""
    body = json.dumps(payload).encode("utf-8")
    try:
        status, reason, answer = post_within(url, body, {"Content-Type": "application/json", **headers},
                                             timeout, max_bytes)
    except (OSError, http.client.HTTPException) as err:  # TimeoutError is an OSError
        raise RewardError(f"{what} {url} failed: {type(err).__name__}: {err} (timeout {timeout:g} s); "
                          f"check that the server runs and answers within timeout") from None
    if len(answer) > max_bytes:
        raise RewardError(f"{what} {url} answered more than {max_bytes} bytes (max_answer_bytes); "
                          f"a broken server, or raise max_answer_bytes")
    if not 200 <= status < 300:
        raise RewardError(f"{what} {url} answered {_error_message(status, reason, answer)}; check the url, "
                          f"the headers / api key and the server's log")
    try:
        return json.loads(answer.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as err:
        raise RewardError(f"{what} {url} answered a body that is not JSON ({err}): {_shorten(answer)}") from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def finite(value: Any) -> bool:
    """True for an int or float (not bool) that is finite."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
