"""Serve any registered reward over HTTP, for ``HTTPReward`` (protocol: treegrpo/rewards/http.py).

    python tools/reward_server.py --reward JPEGCompressibility --port 8000 --cfg '{"quality": 95}'
    python tools/reward_server.py --reward BrightnessReward --custom-imports plugins.example_reward
    export TREEGRPO_REWARD_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    python tools/reward_server.py --reward HPSv2 --cfg '{"checkpoint": "/w/hps.pt", "device": "cuda"}' \
        --host 0.0.0.0 --port 8000     # reachable from other machines: needs the secret (or --insecure)

The training config then names ``reward = dict(type='HTTPReward', url='http://HOST:8000/')``
(plus ``secret_env='TREEGRPO_REWARD_SECRET'`` when the server has a secret). Requests are scored
one at a time (a lock around the reward); ``GET`` answers ``{"reward": "<repr>", "status": "ok"}``.
A request's optional ``metadata`` (one JSON object per image, 64 KiB each) goes to rewards that accept it.

Limits (each refusal is a 4xx JSON error naming the flag that raises it): ``--max-body-mb``,
``--max-images`` per request, ``--max-pixels`` decoded per request (checked from the PNG headers
before any pixel is decoded), ``--request-timeout`` to send a whole request, ``--workers``
requests handled at once by a fixed pool of threads, ``--queue`` connections waiting for one
(one more is answered 503 at once, which clients retry).
Peak memory is about ``workers * max_pixels * 20`` bytes on top of the reward model.
"""
from __future__ import annotations

import argparse
import hmac
import importlib
import io
import ipaddress
import json
import os
import queue
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing (plugins/ importable too)
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from treegrpo.registry import REWARDS, build  # noqa: E402
from treegrpo.rewards.base import check_rewards, metadata_caller  # noqa: E402
from treegrpo.rewards.http import SECRET_HEADER, read_secret  # noqa: E402
from treegrpo.rewards.http_request import BadRequest, Limits, OverLimit, parse_request  # noqa: E402,F401
from treegrpo.utils import parse_json_object  # noqa: E402

SECRET_ENV = "TREEGRPO_REWARD_SECRET"
CHUNK_BYTES = 1 << 16


class DeadlineReader(io.RawIOBase):
    """Reads a socket until a fixed deadline: each read waits at most the time left, so a
    client sending one byte at a time cannot hold a worker past the deadline (TimeoutError)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.sock, self.deadline = sock, deadline

    def readable(self) -> bool:  # noqa: D102
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the client did not send its whole request in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class RewardHandler(BaseHTTPRequestHandler):
    """Scores POSTed batches with ``self.server.reward`` (set by :func:`make_server`)."""

    server_version = "treegrpo-reward-server"
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced by one that honours the whole-request deadline
        deadline = time.monotonic() + self.server.limits.request_timeout
        self.rfile = io.BufferedReader(DeadlineReader(self.connection, deadline))

    def send_json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.connection.settimeout(self.server.limits.request_timeout)  # bounds the whole send
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` without keeping the body, then read and drop the body the client
        still sends (up to its Content-Length, until the deadline) so that it receives the
        answer instead of a connection reset."""
        self.send_json(status, {"error": message})
        try:
            left = int(self.headers.get("Content-Length", "0"))
            while left > 0:
                chunk = self.rfile.read1(min(left, CHUNK_BYTES))
                if not chunk:
                    break
                left -= len(chunk)
        except (ValueError, OSError):  # bad length, timeout, reset: the answer was sent
            pass

    def authorized(self) -> bool:
        """True when the server has no secret or the request carries it; else answers 401/403."""
        secret = self.server.secret
        if secret is None:
            return True
        given = self.headers.get(SECRET_HEADER)
        if given is None:
            self.refuse(401, f"this server needs its shared secret in the {SECRET_HEADER} header "
                             f"(HTTPReward: secret_env='NAME' of a variable holding it)")
            return False
        if not hmac.compare_digest(given.encode("latin-1"), secret.encode("ascii")):
            self.refuse(403, f"wrong shared secret in the {SECRET_HEADER} header")
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        if self.authorized():
            self.send_json(200, {"reward": repr(self.server.reward), "status": "ok"})

    def do_POST(self) -> None:  # noqa: N802
        if not self.authorized():
            return
        limits = self.server.limits
        try:
            length = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            length = -1
        if length < 0:
            self.send_json(411, {"error": "a Content-Length header is required"})
            return
        if length > limits.max_body_bytes:
            self.refuse(413, f"the body is {length} bytes, over the server's limit of "
                             f"{limits.max_body_bytes} bytes (--max-body-mb); send fewer images "
                             f"per request (HTTPReward batch_size) or raise --max-body-mb")
            return
        try:
            body = self.rfile.read(length)
            if len(body) < length:  # the client closed the connection: nobody to answer
                return
            images, prompts, metadata = parse_request(body, limits)
        except OverLimit as err:
            self.send_json(413, {"error": f"{err}; send fewer or smaller images per request "
                                          f"(HTTPReward batch_size) or raise that flag"})
            return
        except BadRequest as err:
            self.send_json(400, {"error": str(err)})
            return
        try:
            with self.server.lock, torch.no_grad():
                scores = self.server.call_reward(images, prompts, metadata)
                scores = check_rewards(scores, len(prompts), self.server.reward_name)
        except Exception as err:  # a failing reward is the server's fault: 500, client retries
            traceback.print_exc()
            self.send_json(500, {"error": f"{type(err).__name__}: {err}"})
            return
        self.send_json(200, {"scores": scores.tolist()})

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (base class signature)
        if not self.server.quiet:
            super().log_message(format, *args)


