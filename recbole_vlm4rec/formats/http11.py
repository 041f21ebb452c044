"""A small asyncio HTTP/1.1 client for the request pattern of remote grounding: many POSTs of a
JSON body in flight to one server over kept-alive connections; the fast path of
``formats/openai_client.py``.

Why not httpx for this: in a micro-benchmark (128 in flight, 200 ms server) httpx's AsyncClient
(httpcore 1.0) spent 13 ms of CPU per request with one pool of 128 connections (the pool scans
and polls every connection per request) and 0.75-1.1 ms split into pools of 1-8 connections,
which on a 2-core machine caps a run far below what a GPU fleet serves. This client costs
~0.08 ms per request. Why not aiohttp: 0.1-0.15 ms more client CPU per request on the grounding
throughput bench, where it misses the >= 80%-of-ideal target this client meets (70-71% against
80-82% at 256 in flight; figures in ``formats/openai_client.py`` and docs/grounding.md,
Throughput). It speaks what chat-completion
servers answer (HTTP/1.1, ``Content-Length`` or chunked bodies, or a body ended by closing the
connection; TLS through an ``ssl`` context) and nothing more: no redirects, no compression (it asks
for none), no proxies: the client sends requests to a server the environment names a proxy for
through aiohttp.

Deadlines are the caller's (``asyncio.wait_for``): a request cancelled half-way closes its
connection, so a late answer can never be read as the answer to the next request.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


class HTTPProtocolError(ConnectionError):
    """The server's bytes are not an HTTP/1.1 response (or the connection ended mid-response)."""


@dataclass
class Response:
    status_code: int
    reason_phrase: str
    headers: dict[str, str]  # lower-case names
    content: bytes = field(repr=False)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class ConnectionPool:
    """Kept-alive connections to the origin of ``base_url``; ``post(path, body)`` per request.

    The caller bounds how many requests are in flight (so how many connections are open).
    """

    def __init__(self, base_url: str, headers: dict[str, str], tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.tls = (tls or ssl.create_default_context()) if parts.scheme == "https" else None
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        fixed = {"Host": host if default_port else f"{host}:{self.port}", "Accept-Encoding": "identity",
                 "Connection": "keep-alive", **headers}
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode("latin-1")
        self._idle: list[_Connection] = []

    async def post(self, path: str, body: bytes) -> Response:
        return await self.request("POST", path, body)

    async def request(self, method: str, path: str, body: bytes = b"") -> Response:
        head = b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (
            method.encode("ascii"), (self.prefix + path).encode("ascii"), self._fixed, len(body))
        connection = await self._acquire()
        try:
            response = await connection.exchange(head, body)
        except BaseException:
            connection.close()  # cancelled or broken: a late answer must not reach the next request
            raise
        if connection.reusable:
            self._idle.append(connection)
        else:
            connection.close()
        return response

    async def _acquire(self) -> "_Connection":
        while self._idle:
            connection = self._idle.pop()  # the most recently used: least likely closed by the server
            if connection.reusable:
                return connection
            connection.close()
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            _Connection, self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None)
        return connection

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


class _Connection(asyncio.Protocol):
    """One connection; parses one response at a time as its bytes arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.reusable = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future | None = None
        self._head: tuple[int, str, dict[str, str]] | None = None
        self._mode = ""         # "length", "chunked" or "close" (body ends with the connection)
        self._keep = False      # the server lets the connection be used again
        self._length = 0
        self._chunks: list[bytes] = []
        self._offset = 0        # parse position in the buffer (chunked bodies)

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open = self.reusable = True

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is not None and not self._waiter.done():
            try:
                self._parse()
            except HTTPProtocolError as error:
                self._fail(error)
        elif data.strip():  # bytes nobody asked for: the connection is out of step
            self.reusable = False

    def eof_received(self) -> bool | None:
        self.reusable = False
        if self._waiter is not None and not self._waiter.done() and self._head and self._mode == "close":
            self._done(bytes(self._buffer))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = self.reusable = False
        if self._waiter is not None and not self._waiter.done():
            why = f" ({exc})" if exc else ""
            if self._head and self._mode == "close":
                self._done(bytes(self._buffer))
            elif self._head is None and not self._buffer:  # gone before answering: a connection error
                self._fail(ConnectionResetError(f"server closed the connection before answering{why}"))
            else:
                self._fail(HTTPProtocolError(f"server closed the connection mid-answer{why}"))

    # one request
    async def exchange(self, head: bytes, body: bytes) -> Response:
        if not self.open:
            raise HTTPProtocolError("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._head, self._chunks, self._offset = None, [], 0
        self.reusable = False  # until the whole response has been read
        self.transport.writelines((head, body))
        if self._buffer:
            self._parse()
        return await self._waiter

    def close(self) -> None:
        self.open = self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _parse(self) -> None:
        buffer = self._buffer
        while self._head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > 65536:
                    raise HTTPProtocolError("response headers longer than 64 KiB")
                return
            status, reason, headers = _parse_head(bytes(buffer[:end]))
            del buffer[:end + 4]
            if 100 <= status < 200:
                continue  # 100 Continue and other interim answers
            self._head = status, reason, headers
            keep = headers.get("connection", "").lower() != "close"
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._mode = "chunked"
            elif "content-length" in headers:
                try:
                    self._mode, self._length = "length", int(headers["content-length"])
                except ValueError:
                    raise HTTPProtocolError(f"bad Content-Length {headers['content-length']!r}") from None
            elif status in (204, 304):
                self._mode, self._length = "length", 0
            else:
                self._mode, keep = "close", False
            self._keep = keep
        if self._mode == "length":
            if len(buffer) >= self._length:
                body = bytes(buffer[:self._length])
                del buffer[:self._length]
                self._done(body)
        elif self._mode == "chunked":
            self._parse_chunks()

    def _parse_chunks(self) -> None:
        buffer = self._buffer
        while True:
            line_end = buffer.find(b"\r\n", self._offset)
            if line_end < 0:
                return
            size_text = bytes(buffer[self._offset:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HTTPProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if buffer[line_end:line_end + 4] == b"\r\n\r\n":
                    trailer_end = line_end
                if trailer_end < 0:
                    return
                del buffer[:trailer_end + 4]
                self._done(b"".join(self._chunks))
                return
            if len(buffer) < line_end + 2 + size + 2:
                return
            self._chunks.append(bytes(buffer[line_end + 2:line_end + 2 + size]))
            self._offset = line_end + 2 + size + 2
            if self._offset > 1 << 20:  # drop what was parsed so the buffer does not grow without end
                del buffer[:self._offset]
                self._offset = 0

    def _done(self, body: bytes) -> None:
        status, reason, headers = self._head  # type: ignore[misc]
        self.reusable = self.open and self._keep and not self._buffer
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(Response(status, reason, headers, body))

    def _fail(self, error: Exception) -> None:
        self.reusable = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HTTPProtocolError(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise HTTPProtocolError(f"bad header line {line[:80]!r}")
        name = name.strip().lower()
        headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers
