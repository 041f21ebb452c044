"""A minimal OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

It answers ``GET /v1/models`` (404 when ``list_models`` is False, as some servers do),
``POST /v1/embeddings`` with chat-style ``messages`` (vLLM's multimodal embeddings API; answered
by ``embeddings_policy``, default :func:`embeddings_reply`: a vector determined by the message
parts) and ``POST /v1/chat/completions`` (image parts as base64 data URLs are decoded, so a broken client
payload fails loudly; a model not in ``models`` gets 404, as vLLM answers). What it answers is decided by ``policy`` (default: a
fixed description), after a fixed ``latency``; a policy can add ``X-Stub-Delay`` (seconds more)
or ``X-Stub-Trickle`` (seconds between body bytes) to its headers. Not a model: it never looks at
pixels beyond checking they decode. ``capacity`` bounds the requests it works on at once (a real
server's batch): more wait their turn, so one server gives at most ``capacity / latency``
answers a second.

    with StubServer(latency=0.2) as server:
        backend = OpenAICompatibleBackend(model="stub", base_url=server.base_url)

:class:`StubProcess` runs one in a child process, as a real server runs: it has CPUs of its own
(benchmarks) and can be killed mid-run (tests of a fleet losing a server).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import multiprocessing
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import numpy as np
from PIL import Image

STUB_ANSWER = ("A soft cotton shirt in muted blue with a relaxed, casual style, suited to weekends "
               "and travel for people who like simple comfortable clothes.")

# (status, extra headers, body bytes or a JSON-able object, delay seconds before answering)
Reply = tuple[int, dict[str, str], Any]
Policy = Callable[[dict[str, Any], int], Reply]


def completion(content: Any, model: str = "stub") -> dict[str, Any]:
    return {"id": "stub", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}]}


def default_policy(payload: dict[str, Any], seen: int) -> Reply:
    return 200, {}, completion(STUB_ANSWER, payload.get("model", "stub"))


STUB_EMBEDDING_DIM = 8


def stub_embedding(payload: dict[str, Any], dim: int = STUB_EMBEDDING_DIM) -> list[float]:
    """A unit vector seeded by the sha256 of the message parts (texts and image data URLs): the
    same input always gets the same vector, different inputs different ones."""
    digest = hashlib.sha256()
    for part in payload["messages"][0]["content"]:
        digest.update(json.dumps(part, sort_keys=True).encode())
    vector = np.random.default_rng(int.from_bytes(digest.digest()[:8], "little")).standard_normal(dim)
    return (vector / np.linalg.norm(vector)).tolist()


def embeddings_reply(payload: dict[str, Any], seen: int) -> Reply:
    return 200, {}, {"object": "list", "model": payload.get("model", "stub"),
                     "data": [{"object": "embedding", "index": 0,
                               "embedding": stub_embedding(payload)}]}


def request_prompt(payload: dict[str, Any]) -> str:
    """The text part of the first user message."""
    for part in payload["messages"][0]["content"]:
        if part.get("type") == "text":
            return part["text"]
    return ""


class StubServer:
    """Serve in a background thread; ``requests`` counts completions by prompt text."""

    def __init__(self, latency: float = 0.0, policy: Policy = default_policy,
                 models: tuple[str, ...] = ("stub",), api_key: str | None = None,
                 list_models: bool = True, embeddings_policy: Policy = embeddings_reply,
                 capacity: int | None = None) -> None:
        self.latency = latency
        self.capacity = threading.BoundedSemaphore(capacity) if capacity else None
        self.policy = policy
        self.embeddings_policy = embeddings_policy
        self.models = models
        self.list_models = list_models
        self.api_key = api_key
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "StubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a burst of new connections (hundreds in flight, or
    # reconnects after timeouts) would have SYNs dropped and retried a second later.
    request_queue_size = 1024


def _make_handler(stub: StubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
        wbufsize = -1  # headers and body in one write: no Nagle / delayed-ACK stall per reply

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None,
                  trickle: float = 0.0) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if not trickle:
                self.wfile.write(data)
                return
            self.wfile.flush()
            for index in range(len(data)):  # one byte at a time: every read is "on time"
                self.wfile.write(data[index:index + 1])
                self.wfile.flush()
                time.sleep(trickle)

        def _authorised(self) -> bool:
            if stub.api_key and self.headers.get("Authorization") != f"Bearer {stub.api_key}":
                self._send(401, {"error": {"message": "invalid api key"}})
                return False
            return True

        def do_GET(self) -> None:
            if not self._authorised():
                return
            if self.path.rstrip("/").endswith("/models") and stub.list_models:
                self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in stub.models]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if not self._authorised():
                return
            embeddings = self.path.endswith("/embeddings")
            if not embeddings and not self.path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": "not found"}})
                return
            payload = json.loads(body)
            for part in payload["messages"][0]["content"]:
                if part.get("type") == "image_url":
                    header, encoded = part["image_url"]["url"].split(",", 1)
                    assert header.startswith("data:image/")
                    Image.open(io.BytesIO(base64.b64decode(encoded))).verify()
            if payload.get("model") not in stub.models:
                self._send(404, {"error": {"message": f"The model `{payload.get('model')}` does not exist."}})
                return
            prompt = request_prompt(payload)
            with stub.lock:
                stub.requests[prompt] += 1
                seen = stub.requests[prompt]
            policy = stub.embeddings_policy if embeddings else stub.policy
            status, headers, reply = policy(payload, seen)
            headers = dict(headers or {})
            delay = float(headers.pop("X-Stub-Delay", 0) or 0)
            trickle = float(headers.pop("X-Stub-Trickle", 0) or 0)
            if stub.capacity is None:
                time.sleep(stub.latency + delay)
            else:
                with stub.capacity:  # a busy server: requests beyond its capacity wait their turn
                    time.sleep(stub.latency + delay)
            try:
                self._send(status, reply, headers, trickle)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass

    return Handler


class StubProcess:
    """A :class:`StubServer` in a child process (``spawn``: nothing of the parent's threads is
    copied). ``policy`` must be importable (a module-level function). ``received()`` counts the
    requests (chat completions and embeddings) it has received, ``cpu_seconds()`` its CPU time
    so far, ``kill()`` is SIGKILL."""

    def __init__(self, latency: float = 0.0, capacity: int | None = None,
                 policy: Policy = default_policy, models: tuple[str, ...] = ("stub",)) -> None:
        context = multiprocessing.get_context("spawn")
        self._control, child_end = context.Pipe()
        self._process = context.Process(target=_serve, args=(child_end, latency, capacity, policy, models),
                                        daemon=True)
        self.base_url = ""

    def __enter__(self) -> "StubProcess":
        self._process.start()
        self.base_url = self._control.recv()
        return self

    def _ask(self, question: str) -> float:
        self._control.send(question)
        return self._control.recv()

    def received(self) -> int:
        return int(self._ask("received"))

    def cpu_seconds(self) -> float:
        return self._ask("cpu")

    def kill(self) -> None:
        self._process.kill()
        self._process.join(timeout=10)

    def __exit__(self, *exc: object) -> None:
        if self._process.is_alive():
            try:
                self._control.send("stop")
            except OSError:
                pass
            self._process.join(timeout=10)
        if self._process.is_alive():
            self.kill()


def _serve(control: Any, latency: float, capacity: int | None, policy: Policy,
           models: tuple[str, ...]) -> None:
    with StubServer(latency=latency, capacity=capacity, policy=policy, models=models) as server:
        control.send(server.base_url)
        while True:
            question = control.recv()
            if question == "received":
                with server.lock:
                    control.send(sum(server.requests.values()))
            elif question == "cpu":
                control.send(time.process_time())
            else:
                return
