"""How the requests of ``formats/openai_client.py`` travel.

``http11`` (the default): the hand-written HTTP/1.1 pools of ``formats/http11.py`` to servers
reached directly, and aiohttp to a server the environment names a proxy for (``HTTP(S)_PROXY``
minus ``NO_PROXY``), which http11 does not speak. ``aiohttp``: every server through one aiohttp
session; kept so the throughput bench can compare the two side by side
(``benchmarks/bench_openai_backend.py --transports http11 aiohttp``): aiohttp misses the
throughput target http11 meets (``formats/openai_client.py`` says by how much), so it is not the
default.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from recbole_vlm4rec.formats.http11 import ConnectionPool, HTTPProtocolError

TRANSPORTS = ("http11", "aiohttp")


@dataclass
class Answer:
    status: int
    reason: str
    retry_after: str | None    # the Retry-After header
    content: bytes


class Transport:
    """Kept-alive connections to every endpoint; use on one event loop, then ``aclose``."""

    def __init__(self, headers: dict[str, str], connections: int, choice: str = "http11") -> None:
        if choice not in TRANSPORTS:
            raise ValueError(f"transport {choice!r}: expected one of {', '.join(TRANSPORTS)}")
        self.headers = headers
        self.connections = connections
        self.choice = choice
        self._pools: dict[str, ConnectionPool] = {}
        self._session: Any = None
        self._tls: ssl.SSLContext | None = None

    async def exchange(self, url: str, proxy: str | None, method: str, path: str,
                       body: bytes | None) -> Answer:
        """One request and its whole answer (the caller sets the deadline)."""
        if self.choice == "http11" and proxy is None:
            pool = self._pools.get(url)
            if pool is None:
                pool = self._pools[url] = ConnectionPool(url, self.headers, self._tls_context())
            response = await pool.request(method, path, body or b"")
            return Answer(response.status_code, response.reason_phrase,
                          response.headers.get("retry-after"), response.content)
        async with self._aiohttp().request(method, url + path, data=body, proxy=proxy) as response:
            return Answer(response.status, response.reason or "", response.headers.get("Retry-After"),
                          await response.read())

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:  # one for every connection: each costs ~30 ms of CPU to build
            self._tls = ssl.create_default_context()
        return self._tls

    def _aiohttp(self) -> Any:
        if self._session is None:
            import aiohttp

            # deadlines are the caller's: aiohttp's own total timeout is off
            connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=0,
                                             ttl_dns_cache=300, ssl=self._tls_context())
            self._session = aiohttp.ClientSession(connector=connector, headers=self.headers,
                                                  timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


def answer_errors() -> tuple[type[Exception], ...]:
    """Connected, but the answer is not HTTP or broke off."""
    import aiohttp

    return HTTPProtocolError, aiohttp.ClientResponseError, aiohttp.ClientPayloadError


def connection_errors() -> tuple[type[Exception], ...]:
    """Could not connect, or the connection was lost (checked after :func:`answer_errors`)."""
    import aiohttp

    return OSError, aiohttp.ClientError
