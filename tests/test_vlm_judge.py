"""VLMJudgeReward against a local fake OpenAI-compatible server: the request, score parsing and
mapping, fallbacks, errors for garbage / huge / wrong-status / slow answers, bounded concurrency."""
import base64
import io
import json
import re
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from test_structured_reward import fake_server  # the module pytest loaded
from treegrpo.registry import REWARDS, build
from treegrpo.rewards.base import RewardError
from treegrpo.rewards.vlm_judge import VLMJudgeReward, parse_score, template_fields


def chat(text):
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


def replying(*texts):
    """Answers texts in turn (by the order requests arrive)."""
    count = iter(range(10**6))
    return lambda data, headers: (200, chat(texts[next(count) % len(texts)]))


def quantized(count=2, size=8):
    return torch.randint(0, 256, (count, 3, size, size), generator=torch.Generator().manual_seed(0)).float() / 255


def test_parse_score_and_template_fields_by_hand():
    pattern = re.compile(r"(-?\d+(?:\.\d+)?)")
    assert parse_score("Score: 7", pattern, 0, 10) == 0.7
    assert parse_score("I give it 2.5 out of 10", pattern, 0, 10) == 0.25
    assert parse_score("11", pattern, 0, 10) is None and parse_score("great!", pattern, 0, 10) is None
    assert parse_score("rating=4/5", re.compile(r"rating=(\d)"), 1, 5) == 0.75
    assert template_fields("Rate {prompt} with text {text}.") == ["prompt", "text"]
    with pytest.raises(ValueError, match=r"placeholder \{prompt.__class__\} is not a plain name"):
        template_fields("{prompt.__class__}")
    with pytest.raises(ValueError, match="not a valid format string"):
        template_fields("{prompt")


def test_judge_request_and_scores(monkeypatch):
    monkeypatch.setenv("VLM_TEST_KEY", "sk-test-123")
    images = quantized()
    with fake_server(replying("Score: 7")) as (url, received):
        reward = build(REWARDS, dict(type="VLMJudgeReward", url=url, model_name="judge-1", api_key_env="VLM_TEST_KEY",
                                     template='Does it show "{prompt}" with text "{text}"?',
                                     metadata_fields=["text"], timeout=5))
        scores = reward(images, ["a cat", "a dog"], metadata=[{"text": "HI"}, {"text": "YO"}])
    assert scores.dtype == torch.float32 and scores.tolist() == pytest.approx([0.7, 0.7])
    bodies = sorted((r[0] for r in received), key=lambda b: b["messages"][0]["content"][0]["text"])
    assert [b["messages"][0]["content"][0]["text"] for b in bodies] == [
        'Does it show "a cat" with text "HI"?', 'Does it show "a dog" with text "YO"?']
    body = bodies[0]
    assert body["model"] == "judge-1" and body["temperature"] == 0 and body["max_tokens"] == 16
    data_url = body["messages"][0]["content"][1]["image_url"]["url"]
    assert data_url.startswith("data:image/png;base64,")
    png = np.array(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))
    assert torch.equal(torch.from_numpy(png).permute(2, 0, 1).float() / 255, images[0])
    assert all(r[1]["Authorization"] == "Bearer sk-test-123" for r in received)


def test_unparseable_answers_raise_or_fall_back():
    images = quantized()
    with fake_server(replying("I cannot rate this image, sorry")) as (url, _):
        with pytest.raises(RewardError, match=r"answer 'I cannot rate this image, sorry' has no score.*set fallback"):
            VLMJudgeReward(url, "m", timeout=5)(images, ["a", "b"])
        reward = VLMJudgeReward(url, "m", timeout=5, fallback=0.0)
        assert reward(images, ["a", "b"]).tolist() == [0.0, 0.0]
        assert reward.log_values() == {"reward/vlm_fallbacks": 2.0}
    with fake_server(replying("12")) as (url, _):  # out of range [0, 10]
        with pytest.raises(RewardError, match=r"answer '12' has no score .* in \[0, 10\]"):
            VLMJudgeReward(url, "m", timeout=5)(images[:1], ["a"])
    with fake_server(replying("x" * 5000)) as (url, _):  # the quoted answer is cut
        with pytest.raises(RewardError) as info:
            VLMJudgeReward(url, "m", timeout=5)(images[:1], ["a"])
        assert len(str(info.value)) < 600


@pytest.mark.parametrize("answer, message", [
    (lambda d, h: (200, b"<html>oops</html>"), "not JSON"),
    (lambda d, h: (200, b'{"id": "x"}'), "not a chat completion"),
    (lambda d, h: (401, b'{"error": "bad key"}'), "HTTP 401.*bad key"),
    (lambda d, h: (500, b"boom"), "HTTP 500"),
    (lambda d, h: (200, chat("7" + " " * 5000)), "more than 1000 bytes"),
])
def test_bad_answers_are_clear_errors(answer, message):
    with fake_server(answer) as (url, _):
        with pytest.raises(RewardError, match=message):
            VLMJudgeReward(url, "m", timeout=5, max_answer_bytes=1000)(quantized(1), ["a"])


def test_slow_server_times_out_and_concurrency_is_bounded():
    def slow(data, headers):
        time.sleep(1.5)
        return 200, chat("5")
    with fake_server(slow) as (url, _):
        start = time.monotonic()
        with pytest.raises(RewardError, match=r"TimeoutError.*timeout 0.3 s"):
            VLMJudgeReward(url, "m", timeout=0.3)(quantized(1), ["a"])
        assert time.monotonic() - start < 1.2
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def counting(data, headers):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1
        return 200, chat("10")
    with fake_server(counting) as (url, received):
        scores = VLMJudgeReward(url, "m", timeout=5, concurrency=2)(quantized(5), list("abcde"))
    assert scores.tolist() == [1.0] * 5 and len(received) == 5 and state["most"] == 2


def test_constructor_refuses_bad_settings(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    cases = [
        (dict(template="{prompt} {colour}"), r"unknown placeholders \['colour'\]; allowed: \['prompt'\]"),
        (dict(api_key_env="NO_SUCH_KEY"), "'NO_SUCH_KEY' names an environment variable that is not set"),
        (dict(score_regex="("), "is not a regular expression"),
        (dict(score_range=(10, 0)), "score_range must be"),
        (dict(fallback=2), r"fallback must be None or a number in \[0, 1\]"),
        (dict(concurrency=0), "concurrency must be an integer"),
        (dict(url="ftp://x"), "url must start with"),
        (dict(model_name=""), "model_name must be"),
    ]
    for kwargs, message in cases:
        args = {"url": "http://127.0.0.1:1/v1/chat/completions", "model_name": "m", **kwargs}
        with pytest.raises(ValueError, match=message):
            VLMJudgeReward(**args)
    reward = VLMJudgeReward("http://127.0.0.1:1/", "m", template="{prompt}: {text}", metadata_fields=["text"])
    with pytest.raises(ValueError, match="uses record fields \\['text'\\] but got no metadata"):
        reward(quantized(1), ["a"])
    with pytest.raises(ValueError, match=r"metadata\[0\] has no 'text' field"):
        reward(quantized(1), ["a"], metadata=[{"other": 1}])
