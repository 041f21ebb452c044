"""One client for OpenAI-compatible HTTP endpoints (vLLM, Ollama, SGLang, LM Studio, hosted APIs),
used by grounding (``POST /chat/completions``, ``grounding/backends/openai_compatible.py``) and by
LVLM embeddings (``POST /embeddings``, ``encoding/lvlm.py``). It lives in ``formats/`` because two
stages use it; everything about talking to such a server is written here once: retries,
``Retry-After``, deadlines, fatal statuses, error texts, a fleet of servers (the request and answer
pieces, e.g. the image data URL, are ``formats/openai_messages.py``).

Transport (``formats/openai_transport.py``): the hand-written HTTP/1.1 pools of
``formats/http11.py`` on one event loop (requests are coroutines, so hundreds in flight cost no
threads), and aiohttp for a server the environment names a proxy for. aiohttp was measured as the
transport for every server and kept out of the fast path because it misses the >= 80%-of-ideal
target the hand-written client meets: on the grounding throughput bench, side by side and
interleaved (``benchmarks/bench_openai_backend.py --transports http11 aiohttp``, 3 repeats, a
2-core machine under load), 256 requests in flight against a 1 s server got 70-71% of ideal
through aiohttp against 80-82% (0.86-0.89x the requests/s), 64 against a 200 ms server 71-84%
against 81-88% (0.88-0.95x), its client spending 0.1-0.15 ms more CPU per request (figures and
commands: docs/grounding.md, Throughput).

Per request (:meth:`OpenAIClient.post`):

* ``timeout`` is a deadline for the whole request (connect, send, every byte of the answer): a
  server that trickles bytes is cut off at it.
* 429, 5xx, 408, 409, timeouts, connection errors and 200 answers the caller cannot parse
  (:class:`BadAnswer`: broken JSON, no ``choices``...) are retried up to ``max_retries`` times.
  The retry goes at once to another endpoint that this request has not tried and that is up;
  otherwise it waits: exponential backoff with jitter (``backoff_base * 2**attempt``, capped at
  ``backoff_max``, times a random factor in [0.5, 1]), or the server's ``Retry-After`` (seconds or
  an HTTP date) capped at ``retry_after_max``.
* after the retries, or at once for other 4xx, the request fails with a reason: ``http_<status>``,
  ``timeout``, ``connection_error``, ``bad_response``; ``detail`` holds the server's message.
* 401/403/404 mean no request can succeed: :class:`EndpointUnavailableError` with what to fix
  (API key variable, base URL, model). So do ``abort_after`` requests in a row that could not
  connect anywhere.

A fleet (several base URLs): each request goes to the endpoint with the fewest requests in flight
(ties: the one sent the fewest). An endpoint that cannot be connected to, or fails three retryable
requests in a row, is *down* for a while (1 s, doubling up to 30 s; a ``Retry-After`` sets it) and
gets no requests while another is up; then one request probes it. :meth:`OpenAIClient.report`
gives per-endpoint counts (requests sent, answered, failed by reason).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

from recbole_vlm4rec.formats.openai_messages import base_urls, error_message, retry_after_seconds
from recbole_vlm4rec.formats.openai_transport import (TRANSPORTS, Transport, answer_errors,
                                                      connection_errors)

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
FATAL_STATUSES = {401: "the endpoint rejected the API key", 403: "access denied",
                  404: "no such path or model"}
DOWN_AFTER = 3          # retryable failures in a row before an endpoint is set aside
DOWN_FIRST_S, DOWN_MAX_S = 1.0, 30.0
T = TypeVar("T")


class EndpointUnavailableError(RuntimeError):
    """No request can succeed (unreachable, rejected key, unknown model or path); the message
    says what to fix. Never used for a single request's failure."""


class BadAnswer(ValueError):
    """Raised by a ``parse`` function: the 200 answer is not what the caller expected."""


