"""tools/reward_server.py under attack, against a real server on 127.0.0.1 (ephemeral port):
pixel bombs, oversized bodies, half-sent and dripping requests, more clients than workers,
missing or wrong shared secrets, and binding every interface without a secret."""
import base64
import io
import json
import socket
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest
import torch
from PIL import Image

from tools.reward_server import Limits, is_loopback, main, make_server
from treegrpo.rewards.base import RewardError
from treegrpo.rewards.http import HTTPReward, ImageLimitError, decode_png, encode_png

SECRET = "s3cret-" + "x" * 25


@contextmanager
def serving(limits=Limits(), secret=None):
    """Run a JPEGCompressibility server in a thread; yields (url, port)."""
    server = make_server(dict(type="JPEGCompressibility"), "127.0.0.1", 0, quiet=True,
                         limits=limits, secret=secret)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        yield f"http://127.0.0.1:{port}/", port
    finally:
        server.shutdown()
        server.server_close()


def bomb_png(size=8000) -> bytes:
    """A ~8 kB PNG that decodes to size x size pixels (192 MB as RGB for 8000)."""
    buffer = io.BytesIO()
    Image.new("1", (size, size)).save(buffer, format="PNG")
    return buffer.getvalue()


def post(url, payload, headers=None, timeout=5.0):
    """POST JSON -> (status, decoded JSON answer)."""
    body = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def images_payload(count, size):
    images = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0))
    return {"prompts": ["p"] * count, "images": encode_png(images)}


