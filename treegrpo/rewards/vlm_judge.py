"""VLM-as-judge reward: a vision-language model behind an OpenAI-compatible
``/v1/chat/completions`` endpoint rates each image; the score is parsed from its answer.

One request per image (at most ``concurrency`` at once), body::

    {"model": MODEL_NAME, "temperature": 0, "max_tokens": N,
     "messages": [{"role": "user", "content": [
         {"type": "text", "text": TEMPLATE filled with {prompt} and the record's fields},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}]}

The answer's ``choices[0].message.content`` is searched with ``score_regex`` (its first group,
or the whole match); the number, which must lie in ``score_range = (lo, hi)``, is mapped to
``(s - lo) / (hi - lo)`` in [0, 1]. An answer without a number in range raises RewardError
naming it, or, with ``fallback`` set, scores ``fallback`` and is counted
(``reward/vlm_fallbacks`` in the log). The API key comes from the environment variable named by
``api_key_env`` (sent as ``Authorization: Bearer``); it never goes into a config.

Config example::

    reward = dict(type='VLMJudgeReward', url='http://127.0.0.1:8000/v1/chat/completions',
                  model_name='Qwen2.5-VL-7B-Instruct', api_key_env='VLM_API_KEY',
                  template='Rate 0-10 how well the image shows "{prompt}" with the text '
                           '"{text}". Answer with the number only.',
                  metadata_fields=['text'], score_range=(0, 10))
"""
from __future__ import annotations

import logging
import os
import re
import string
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from treegrpo.registry import REWARDS
from treegrpo.rewards.base import Reward, RewardError, check_images, check_metadata
from treegrpo.rewards.http import check_timeout, check_url, encode_png
from treegrpo.rewards.http_json import check_headers, check_max_bytes, finite, post_json

logger = logging.getLogger(__name__)
SHOWN_CHARS = 200  # of an answer quoted in an error
MAX_CONCURRENCY = 64
MAX_FIELD_CHARS = 4000  # a metadata value put into the template is cut here


def template_fields(template: str) -> list[str]:
    """The placeholder names of a ``str.format`` template; ValueError for a malformed one or a
    placeholder with attribute / index access or a format spec (``{a.b}``, ``{a[0]}``, ``{a:>9}``)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"VLMJudgeReward template is not a valid format string ({err}); write "
                         f"literal braces as {{{{ and }}}}") from None
    names = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"VLMJudgeReward template placeholder {{{name}{'!' + conversion if conversion else ''}"
                             f"{':' + spec if spec else ''}}} is not a plain name like {{prompt}}")
        names.append(name)
    return names


def parse_score(answer: str, pattern: re.Pattern, lo: float, hi: float) -> float | None:
    """The judge's number mapped to [0, 1], or None if ``pattern`` finds no number in [lo, hi]."""
    match = pattern.search(answer)
    if match is None:
        return None
    try:
        value = float(match.group(1) if pattern.groups else match.group(0))
    except (TypeError, ValueError):
        return None
    if not lo <= value <= hi:
        return None
    return (value - lo) / (hi - lo)


def answer_text(data: Any) -> str | None:
    """``choices[0].message.content`` of a chat-completions answer (text parts joined), or None."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else None


@REWARDS.register_module()
class VLMJudgeReward(Reward):
    """``reward(images [L, 3, H, W] in [0, 1], prompts [L], metadata=None) -> [L] float32`` in
    [0, 1] from a VLM judge (module docstring).

    Args:
        url: the chat-completions address (``http(s)://.../v1/chat/completions``).
        model_name: the served model's name, sent as the request's ``model`` (a name, not a
            path this machine checks: the config check leaves it alone).
        template: the question, a ``str.format`` string over ``{prompt}`` and ``metadata_fields``.
        metadata_fields: record fields the template may use (others are refused here).
        score_regex: where the number is in the answer (first group, or the whole match).
        score_range: (lo, hi) of the judge's scale, mapped to [0, 1].
        fallback: score in [0, 1] for unparseable answers (None: raise RewardError).
        api_key_env: environment variable with the API key (None: no Authorization header).
        timeout: seconds per request; max_answer_bytes: larger answers are refused.
        concurrency: requests in flight at once; max_tokens: the answer's token budget.
        headers: extra HTTP headers.
    """

    sends_requests = True

    def __init__(self, url: str, model_name: str, template: str = "{prompt}",
                 metadata_fields: list[str] | tuple[str, ...] = (), score_regex: str = r"(-?\d+(?:\.\d+)?)",
                 score_range: tuple[float, float] | list[float] = (0, 10), fallback: float | None = None,
                 api_key_env: str | None = None, timeout: float = 120.0, max_answer_bytes: int = 1 << 20,
                 concurrency: int = 4, max_tokens: int = 16, headers: dict[str, str] | None = None) -> None:
        check_url(url, "VLMJudgeReward url")
        check_timeout(timeout, "VLMJudgeReward timeout")
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"VLMJudgeReward model_name must be the served model's name, got {model_name!r}")
        if not isinstance(template, str) or not template.strip():
            raise ValueError("VLMJudgeReward template must be a non-empty string, e.g. 'Rate 0-10: {prompt}'")
        if isinstance(metadata_fields, str) or not all(isinstance(f, str) and f.isidentifier() for f in metadata_fields):
            raise ValueError(f"VLMJudgeReward metadata_fields must be a list of field names, got {metadata_fields!r}")
        allowed = {"prompt", *metadata_fields}
        self.fields = template_fields(template)
        unknown = sorted(set(self.fields) - allowed)
        if unknown:
            raise ValueError(f"VLMJudgeReward template uses unknown placeholders {unknown}; allowed: "
                             f"{sorted(allowed)} (add record fields to metadata_fields)")
        try:
            self.pattern = re.compile(score_regex)
        except (re.error, TypeError) as err:
            raise ValueError(f"VLMJudgeReward score_regex {score_regex!r} is not a regular expression ({err})") from None
        if (not isinstance(score_range, (list, tuple)) or len(score_range) != 2 or not all(finite(v) for v in score_range)
                or not score_range[0] < score_range[1]):
            raise ValueError(f"VLMJudgeReward score_range must be (lo, hi) with lo < hi, got {score_range!r}")
        if fallback is not None and (not finite(fallback) or not 0 <= fallback <= 1):
            raise ValueError(f"VLMJudgeReward fallback must be None or a number in [0, 1], got {fallback!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"VLMJudgeReward concurrency must be an integer in [1, {MAX_CONCURRENCY}], got {concurrency!r}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"VLMJudgeReward max_tokens must be an integer >= 1, got {max_tokens!r}")
        self.headers = check_headers(headers, "VLMJudgeReward headers")
        if api_key_env is not None:
            key = os.environ.get(api_key_env) if isinstance(api_key_env, str) and api_key_env else None
            if not key:
                raise ValueError(f"VLMJudgeReward api_key_env={api_key_env!r} names an environment variable "
                                 f"that is not set: export {api_key_env}=<your key> (the key never goes in the config)")
            self.headers["Authorization"] = f"Bearer {key}"
        self.url, self.model_name, self.template, self.api_key_env = url, model_name, template, api_key_env
        self.metadata_fields = tuple(metadata_fields)
        self.lo, self.hi = float(score_range[0]), float(score_range[1])
        self.fallback, self.timeout, self.concurrency = fallback, float(timeout), concurrency
        self.max_answer_bytes = check_max_bytes(max_answer_bytes, "VLMJudgeReward max_answer_bytes")
        self.max_tokens = max_tokens
        self.fallbacks = 0  # unparseable answers of the last call

    def question(self, prompt: str, meta: dict, index: int) -> str:
        """The template filled for one image; ValueError naming a field the record lacks."""
        values = {"prompt": prompt}
        for name in self.fields:
            if name == "prompt":
                continue
            if name not in meta:
                raise ValueError(f"VLMJudgeReward: metadata[{index}] has no {name!r} field used by the template "
                                 f"(keys: {sorted(meta)[:10]}); add it to the prompt records or change the template")
            values[name] = str(meta[name])[:MAX_FIELD_CHARS]
        return self.template.format(**values)

    def judge(self, question: str, png: str) -> float | None:
        """One request -> the mapped score, or None (fallback) / RewardError for a bad answer."""
        payload = {"model": self.model_name, "temperature": 0, "max_tokens": self.max_tokens,
                   "messages": [{"role": "user", "content": [
                       {"type": "text", "text": question},
                       {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]}]}
        data = post_json(self.url, payload, self.headers, self.timeout, self.max_answer_bytes, "VLM judge")
        text = answer_text(data)
        if text is None:
            raise RewardError(f"VLM judge {self.url} answered {str(data)[:SHOWN_CHARS]!r}, not a chat completion "
                              f"with choices[0].message.content; check that the url is the "
                              f"/v1/chat/completions endpoint")
        score = parse_score(text, self.pattern, self.lo, self.hi)
        if score is None and self.fallback is None:
            raise RewardError(f"VLM judge answer {text[:SHOWN_CHARS]!r} has no score matching {self.pattern.pattern!r} "
                              f"in [{self.lo:g}, {self.hi:g}]; fix the template or score_regex / score_range, "
                              f"or set fallback to score such answers")
        return score

    def __call__(self, images: torch.Tensor, prompts: list[str],
                 metadata: list[dict] | None = None) -> torch.Tensor:
        check_images(images, prompts, self.name)
        if metadata is None and set(self.fields) - {"prompt"}:
            raise ValueError(f"VLMJudgeReward's template uses record fields {sorted(set(self.fields) - {'prompt'})} "
                             f"but got no metadata; train on a jsonl prompt file that has them")
        records = check_metadata(metadata, len(prompts), self.name)
        questions = [self.question(p, m, i) for i, (p, m) in enumerate(zip(prompts, records))]
        pngs = encode_png(images)
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(len(pngs), 1))) as pool:
            scores = list(pool.map(self.judge, questions, pngs))
        self.fallbacks = sum(s is None for s in scores)
        if self.fallbacks:
            logger.warning("VLMJudgeReward: %d of %d answers had no score; scored %g", self.fallbacks,
                           len(scores), self.fallback)
        values = [self.fallback if s is None else s for s in scores]
        return torch.tensor(values, dtype=torch.float32, device=images.device)

    def log_values(self) -> dict[str, float]:
        """``reward/vlm_fallbacks``: answers of the last call scored with ``fallback``."""
        return {"reward/vlm_fallbacks": float(self.fallbacks)} if self.fallback is not None else {}

    def __repr__(self) -> str:
        return (f"VLMJudgeReward(url={self.url!r}, model_name={self.model_name!r}, score_range=({self.lo:g}, {self.hi:g}), "
                f"fallback={self.fallback}, api_key_env={self.api_key_env!r}, concurrency={self.concurrency})")
