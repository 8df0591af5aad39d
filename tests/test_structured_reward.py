"""StructuredReward (GenEval-style checks): relations and checks by hand, HTTPDetector against a
local fake server (good, malformed, huge, slow, wrong status, secret), ToyDetector on rendered
toy images and one training run on a jsonl of specs."""
import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from tools.train import main as train_main
from treegrpo.registry import REWARDS, build
from treegrpo.rewards.base import RewardError
from treegrpo.rewards.http import SECRET_HEADER, decode_png
from treegrpo.rewards.structured import (StructuredReward, box_relations, check_spec, spec_score,
                                         validate_detections, validate_spec)
from treegrpo.rewards.structured_detectors import HTTPDetector, ToyDetector
from treegrpo.toy.prompts import ShapeSpec
from treegrpo.toy.render import render_specs

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def fake_server(answer):
    """A local HTTP server whose POST handler calls ``answer(request_json, headers)`` ->
    (status, body bytes) (or sleeps); yields (url, list of received (json, headers))."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((data, dict(self.headers)))
            status, body = answer(data, self.headers)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up (timeout tests)
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", received
    finally:
        server.shutdown()
        server.server_close()


def det(label, score, box, color=None):
    return {"label": label, "score": score, "box": box, "color": color}


def test_box_relations_by_hand():
    a = [0, 0, 10, 10]
    assert box_relations(a, [30, 0, 40, 10]) == {"left of"}  # offset -30, shrunk by 2 -> -28/30
    assert box_relations([30, 0, 40, 10], a) == {"right of"}
    assert box_relations(a, [1, 0, 11, 10]) == set()  # offset 1 within the margin 0.1 * 20
    assert box_relations([-5, -5, 5, 5], [15, 15, 25, 25]) == {"left of", "above"}  # -18/28.28 each
    assert box_relations(a, [30, 8, 40, 18]) == {"left of"}  # (-28, -6) / 31.05: dy -0.19
    assert box_relations(a, [0, 30, 10, 40]) == {"above"}
    assert box_relations(a, [3, 0, 13, 10], margin=0.0) == {"left of"}
    assert box_relations(a, [3, 0, 13, 10], margin=0.1) == set()


SPEC = {"tag": "counting",
        "include": [{"class": "dog", "count": 2, "color": "red"},
                    {"class": "cat", "count": 1, "position": ["right of", 0]}],
        "exclude": [{"class": "dog", "count": 3}]}
DETS = [det("dog", 0.9, [0, 0, 10, 10], "red"), det("dog", 0.8, [0, 20, 10, 30], "blue"),
        det("dog", 0.1, [0, 40, 10, 50], "red"),  # under the score threshold: ignored
        det("cat", 0.95, [50, 0, 60, 10])]


def test_check_spec_by_hand():
    results = check_spec(validate_spec(SPEC), validate_detections(DETS))
    assert results == [("include[0] 2 x dog", True), ("include[0] color red", False),
                       ("include[1] 1 x cat", True), ("include[1] right of include[0]", True),
                       ("exclude[0] fewer than 3 x dog", True)]
    assert spec_score(results, "fraction") == 0.8 and spec_score(results, "strict") == 0.0
    # threshold 0.05 keeps the third dog: the exclude check fails, the red count passes
    low = dict(check_spec(SPEC, DETS, score_threshold=0.05))
    assert low["exclude[0] fewer than 3 x dog"] is False and low["include[0] color red"] is True
    # the top-level form: include[0] left of include[1]; a missing object fails its position
    two = {"tag": "position", "include": [{"class": "dog"}, {"class": "cat"}], "position": ["left of", 0, 1]}
    assert check_spec(two, DETS[:1] + DETS[3:])[-1] == ("include[0] left of include[1]", True)
    assert check_spec(two, DETS[:1])[-1] == ("include[0] left of include[1]", False)


@pytest.mark.parametrize("spec, message", [
    ({"tag": "nope", "include": []}, r"\['tag'\] must be one of \['single_object'"),
    ({"tag": "counting", "include": []}, r"\['include'\] must be a list of 1 to 32"),
    ({"tag": "counting", "include": [{"count": 2}]}, r"\['include'\]\[0\] must be an object with a non-empty string 'class'"),
    ({"tag": "counting", "include": [{"class": "a", "count": 0}]}, r"\['count'\] must be an integer in \[1, 256\]"),
    ({"tag": "position", "include": [{"class": "a", "position": ["near", 0]}]}, r"\['position'\] must be \[relation, j\]"),
    ({"tag": "position", "include": [{"class": "a"}], "position": ["above", 0, 1]}, r"must be \[relation, k, j\]"),
    ({"tag": "counting", "include": [{"class": "a"}], "exclude": [{"class": "b", "position": ["above", 0]}]}, "may not have a 'position'"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        validate_spec(spec)


@pytest.mark.parametrize("dets, message", [
    ({"label": "a"}, "must be a list of at most 256"),
    ([det("a", 1.5, [0, 0, 1, 1])], r"\[0\]\['score'\] must be a number in \[0, 1\]"),
    ([det("a", 0.5, [0, 0, 1])], r"\['box'\] must be \[x0, y0, x1, y1\]"),
    ([det("a", 0.5, [2, 0, 1, 1])], r"x0 <= x1"),
    ([det("", 0.5, [0, 0, 1, 1])], r"\['label'\] must be a string"),
    ([det("a", 0.5, [0, 0, 1, 1], color=3)], r"\['color'\] must be a string or null"),
    ([det("a", 0.5, [0, 0, 1, 1])] * 257, "at most 256"),
])
def test_bad_detections(dets, message):
    with pytest.raises(ValueError, match=message):
        validate_detections(dets)


def test_structured_reward_modes_and_errors():
    detector = lambda images: [DETS for _ in range(images.shape[0])]  # noqa: E731
    images = torch.rand(2, 3, 8, 8)
    meta = [SPEC, {"tag": "single_object", "include": [{"class": "cat"}]}]
    assert StructuredReward(detector)(images, ["a", "b"], metadata=meta).tolist() == pytest.approx([0.8, 1.0])
    strict = StructuredReward(detector, mode="strict", spec_key="geneval")
    assert strict(images, ["a", "b"], metadata=[{"geneval": m} for m in meta]).tolist() == [0.0, 1.0]
    assert strict.log_values() == {"reward/structured_all_pass": 0.5}
    with pytest.raises(ValueError, match="needs metadata"):
        strict(images, ["a", "b"])
    with pytest.raises(ValueError, match=r"metadata\[0\]\['geneval'\] must be an object"):
        strict(images, ["a", "b"], metadata=meta)
    with pytest.raises(ValueError, match=r"mode must be one of \['fraction', 'strict'\]"):
        StructuredReward(detector, mode="all")
    with pytest.raises(KeyError, match="unknown detector type 'Yolo'"):
        StructuredReward(dict(type="Yolo"))
    with pytest.raises(ValueError, match="must return 2 lists of detections"):
        StructuredReward(lambda images: [[]])(images, ["a", "b"], metadata=meta)


# ------------------------------------------------------------------ HTTPDetector
def answer_json(payload, status=200):
    return lambda data, headers: (status, json.dumps(payload).encode())


def test_http_detector_posts_pngs_and_validates_the_answer(monkeypatch):
    images = torch.rand(3, 3, 8, 8)
    good = {"detections": [[det("dog", 0.9, [0, 0, 4, 4], "red")], [], [det("cat", 0.5, [1, 1, 2, 2])]]}
    with fake_server(lambda data, headers: (200, json.dumps(
            {"detections": good["detections"][:len(data["images"])]}).encode())) as (url, received):
        monkeypatch.setenv("DET_SECRET", "s" * 20)
        detector = build(REWARDS, dict(type="StructuredReward", detector=dict(
            type="HTTPDetector", url=url, timeout=5, secret_env="DET_SECRET"))).detector
        assert detector(images) == good["detections"]
        assert decode_png(received[0][0]["images"]).shape == (3, 3, 8, 8)
        assert received[0][1][SECRET_HEADER] == "s" * 20
        assert len(HTTPDetector(url, timeout=5, batch_size=2)(images)) == 3 and len(received) == 3


@pytest.mark.parametrize("answer, message", [
    (lambda d, h: (200, b"not json"), "not JSON"),
    (answer_json({"boxes": []}), r'must answer \{"detections": \[...\]\} with 2 lists'),
    (answer_json({"detections": [[], [{"label": "a", "score": 2, "box": [0, 0, 1, 1]}]]}),
     r"detections\[1\]\[0\]\['score'\] must be a number"),
    (answer_json({"error": "model not loaded"}, status=503), "HTTP 503.*model not loaded"),
    (lambda d, h: (200, b'{"detections": [' + b" " * 3000 + b"]}"), "more than 2000 bytes"),
    (lambda d, h: (200, b'{"detections": [[], [{"label": "a", "score": NaN, "box": [0,0,1,1]}]]}'), "not JSON"),
])
def test_http_detector_refuses_bad_answers(answer, message):
    with fake_server(answer) as (url, _):
        with pytest.raises(RewardError, match=message):
            HTTPDetector(url, timeout=5, max_answer_bytes=2000)(torch.rand(2, 3, 8, 8))


def test_http_detector_times_out_on_a_slow_server():
    def slow(data, headers):
        time.sleep(1.5)
        return 200, b'{"detections": [[]]}'
    with fake_server(slow) as (url, _):
        start = time.monotonic()
        with pytest.raises(RewardError, match=r"TimeoutError.*timeout 0.3 s"):
            HTTPDetector(url, timeout=0.3)(torch.rand(1, 3, 8, 8))
        assert time.monotonic() - start < 1.2


def test_http_detector_arguments(monkeypatch):
    with pytest.raises(ValueError, match="HTTPDetector url must start with"):
        HTTPDetector("localhost:1")
    with pytest.raises(ValueError, match="HTTPDetector max_answer_bytes must be an integer"):
        HTTPDetector("http://x", max_answer_bytes=0)
    monkeypatch.delenv("NO_SUCH_SECRET", raising=False)
    with pytest.raises(ValueError, match="'NO_SUCH_SECRET', which is not set"):
        HTTPDetector("http://x", secret_env="NO_SUCH_SECRET")


# ------------------------------------------------------------------ toy backend
TOY = [ShapeSpec("circle", "red", "blue", "large", "left"), ShapeSpec("square", "yellow", "purple", "large", "right"),
       ShapeSpec("triangle", "green", "white", "small", "top")]


def test_toy_detector_reads_rendered_toy_images():
    images = render_specs(TOY, size=32)
    found = ToyDetector()(images)
    assert [[d["label"], d["color"]] for (d,) in found] == [["circle", "red"], ["square", "yellow"], ["triangle", "green"]]
    assert all(d["score"] > 0.5 for (d,) in found)
    # boxes: left shape's centre at 0.26 * 32, radius 0.20 * 32; the small top one 0.11 * 32
    assert found[0][0]["box"] == pytest.approx([(0.26 - 0.2) * 32, (0.5 - 0.2) * 32, (0.26 + 0.2) * 32, (0.5 + 0.2) * 32])
    assert found[2][0]["box"] == pytest.approx([(0.5 - 0.11) * 32, (0.26 - 0.11) * 32, (0.5 + 0.11) * 32, (0.26 + 0.11) * 32])
    reward = StructuredReward(dict(type="ToyDetector"))
    meta = [{"tag": "colors", "include": [{"class": "circle", "color": "red"}]},
            {"tag": "colors", "include": [{"class": "square", "color": "red"}]},  # right shape, wrong colour
            {"tag": "single_object", "include": [{"class": "circle"}], "exclude": [{"class": "triangle"}]}]
    assert reward(images, ["a", "b", "c"], metadata=meta).tolist() == pytest.approx([1.0, 0.5, 0.0])


def test_toy_run_with_the_structured_reward_trains(tmp_path):
    rows = [{"prompt": "a red circle on a blue background", "tag": "colors",
             "include": [{"class": "circle", "count": 1, "color": "red"}]},
            {"prompt": "a large yellow square on a purple background", "tag": "single_object",
             "include": [{"class": "square"}], "exclude": [{"class": "circle"}]}]
    path = tmp_path / "specs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "toy_structured.py"
    config.write_text(
        f"_base_ = [{str(ROOT / 'configs' / 'treegrpo_toy_shapes.py')!r}]\n"
        f"train_dataset = dict(_delete_=True, type='PromptFile', path={str(path)!r})\n"
        "reward = dict(_delete_=True, type='StructuredReward', detector=dict(type='ToyDetector'))\n"
        "max_iters = 2\nprompts_per_iter = 2\nsampler = dict(num_steps=6)\n"
        "hooks = [dict(type='LoggerHook', interval=1)]\n")
    runner = train_main([str(config), "--work-dir", str(tmp_path / "run")])
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if "reward/mean" in r]
    assert runner.iteration == 2 and len(train) == 2 and isinstance(runner.reward, StructuredReward)
    for record in train:
        assert 0.0 <= record["reward/mean"] <= 1.0 and "reward/structured_all_pass" in record
        assert torch.isfinite(torch.tensor(record["losses/loss"]))