def seconds_until_closed(sock, limit=5.0) -> float:
    """Seconds until the server closes ``sock`` (reads and drops anything it sends)."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def test_a_pixel_bomb_is_refused_before_decoding():
    payload = {"prompts": ["a"], "images": [base64.b64encode(bomb_png()).decode()]}
    with serving() as (url, _):
        tracemalloc.start()
        try:
            status, answer = post(url, payload)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert status == 413
    assert "images[0] is 8000x8000" in answer["error"] and "--max-pixels" in answer["error"]
    assert peak < 32 * 2**20  # decoding would allocate 192 MB of RGB pixels (traced by numpy)


def test_decode_checks_the_header_size_before_the_pixels():
    header_only = base64.b64encode(bomb_png()[:80]).decode()  # IHDR, then a cut-off IDAT
    with pytest.raises(ImageLimitError, match=r"images\[0\] is 8000x8000.*over the limit of 1000"):
        decode_png([header_only], max_pixels=1000)  # decoding first would fail on the cut data
    with pytest.raises(ValueError, match=r"images\[0\] is not a base64-encoded PNG"):
        decode_png([header_only])
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")
    with pytest.raises(ValueError, match=r"images\[0\] is not a base64-encoded PNG"):
        decode_png([base64.b64encode(jpeg.getvalue()).decode()])  # PNG only: no other decoder


def test_pixels_of_all_images_and_the_number_of_images_are_capped():
    with serving(Limits(max_pixels=10_000, max_images=3)) as (url, _):
        status, answer = post(url, images_payload(3, 64))  # 3 x 4096 pixels
        assert status == 413 and "3 image(s) of that size decode to 12288 pixels" in answer["error"]
        assert "--max-pixels" in answer["error"] and "batch_size" in answer["error"]
        status, answer = post(url, images_payload(4, 8))
        assert status == 413 and "4 images, over the server's limit of 3" in answer["error"]
        assert "--max-images" in answer["error"]
        assert post(url, images_payload(2, 64))[0] == 200


def test_a_body_over_the_cap_is_refused_and_the_client_reads_why():
    with serving(Limits(max_body_bytes=2000)) as (url, port):
        with pytest.raises(RewardError, match=r"HTTP 413.*over the server's limit of 2000 bytes "
                                              r"\(--max-body-mb\).*not retried"):
            HTTPReward(url, timeout=5.0, retries=2, backoff=0.0)(torch.rand(5, 3, 32, 32), list("abcde"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # claims 10 GB
            sock.sendall(b"POST / HTTP/1.0\r\nContent-Length: 10000000000\r\n\r\n{")
            sock.shutdown(socket.SHUT_WR)
            assert sock.makefile("rb").readline().startswith(b"HTTP/1.0 413")


def test_half_sent_and_dripping_requests_are_dropped_after_the_timeout():
    with serving(Limits(request_timeout=0.5)) as (url, port):
        with socket.create_connection(("127.0.0.1", port)) as sock:  # body stops after 10 bytes
            sock.sendall(b"POST / HTTP/1.0\r\nContent-Length: 1000\r\n\r\n0123456789")
            assert seconds_until_closed(sock) < 1.5
        with socket.create_connection(("127.0.0.1", port)) as sock:  # a header byte every 0.1 s
            sock.sendall(b"POST / HTTP/1.0\r\n")
            start = time.monotonic()
            with pytest.raises(OSError):
                for _ in range(50):  # 5 s if never dropped
                    sock.sendall(b"X")
                    time.sleep(0.1)
            assert time.monotonic() - start < 1.5
        assert get(url)[0] == 200  # the server still answers others


def test_more_clients_than_workers_wait_in_a_bounded_queue_then_get_503_and_no_thread():
    with serving(Limits(workers=2, queue=2, request_timeout=3.0)) as (url, port):
        threads_before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]  # send nothing
        time.sleep(0.2)  # both taken by the two workers
        queued = [socket.create_connection(("127.0.0.1", port), timeout=3) for _ in range(2)]
        for sock in queued:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        time.sleep(0.2)
        extra = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(6)]
        try:
            for sock in extra:
                answer = sock.makefile("rb").read()
                assert answer.startswith(b"HTTP/1.0 503") and b"(--workers)" in answer
            assert threading.active_count() == threads_before  # no thread per connection
            for sock in idle:
                sock.close()  # frees the workers: the queued requests are answered
            for sock in queued:
                assert sock.makefile("rb").readline().startswith(b"HTTP/1.0 200")
        finally:
            for sock in idle + queued + extra:
                sock.close()
        assert get(url)[0] == 200


def test_the_shared_secret_is_checked_on_every_request(monkeypatch):
    monkeypatch.setenv("TREEGRPO_TEST_SECRET", SECRET)
    images = torch.rand(2, 3, 8, 8)
    with serving(secret=SECRET) as (url, _):
        assert get(url)[0] == 401
        assert get(url, {"X-Treegrpo-Secret": "wrong"})[0] == 403
        assert get(url, {"X-Treegrpo-Secret": SECRET})[0] == 200
        status, answer = post(url, images_payload(2, 8))
        assert status == 401 and "X-Treegrpo-Secret" in answer["error"]
        scores = HTTPReward(url, timeout=5.0, secret_env="TREEGRPO_TEST_SECRET")(images, ["a", "b"])
        assert scores.shape == (2,)
        with pytest.raises(RewardError, match=r"HTTP 403.*wrong shared secret.*not retried"):
            HTTPReward(url, timeout=5.0, headers={"X-Treegrpo-Secret": "y" * 32})(images, ["a", "b"])


def test_binding_every_interface_needs_a_secret_or_insecure(monkeypatch, capsys):
    monkeypatch.delenv("TREEGRPO_REWARD_SECRET", raising=False)
    with pytest.raises(ValueError, match=r"refusing to serve on '0.0.0.0'.*TREEGRPO_REWARD_SECRET"
                                         r".*secret_env='TREEGRPO_REWARD_SECRET'.*--insecure"):
        make_server(dict(type="JPEGCompressibility"), "0.0.0.0", 0)
    with pytest.raises(SystemExit, match="reward_server: refusing to serve on '0.0.0.0'"):
        main(["--reward", "JPEGCompressibility", "--host", "0.0.0.0", "--port", "0"])
    with pytest.raises(SystemExit, match=r"--secret-env MY_SECRET.*'MY_SECRET', which is not set"):
        main(["--reward", "JPEGCompressibility", "--secret-env", "MY_SECRET", "--port", "0"])
    assert [is_loopback(h) for h in ["127.0.0.1", "::1", "localhost", "0.0.0.0", "", "10.0.0.5"]] == [
        True, True, True, False, False, False]


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="Limits.workers must be a number > 0, got 0"):
        Limits(workers=0)
    with pytest.raises(SystemExit):
        main(["--reward", "JPEGCompressibility", "--max-images", "0"])
