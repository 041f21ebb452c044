"""A minimal OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

It answers ``GET /v1/models`` (404 when ``list_models`` is False, as some servers do) and
``POST /v1/chat/completions`` (image parts as base64 data URLs are decoded, so a broken client
payload fails loudly; a model not in ``models`` gets 404, as vLLM answers). What it answers is
decided by ``policy`` (default: a fixed description), after a fixed ``latency``; a policy can add
``X-Stub-Delay`` (seconds more) or ``X-Stub-Trickle`` (seconds between body bytes) to its headers.
Not a model: it never looks at pixels beyond checking they decode.

One asyncio event loop on a background thread serves every connection (HTTP/1.1 keep-alive), so
hundreds of requests in flight cost it no threads: a thread per connection made opening 128
connections take most of a second on a loaded 2-core machine, which a benchmark then counted
against the client.

    with StubServer(latency=0.2) as server:
        backend = OpenAICompatibleBackend(model="stub", base_url=server.base_url)
"""

from __future__ import annotations

import asyncio
import base64
import http
import io
import json
import threading
from collections import Counter
from typing import Any, Callable

from PIL import Image

STUB_ANSWER = ("A soft cotton shirt in muted blue with a relaxed, casual style, suited to weekends "
               "and travel for people who like simple comfortable clothes.")

# (status, extra headers, body bytes or a JSON-able object)
Reply = tuple[int, dict[str, str], Any]
Policy = Callable[[dict[str, Any], int], Reply]


def completion(content: Any, model: str = "stub") -> dict[str, Any]:
    return {"id": "stub", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}]}


def default_policy(payload: dict[str, Any], seen: int) -> Reply:
    return 200, {}, completion(STUB_ANSWER, payload.get("model", "stub"))


def request_prompt(payload: dict[str, Any]) -> str:
    """The text part of the first user message."""
    for part in payload["messages"][0]["content"]:
        if part.get("type") == "text":
            return part["text"]
    return ""


class StubServer:
    """Serve on a background thread; ``requests`` counts completions by prompt text."""

    def __init__(self, latency: float = 0.0, policy: Policy = default_policy,
                 models: tuple[str, ...] = ("stub",), api_key: str | None = None,
                 list_models: bool = True) -> None:
        self.latency = latency
        self.policy = policy
        self.models = models
        self.list_models = list_models
        self.api_key = api_key
        self.requests: Counter[str] = Counter()
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def __enter__(self) -> "StubServer":
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        connections: set[asyncio.StreamWriter] = set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.add(writer)
            try:
                await self._connection(reader, writer)
            finally:
                connections.discard(writer)
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        for writer in list(connections):
            writer.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
                method, path = request_line.split(" ")[:2]
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                status, reply_headers, reply, answered = self._answer(method, path, headers, body)
                delay = float(reply_headers.pop("X-Stub-Delay", 0) or 0)
                trickle = float(reply_headers.pop("X-Stub-Trickle", 0) or 0)
                if answered:  # a completion "generated": the fixed latency applies
                    await asyncio.sleep(self.latency + delay)
                await _send(writer, status, reply, reply_headers, trickle)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass  # the client closed the connection (or gave up on a slow answer)

    def _answer(self, method: str, path: str, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], Any, bool]:
        """(status, headers, body, whether the policy answered)."""
        if self.api_key and headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {}, {"error": {"message": "invalid api key"}}, False
        path = path.rstrip("/")
        if method == "GET":
            if path.endswith("/models") and self.list_models:
                models = [{"id": m, "object": "model"} for m in self.models]
                return 200, {}, {"object": "list", "data": models}, False
            return 404, {}, {"error": {"message": "not found"}}, False
        if not path.endswith("/chat/completions"):
            return 404, {}, {"error": {"message": "not found"}}, False
        payload = json.loads(body)
        for part in payload["messages"][0]["content"]:
            if part.get("type") == "image_url":
                header, encoded = part["image_url"]["url"].split(",", 1)
                assert header.startswith("data:image/")
                Image.open(io.BytesIO(base64.b64decode(encoded))).verify()
        if payload.get("model") not in self.models:
            return 404, {}, {"error": {"message": f"The model `{payload.get('model')}` does not exist."}}, False
        prompt = request_prompt(payload)
        self.requests[prompt] += 1
        status, reply_headers, reply = self.policy(payload, self.requests[prompt])
        return status, dict(reply_headers or {}), reply, True


async def _send(writer: asyncio.StreamWriter, status: int, body: Any, headers: dict[str, str],
                trickle: float) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", "Content-Type: application/json",
             f"Content-Length: {len(data)}", *(f"{key}: {value}" for key, value in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not trickle:
        writer.write(data)
        await writer.drain()
        return
    for index in range(len(data)):  # one byte at a time: every read is "on time"
        writer.write(data[index:index + 1])
        await writer.drain()
        await asyncio.sleep(trickle)