class PooledHTTPServer(HTTPServer):
    """An HTTP server with a fixed pool of ``workers`` handler threads fed by a queue of at most
    ``queue_size`` accepted connections; a connection arriving when the queue is full is
    answered 503 by the accepting thread and closed (no thread, no wait)."""

    def __init__(self, address, handler, workers: int, queue_size: int) -> None:
        super().__init__(address, handler)  # binds first: a failed bind starts no thread
        self.workers = workers
        self.waiting: queue.Queue = queue.Queue(maxsize=queue_size)
        self.pool = [threading.Thread(target=self.work, name=f"reward-worker-{index}", daemon=True)
                     for index in range(workers)]
        for thread in self.pool:
            thread.start()

    def process_request(self, request, client_address) -> None:
        try:
            self.waiting.put_nowait((request, client_address))
        except queue.Full:
            self.answer_busy(request)

    def work(self) -> None:
        """A pool thread: handle queued connections until a None arrives."""
        while (item := self.waiting.get()) is not None:
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def server_close(self) -> None:
        """Close the listening socket and the queued connections; stop the pool threads."""
        super().server_close()
        while True:
            try:
                request, _ = self.waiting.get_nowait()
            except queue.Empty:
                break
            self.shutdown_request(request)
        for _ in self.pool:
            self.waiting.put(None)

    def answer_busy(self, request) -> None:
        data = json.dumps({"error": f"the server is busy ({self.workers} requests in progress "
                                    f"(--workers), {self.waiting.maxsize} waiting (--queue)); "
                                    f"retry later"}).encode("utf-8")
        head = ("HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nRetry-After: 1\r\n\r\n").encode("ascii")
        try:
            request.setblocking(False)  # never wait on a client here: this thread accepts
            request.send(head + data)
        except OSError:
            pass
        self.shutdown_request(request)


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or a name) only ever means this machine."""
    if not host:
        return False  # '' binds every interface
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_exposure(host: str, secret: str | None, insecure: bool) -> None:
    """Refuse to serve other machines without a shared secret unless ``insecure``."""
    if secret is None and not insecure and not is_loopback(host):
        raise ValueError(
            f"refusing to serve on {host!r} (reachable from other machines) without a shared "
            f"secret: export {SECRET_ENV}=$(python -c 'import secrets; "
            f"print(secrets.token_urlsafe(32))') before starting the server and give the "
            f"clients secret_env='{SECRET_ENV}' (HTTPReward); or pass --insecure to serve anyone "
            f"who can reach the port"
        )


def make_server(reward, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False,
                handler: type[RewardHandler] = RewardHandler, limits: Limits = Limits(),
                secret: str | None = None, insecure: bool = False) -> PooledHTTPServer:
    """An HTTP server (not yet serving) scoring with ``reward`` (a built reward or a config
    dict). ``port=0`` picks a free port: read it from ``server.server_address[1]``. A host
    other than loopback needs ``secret`` (checked on every request) or ``insecure=True``."""
    check_exposure(host, secret, insecure)
    reward = build(REWARDS, reward)
    server = PooledHTTPServer((host, port), handler, limits.workers, limits.queue)
    server.reward, server.lock, server.quiet = reward, threading.Lock(), quiet
    server.call_reward = metadata_caller(reward)  # the request's metadata, if the reward takes it
    server.limits, server.secret = limits, secret
    server.reward_name = getattr(reward, "name", type(reward).__name__)
    return server


def positive(kind):
    """argparse type: a ``kind`` number > 0."""
    def parse(text: str):
        if not kind(text) > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return kind(text)
    return parse


def server_secret(env_name: str) -> str | None:
    """The shared secret held by ``env_name``; None when that is the default variable and it is
    unset (no secret). A variable named with --secret-env must be set."""
    if env_name == SECRET_ENV and not os.environ.get(env_name):
        return None
    return read_secret(env_name, f"--secret-env {env_name}")


def parse_args(argv=None) -> argparse.Namespace:
    defaults = Limits()
    parser = argparse.ArgumentParser(description="Serve a registered reward for HTTPReward")
    parser.add_argument("--reward", required=True, help="registered REWARDS type, e.g. JPEGCompressibility")
    parser.add_argument("--cfg", default="{}", help="JSON object of the reward's arguments")
    parser.add_argument("--custom-imports", nargs="+", default=[],
                        help="modules to import first so their rewards register, e.g. plugins.example_reward")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: all, "
                             "needs a secret or --insecure)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--secret-env", default=SECRET_ENV,
                        help=f"environment variable holding the shared secret every request must "
                             f"carry in {SECRET_HEADER} (default {SECRET_ENV}; unset: no secret)")
    parser.add_argument("--insecure", action="store_true",
                        help="serve a non-loopback --host without a secret")
    parser.add_argument("--max-body-mb", type=positive(float), default=defaults.max_body_bytes / 2**20)
    parser.add_argument("--max-images", type=positive(int), default=defaults.max_images,
                        help="images per request")
    parser.add_argument("--max-pixels", type=positive(int), default=defaults.max_pixels,
                        help="decoded pixels per request, all images together")
    parser.add_argument("--request-timeout", type=positive(float), default=defaults.request_timeout,
                        help="seconds a client has to send its whole request")
    parser.add_argument("--workers", type=positive(int), default=defaults.workers,
                        help="requests handled at once")
    parser.add_argument("--queue", type=positive(int), default=defaults.queue,
                        help="connections waiting for a worker (more are answered 503)")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    return parser.parse_args(argv)


def build_reward(name: str, cfg_json: str, custom_imports: list[str]):
    """Import ``custom_imports``, then build ``dict(type=name, **<cfg_json as a dict>)``."""
    for module in custom_imports:
        importlib.import_module(module)
    return build(REWARDS, dict(type=name, **parse_json_object(cfg_json, "--cfg")))


def main(argv=None) -> None:
    args = parse_args(argv)
    limits = Limits(int(args.max_body_mb * 2**20), args.max_images, args.max_pixels,
                    args.request_timeout, args.workers, args.queue)
    try:
        secret = server_secret(args.secret_env)
        check_exposure(args.host, secret, args.insecure)  # before loading a reward model
    except ValueError as err:
        raise SystemExit(f"reward_server: {err}") from None
    reward = build_reward(args.reward, args.cfg, args.custom_imports)
    server = make_server(reward, args.host, args.port, args.quiet, limits=limits, secret=secret,
                         insecure=args.insecure)
    host, port = server.server_address[:2]
    guard = "with a shared secret" if secret else "without a secret"
    print(f"serving {reward!r} on http://{host}:{port}/ {guard} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
