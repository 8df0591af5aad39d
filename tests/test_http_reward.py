"""HTTPReward against a real tools/reward_server.py server on 127.0.0.1 (ephemeral port):
same scores as the local reward, retries on 5xx / timeouts, no retry on 4xx, clear errors."""
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest
import torch

import treegrpo.rewards.http  # noqa: F401  (registers HTTPReward)
from tools.reward_server import RewardHandler, build_reward, make_server
from treegrpo.registry import REWARDS, build
from treegrpo.rewards.base import RewardError
from treegrpo.rewards.http import HTTPReward, decode_png, encode_png
from treegrpo.rewards.image_stats import JPEGCompressibility


@contextmanager
def serving(reward, handler=RewardHandler):
    """Run a reward server in a thread; yields its url."""
    server = make_server(reward, "127.0.0.1", 0, quiet=True, handler=handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def quantized_images(count=5, size=8, seed=0):
    """[count, 3, size, size] images on the 8-bit grid (a PNG round trip is exact)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), generator=gen).float() / 255.0


PROMPTS = ["a", "b", "c", "d", "e"]


class CountingHandler(RewardHandler):
    """Counts POSTs; subclasses decide what to answer through ``answer``."""

    posts = 0

    def do_POST(self):  # noqa: N802
        type(self).posts += 1
        self.rfile.read(int(self.headers["Content-Length"]))  # read the body before answering
        self.answer()

    def answer(self):
        raise NotImplementedError


def test_png_round_trip_is_exact_on_the_8_bit_grid():
    images = quantized_images()
    assert torch.equal(decode_png(encode_png(images)), images)
    with pytest.raises(ValueError, match=r"images\[1\] is not a base64-encoded PNG"):
        decode_png([encode_png(images[:1])[0], "bm90IGEgcG5n"])


def test_scores_through_the_server_equal_the_local_reward():
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    local = JPEGCompressibility(quality=90)
    with serving(dict(type="JPEGCompressibility", quality=90)) as url:
        remote = build(REWARDS, dict(type="HTTPReward", url=url, timeout=5.0, batch_size=2))
        scores = remote(images, PROMPTS)
    # the server sees the images as 8-bit PNGs; JPEGCompressibility quantizes the same way
    assert scores.dtype == torch.float32 and scores.shape == (5,)
    assert torch.equal(scores, local(images, PROMPTS))


def test_a_plugin_reward_is_served_with_its_arguments():
    reward = build_reward("BrightnessReward", '{"target": 0.25}', ["plugins.example_reward"])
    images = quantized_images()
    with serving(reward) as url:
        scores = HTTPReward(url, timeout=5.0)(images, PROMPTS)
    assert torch.allclose(scores, -(images.mean(dim=(1, 2, 3)) - 0.25).abs(), atol=1e-6)
    with pytest.raises(ValueError, match="--cfg must be a JSON object"):
        build_reward("BrightnessReward", "target=0.25", [])


def test_server_health_check_and_malformed_request():
    with serving(dict(type="JPEGCompressibility")) as url:
        with urllib.request.urlopen(url, timeout=5) as response:
            health = json.loads(response.read())
        assert health == {"reward": "JPEGCompressibility(quality=95)", "status": "ok"}
        body = json.dumps({"prompts": ["a", "b"], "images": encode_png(quantized_images(1))}).encode()
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        assert info.value.code == 400
        assert "one image per prompt (got 1 images for 2 prompts)" in json.loads(info.value.read())["error"]


@pytest.mark.parametrize("code", [503, 429])  # busy server, rate limit
def test_server_failing_twice_then_succeeding_is_retried(code):
    class Flaky(RewardHandler):
        posts = 0

        def do_POST(self):  # noqa: N802
            type(self).posts += 1
            if type(self).posts <= 2:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_json(code, {"error": "warming up"})
            else:
                super().do_POST()

    images = quantized_images()
    with serving(dict(type="JPEGCompressibility"), Flaky) as url:
        scores = HTTPReward(url, timeout=5.0, retries=2, backoff=0.01)(images, PROMPTS)
    assert Flaky.posts == 3
    assert torch.equal(scores, JPEGCompressibility()(images, PROMPTS))


def test_server_failing_more_than_the_retries_raises_with_the_last_error():
    class Down(CountingHandler):
        def answer(self):
            self.send_json(500, {"error": "CUDA out of memory"})

    with serving(dict(type="JPEGCompressibility"), Down) as url:
        with pytest.raises(RewardError, match=r"after 3 attempt\(s\).*HTTP 500.*CUDA out of memory"):
            HTTPReward(url, timeout=5.0, retries=2, backoff=0.0)(quantized_images(), PROMPTS)
    assert Down.posts == 3


def test_a_timeout_is_retried():
    class SlowOnce(RewardHandler):
        posts = 0

        def do_POST(self):  # noqa: N802
            type(self).posts += 1
            if type(self).posts == 1:  # the client gives up after 0.2 s; answer nothing
                self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(0.5)
                return
            super().do_POST()

    images = quantized_images(2)
    with serving(dict(type="JPEGCompressibility"), SlowOnce) as url:
        scores = HTTPReward(url, timeout=0.2, retries=1, backoff=0.0)(images, PROMPTS[:2])
    assert SlowOnce.posts == 2 and scores.shape == (2,)


def test_a_client_error_is_not_retried():
    class Rejecting(CountingHandler):
        def answer(self):
            self.send_json(422, {"error": "images must be 512x512"})

    with serving(dict(type="JPEGCompressibility"), Rejecting) as url:
        with pytest.raises(RewardError, match=r"HTTP 422.*images must be 512x512.*not retried"):
            HTTPReward(url, timeout=5.0, retries=3, backoff=0.0)(quantized_images(), PROMPTS)
    assert Rejecting.posts == 1


@pytest.mark.parametrize("payload, match", [
    ({"scores": [1.0, 2.0]}, "returned 2 scores for 5 images"),
    ({"scores": [1.0, "x", 2.0, 3.0, 4.0]}, r"non-number at scores\[1\]: 'x'"),
    ({"result": [1.0] * 5}, r'expected a JSON object \{"scores": \[...\]\}'),
])
def test_malformed_scores_raise(payload, match):
    class Wrong(CountingHandler):
        def answer(self):
            self.send_json(200, payload)

    with serving(dict(type="JPEGCompressibility"), Wrong) as url:
        with pytest.raises(RewardError, match=match):
            HTTPReward(url, timeout=5.0, retries=3, backoff=0.0)(quantized_images(), PROMPTS)
    assert Wrong.posts == 1  # a wrong answer is not retried


def test_a_dead_port_raises_naming_the_url_and_attempts():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/score"
    reward = HTTPReward(url, timeout=1.0, retries=1, backoff=0.0)
    with pytest.raises(RewardError) as info:
        reward(quantized_images(1), ["a"])
    message = str(info.value)
    assert url in message and "after 2 attempt(s)" in message
    assert "ConnectionRefusedError" in message and "Check that the server is running" in message


@pytest.mark.parametrize("kwargs, match", [
    (dict(url="localhost:8000"), "url must start with 'http://' or 'https://'"),
    (dict(url="http://x", timeout=0), "timeout must be a number of seconds > 0"),
    (dict(url="http://x", retries=-1), "retries must be an integer >= 0"),
    (dict(url="http://x", backoff=-1.0), "backoff must be a number of seconds >= 0"),
    (dict(url="http://x", batch_size=0), "batch_size must be None or an integer >= 1"),
    (dict(url="http://x", headers={"X-Key": 1}), "headers must map strings to strings"),
    (dict(url="http://x:port/"), "url must name a host and an optional numeric port"),
    (dict(url="http://", timeout=1), "url must name a host"),
    (dict(url="http://x", timeout=float("inf")), "timeout must be a number of seconds > 0"),
    (dict(url="http://x", secret_env=""), "secret_env must be the name of an environment variable"),
])
def test_argument_errors_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HTTPReward(**kwargs)


class Dripping(RewardHandler):
    """Answers one byte every 0.5 s (a complete answer would take ~20 s): every single socket
    read succeeds well within any timeout, only the whole request is too slow."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        answer = b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"scores": [1.0]}'
        for byte in answer[:40]:
            try:
                self.wfile.write(bytes([byte]))
            except OSError:  # the client gave up: stop dripping
                return
            time.sleep(0.5)


@pytest.mark.parametrize("timeout, retries", [(2.0, 0), (1.0, 1)])
def test_timeout_bounds_the_whole_request_not_each_read(timeout, retries):
    with serving(dict(type="JPEGCompressibility"), Dripping) as url:
        start = time.monotonic()
        with pytest.raises(RewardError) as info:
            HTTPReward(url, timeout=timeout, retries=retries, backoff=0.0)(quantized_images(1), ["a"])
        elapsed = time.monotonic() - start
    assert 1.9 < elapsed < 3.0, elapsed  # (retries + 1) * timeout = 2 s; the answer needs ~20 s
    message = str(info.value)
    assert f"after {retries + 1} attempt(s) (timeout {timeout:g} s each)" in message
    assert f"TimeoutError: no complete answer within {timeout:g} s (the whole request)" in message


def test_secret_env_must_name_a_set_variable_and_is_not_shown(monkeypatch):
    monkeypatch.delenv("TREEGRPO_TEST_SECRET", raising=False)
    with pytest.raises(ValueError, match=r"secret_env='TREEGRPO_TEST_SECRET'.*not set: "
                                         r"export TREEGRPO_TEST_SECRET="):
        HTTPReward("http://127.0.0.1:1/", secret_env="TREEGRPO_TEST_SECRET")
    monkeypatch.setenv("TREEGRPO_TEST_SECRET", "short")
    with pytest.raises(ValueError, match="at least 16 printable ASCII characters"):
        HTTPReward("http://127.0.0.1:1/", secret_env="TREEGRPO_TEST_SECRET")
    monkeypatch.setenv("TREEGRPO_TEST_SECRET", "x" * 32)
    reward = HTTPReward("http://127.0.0.1:1/", secret_env="TREEGRPO_TEST_SECRET")
    assert reward.headers["X-Treegrpo-Secret"] == "x" * 32 and "x" * 32 not in repr(reward)


def test_images_of_different_sizes_are_refused_before_decoding():
    small, large = encode_png(quantized_images(1, size=8)), encode_png(quantized_images(1, size=16))
    with pytest.raises(ValueError, match=r"images\[1\] has size \(16, 16\), images\[0\] has \(8, 8\)"):
        decode_png(small + large)
    with pytest.raises(ValueError, match=r"images\[0\] must be a base64 string, got int"):
        decode_png([3])
