"""Serve any registered reward over HTTP, for ``HTTPReward`` (protocol: treegrpo/rewards/http.py).

    python tools/reward_server.py --reward JPEGCompressibility --port 8000 --cfg '{"quality": 95}'
    python tools/reward_server.py --reward BrightnessReward --custom-imports plugins.example_reward
    python tools/reward_server.py --reward HPSv2 --cfg '{"checkpoint": "/w/hps.pt", "device": "cuda"}' \
        --host 0.0.0.0 --port 8000     # reachable from other machines: mind your firewall

The training config then names ``reward = dict(type='HTTPReward', url='http://HOST:8000/')``.
Requests are scored one at a time (a lock around the reward), so a GPU model is never called
concurrently. ``GET`` on any path answers ``{"reward": "<repr>", "status": "ok"}`` (health check).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing (plugins/ importable too)
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from treegrpo.registry import REWARDS, build  # noqa: E402
from treegrpo.rewards.base import check_rewards  # noqa: E402
from treegrpo.rewards.http import decode_png  # noqa: E402
from treegrpo.utils import parse_json_object  # noqa: E402

MAX_BODY_BYTES = 1 << 30


class BadRequest(ValueError):
    """The request does not follow the protocol (answered with 400)."""


def parse_request(body: bytes) -> tuple[torch.Tensor, list[str]]:
    """Request body -> (images [L, 3, H, W] float32 in [0, 1], L prompts); BadRequest if malformed."""
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
    try:
        return decode_png(images), prompts
    except ValueError as err:
        raise BadRequest(str(err)) from None


class RewardHandler(BaseHTTPRequestHandler):
    """Scores POSTed batches with ``self.server.reward`` (set by :func:`make_server`)."""

    server_version = "treegrpo-reward-server"
    protocol_version = "HTTP/1.0"

    def send_json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.send_json(200, {"reward": repr(self.server.reward), "status": "ok"})

    def do_POST(self) -> None:  # noqa: N802
        try:
            length = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.send_json(411 if length < 0 else 413, {"error": "a Content-Length header "
                           f"between 0 and {MAX_BODY_BYTES} bytes is required"})
            return
        try:
            images, prompts = parse_request(self.rfile.read(length))
        except BadRequest as err:
            self.send_json(400, {"error": str(err)})
            return
        try:
            with self.server.lock, torch.no_grad():
                scores = self.server.reward(images, prompts)
                scores = check_rewards(scores, len(prompts), self.server.reward_name)
        except Exception as err:  # a failing reward is the server's fault: 500, client retries
            traceback.print_exc()
            self.send_json(500, {"error": f"{type(err).__name__}: {err}"})
            return
        self.send_json(200, {"scores": scores.tolist()})

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (base class signature)
        if not self.server.quiet:
            super().log_message(format, *args)


def make_server(reward, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False,
                handler: type[RewardHandler] = RewardHandler) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) scoring with ``reward`` (a built reward or a config
    dict). ``port=0`` picks a free port: read it from ``server.server_address[1]``."""
    reward = build(REWARDS, reward)
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.reward, server.lock, server.quiet = reward, threading.Lock(), quiet
    server.reward_name = getattr(reward, "name", type(reward).__name__)
    return server


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a registered reward for HTTPReward")
    parser.add_argument("--reward", required=True, help="registered REWARDS type, e.g. JPEGCompressibility")
    parser.add_argument("--cfg", default="{}", help="JSON object of the reward's arguments")
    parser.add_argument("--custom-imports", nargs="+", default=[],
                        help="modules to import first so their rewards register, e.g. plugins.example_reward")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    return parser.parse_args(argv)


def build_reward(name: str, cfg_json: str, custom_imports: list[str]):
    """Import ``custom_imports``, then build ``dict(type=name, **<cfg_json as a dict>)``."""
    for module in custom_imports:
        importlib.import_module(module)
    return build(REWARDS, dict(type=name, **parse_json_object(cfg_json, "--cfg")))


def main(argv=None) -> None:
    args = parse_args(argv)
    reward = build_reward(args.reward, args.cfg, args.custom_imports)
    server = make_server(reward, args.host, args.port, args.quiet)
    host, port = server.server_address[:2]
    print(f"serving {reward!r} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