@dataclass
class Outcome(Generic[T]):
    """A request's result: ``value`` (what ``parse`` returned) or ``error`` + ``detail``."""

    value: T | None = None
    error: str | None = None
    detail: str = ""


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTP(S)_PROXY`` minus ``NO_PROXY``)."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return proxy
    return None


@dataclass
class Endpoint:
    """One server of the fleet and what it did in this run."""

    url: str
    proxy: str | None = None
    in_flight: int = 0
    sent: int = 0
    answered: int = 0
    failures: Counter = field(default_factory=Counter)   # reason -> failed requests
    down_until: float = 0.0                             # loop time; set aside until then
    failing: int = 0                                    # retryable failures in a row
    down_for: float = 0.0                               # how long it was last set aside (s)

    def report(self) -> str:
        failed = sum(self.failures.values())
        reasons = ", ".join(f"{reason} {count}" for reason, count in self.failures.most_common())
        return (f"{self.url}  {self.sent} requests, {self.answered} answered, {failed} failed"
                + (f" ({reasons})" if reasons else ""))


# ---------------------------------------------------------------- the client

class OpenAIClient:
    """Requests to one or several OpenAI-compatible endpoints; see the module docstring.

    Create it anywhere; use its coroutines on one event loop (e.g. a :class:`BackgroundLoop`).
    """

    def __init__(self, base_url: str | Sequence[str] | None = None, *, model: str = "",
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 timeout: float = 120.0, max_retries: int = 5, backoff_base: float = 1.0,
                 backoff_max: float = 60.0, retry_after_max: float = 300.0,
                 abort_after: int | None = None, transport: str = "http11") -> None:
        if concurrency < 1 or max_retries < 0 or not timeout > 0:
            raise ValueError("concurrency >= 1, max_retries >= 0 and timeout > 0 are needed")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r}: expected one of {', '.join(TRANSPORTS)}")
        self.transport = transport
        self.endpoints = [Endpoint(url, _proxy_for(url)) for url in base_urls(base_url)]
        self.model = model
        self.api_key_env = api_key_env
        api_key = os.environ.get(api_key_env, "")
        self.headers = {"Content-Type": "application/json",
                        **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.retry_after_max = retry_after_max
        self.abort_after = abort_after or max(3, 2 * concurrency)
        self._connection_failures = 0   # requests in a row that could not connect anywhere
        self._live: _Live | None = None  # created on the event loop at first use

    @property
    def urls(self) -> list[str]:
        return [endpoint.url for endpoint in self.endpoints]

    def report(self) -> list[str]:
        """One line per endpoint: requests sent, answered, failed by reason."""
        return [endpoint.report() for endpoint in self.endpoints]

    def key_hint(self) -> str:
        return f"set the key in ${self.api_key_env} or name another variable with --api-key-env"

    def fatal_message(self, url: str, status: int, detail: str) -> str:
        fix = self.key_hint() if status != 404 else (
            "check --base-url (it usually ends in /v1)" + (
                f" and --model {self.model!r} (GET <base-url>/models lists the served names)"
                if self.model else ""))
        return f"{url} answered {status} ({FATAL_STATUSES[status]}: {detail}); {fix}"

    # ------------------------------------------------------------ before the run

    async def preflight(self) -> None:
        """``GET /models`` on every endpoint: an unreachable one, a rejected key or a model no
        endpoint lists fail here, before any item."""
        transport = self._transport()
        try:
            for endpoint in self.endpoints:
                await self._preflight_one(transport, endpoint)
        finally:
            await transport.aclose()

    async def _preflight_one(self, transport: Transport, endpoint: Endpoint) -> None:
        try:
            answer = await _within(transport.exchange(endpoint.url, endpoint.proxy, "GET", "/models", None),
                                   min(self.timeout, 10.0))
        except (asyncio.TimeoutError, *answer_errors(), *connection_errors()) as error:
            raise EndpointUnavailableError(
                f"cannot reach {endpoint.url} ({type(error).__name__}: {error}); is the server "
                "running and --base-url right (it usually ends in /v1)? (a fleet: drop it from "
                "the list to go on without it)") from error
        if answer.status in (401, 403):
            raise EndpointUnavailableError(f"{endpoint.url} answered {answer.status} "
                                           f"({FATAL_STATUSES[answer.status]}): {self.key_hint()}")
        if answer.status != 200:
            return  # some servers have no /models: the requests themselves will tell
        try:
            served = [entry["id"] for entry in json.loads(answer.content).get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        if self.model and served and self.model not in served:
            raise EndpointUnavailableError(
                f"{endpoint.url} does not serve model {self.model!r}; it serves: "
                f"{', '.join(served[:20])} (pass one of them with --model)")

    # ------------------------------------------------------------ requests

    async def post(self, path: str, body: bytes, parse: Callable[[bytes], T]) -> Outcome[T]:
        """POST ``body`` (JSON bytes) to ``<endpoint><path>``; ``parse`` turns a 200 answer's
        bytes into the value (raising :class:`BadAnswer` when it cannot). Retries as described in
        the module docstring; raises only :class:`EndpointUnavailableError`."""
        live = await self._ready()
        task = asyncio.current_task()
        live.tasks.add(task)
        try:
            return await self._post(live, path, body, parse)
        finally:
            live.tasks.discard(task)

    async def _post(self, live: "_Live", path: str, body: bytes,
                    parse: Callable[[bytes], T]) -> Outcome[T]:
        loop = asyncio.get_running_loop()
        error, detail, tried = "connection_error", "", set()
        for attempt in range(self.max_retries + 1):
            retry_after = None
            async with live.slots:
                endpoint = self._pick(tried, loop.time())  # once a slot is free: counts are current
                endpoint.in_flight += 1
                endpoint.sent += 1
                try:
                    answer = await _within(live.transport.exchange(endpoint.url, endpoint.proxy, "POST",
                                                                   path, body), self.timeout)
                except asyncio.TimeoutError as exc:
                    answer, error = None, "timeout"
                    detail = f"no complete answer within {self.timeout:g} s ({type(exc).__name__})"
                except answer_errors() as exc:  # connected, but the answer is not HTTP or broke off
                    answer, error, detail = None, "bad_response", _describe(exc)
                except connection_errors() as exc:
                    answer, error, detail = None, "connection_error", _describe(exc)
                finally:
                    endpoint.in_flight -= 1
            if answer is not None:
                self._connection_failures = 0
                status = answer.status
                if status == 200:
                    try:
                        value = parse(answer.content)
                    except BadAnswer as exc:
                        error, detail = "bad_response", str(exc)
                    else:
                        endpoint.answered += 1
                        endpoint.failing, endpoint.down_for = 0, 0.0
                        return Outcome(value=value)
                else:
                    error, detail = f"http_{status}", error_message(answer.content, answer.reason)
                    if status in FATAL_STATUSES:
                        endpoint.failures[error] += 1
                        raise EndpointUnavailableError(self.fatal_message(endpoint.url + path, status, detail))
                    if status not in RETRY_STATUSES:
                        endpoint.failures[error] += 1
                        break  # a permanent failure of this request (e.g. 400: image rejected)
                    retry_after = retry_after_seconds(answer.retry_after)
                    if retry_after is not None:
                        retry_after = min(retry_after, self.retry_after_max)
            endpoint.failures[error] += 1
            self._set_aside(endpoint, error, retry_after, loop.time())
            tried.add(endpoint.url)
            if attempt == self.max_retries:
                break
            if not live.stop.is_set() and not self._another_is_ready(tried, loop.time()):
                try:
                    await asyncio.wait_for(live.stop.wait(), self._backoff(attempt, retry_after))
                except asyncio.TimeoutError:
                    pass
            if live.stop.is_set():
                error, detail = "interrupted", f"stopped while retrying ({error}: {detail})"
                break
        if error == "connection_error" and not live.stop.is_set():
            self._cannot_connect(detail)
        return Outcome(error=error, detail=f"{detail} after {_tries(attempt + 1)}" if attempt else detail)

    def _pick(self, tried: set[str], now: float) -> Endpoint:
        """The endpoint with the fewest requests in flight among those up, preferring ones this
        request has not tried; when all are down, the one back soonest."""
        up = [endpoint for endpoint in self.endpoints if endpoint.down_until <= now]
        candidates = [endpoint for endpoint in up if endpoint.url not in tried] or up
        if not candidates:
            return min(self.endpoints, key=lambda endpoint: endpoint.down_until)
        return min(candidates, key=lambda endpoint: (endpoint.in_flight, endpoint.sent))

    def _another_is_ready(self, tried: set[str], now: float) -> bool:
        return any(endpoint.url not in tried and endpoint.down_until <= now for endpoint in self.endpoints)

    def _set_aside(self, endpoint: Endpoint, error: str, retry_after: float | None, now: float) -> None:
        """Count a retryable failure; an endpoint that cannot be connected to, or fails
        ``DOWN_AFTER`` in a row, or asks to wait (Retry-After), gets no requests for a while."""
        endpoint.failing += 1
        if retry_after is not None:
            endpoint.down_until = max(endpoint.down_until, now + retry_after)
        elif error == "connection_error" or endpoint.failing >= DOWN_AFTER:
            endpoint.down_for = min(DOWN_MAX_S, 2 * endpoint.down_for) if endpoint.down_for else DOWN_FIRST_S
            endpoint.down_until = now + endpoint.down_for

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        return min(self.backoff_max, self.backoff_base * 2 ** attempt) * random.uniform(0.5, 1.0)

    def _cannot_connect(self, detail: str) -> None:
        self._connection_failures += 1  # only the loop thread touches it
        if self._connection_failures >= self.abort_after:
            raise EndpointUnavailableError(
                f"{', '.join(self.urls)} unreachable: {self._connection_failures} requests (items) in "
                f"a row could not connect, {_tries(self.max_retries + 1)} each (last: {detail}); is "
                "the server running and --base-url right?")

    # ------------------------------------------------------------ the loop's state

    def _transport(self) -> Transport:
        return Transport(self.headers, self.concurrency + len(self.endpoints), self.transport)

    async def _ready(self) -> "_Live":
        if self._live is None:
            self._live = _Live(self._transport(), asyncio.Semaphore(self.concurrency), asyncio.Event(), set())
        return self._live

    async def aclose(self, grace_s: float = 2.0) -> None:
        """Ctrl-C / end of run: requests waiting to retry give up at once, requests in flight
        get ``grace_s`` to finish, then they are cancelled and the connections closed."""
        live, self._live = self._live, None
        if live is None:
            return
        live.stop.set()
        running = {task for task in live.tasks if task is not None and not task.done()}
        running.discard(asyncio.current_task())
        if running:
            _, late = await asyncio.wait(running, timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await live.transport.aclose()


@dataclass
class _Live:
    transport: Transport
    slots: asyncio.Semaphore     # requests in flight, all endpoints together
    stop: asyncio.Event          # set by aclose(): retries give up
    tasks: set                   # post() calls running


def _tries(count: int) -> str:
    return f"{count} tries" if count != 1 else "1 try"


def _describe(error: BaseException) -> str:
    text = str(error).replace("\n", " ")
    return f"{type(error).__name__}: {' '.join(text.split())[:300]}"


async def _within(awaitable: Awaitable[T], seconds: float) -> T:
    """``await awaitable`` with a deadline; asyncio.timeout (3.11+) cancels in place, where
    wait_for (3.10) wraps it in one more task."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)
