"""Grounding through any OpenAI-compatible chat-completions endpoint with image input.

Works with vLLM (``vllm serve Qwen/Qwen2.5-VL-7B-Instruct``), Ollama (``/v1``), SGLang, LM Studio
and hosted APIs. Each item is one request: the prompt as a text part and the image as a base64
JPEG data URL (the original file's bytes when it is a JPEG/PNG that needed no fix), greedy
(``temperature 0``). This is how grounding scales out: raise ``concurrency`` (requests in flight)
and point ``base_url`` at a server on a GPU machine, or at several (comma-separated): requests
are spread round-robin over them and a retry goes to the next server.

Requests are coroutines on one event-loop thread with one pool of kept-alive connections per
server (``backends/http11.py``: ~0.1 ms of CPU per request, where httpx costs 0.7-15 ms at
hundreds in flight); the request bodies (image encoding, base64, JSON) are built by the
pipeline's worker threads (:meth:`prepare`), off the loop. When the environment names a proxy for
a server (``HTTPS_PROXY``...), requests to it go through httpx, which honours it.

Failure handling, per request:

* ``timeout`` is a deadline for the whole request (connect, send, the full answer): a server that
  trickles bytes is cut off at it.
* 429, 5xx, 408, timeouts, connection errors and answers that are not a chat completion (broken
  JSON, no ``choices``) are retried up to ``max_retries`` times with exponential backoff and
  jitter (``backoff_base * 2**attempt``, capped at ``backoff_max``, times a random factor in
  [0.5, 1]); a ``Retry-After`` header is honoured instead when present.
* after the retries, or at once for other 4xx, the item is recorded as failed with a reason:
  ``http_<status>``, ``timeout``, ``connection_error``, ``bad_response`` (body not the expected
  JSON). An empty answer comes back as empty text and the pipeline records ``empty_output``.
* ``json_mode=True`` (``--backend-option json_mode=true``) adds ``response_format: json_object``
  to structured prompts, for servers that constrain decoding to JSON (vLLM, OpenAI).
* failures that mean *no* item can succeed stop the run with an error saying what to fix instead
  of thousands of per-item failures: unreachable endpoint (checked before the run by
  :meth:`preflight`, and again when ``abort_after`` consecutive items fail to connect), 401/403
  (API key), 404 (base URL or model).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import io
import itertools
import json
import os
import random
import ssl
import time
import urllib.parse
import urllib.request
from typing import Any, Sequence

import httpx

from recbole_vlm4rec.grounding.backends.http11 import ConnectionPool, HTTPProtocolError
from recbole_vlm4rec.grounding.backends.base import (
    AsyncGroundingBackend,
    BackendUnavailableError,
    GroundingOutput,
    GroundingRequest,
)

DEFAULT_BASE_URL = "http://localhost:8000/v1"  # vLLM's default; $OPENAI_BASE_URL overrides
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}
FATAL_STATUSES = {401: "the endpoint rejected the API key", 403: "access denied",
                  404: "no such path or model"}
_JSON = {"Content-Type": "application/json"}


class OpenAICompatibleBackend(AsyncGroundingBackend):
    """Chat completions with an image part; see the module docstring for retries and failures."""

    name = "openai"
    batch_size = 1

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 5,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        jpeg_quality: int = 90,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        abort_after: int | None = None,
        json_mode: bool = False,
    ) -> None:
        if not model:
            raise ValueError("the openai backend needs --model: the model name the endpoint serves "
                             "(e.g. Qwen/Qwen2.5-VL-7B-Instruct; GET <base-url>/models lists them)")
        if concurrency < 1 or max_retries < 0 or not timeout > 0:
            raise ValueError("openai backend: concurrency >= 1, max_retries >= 0, timeout > 0")
        self.model = model
        urls = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).split(",")
        self.base_urls = [url.strip().rstrip("/") for url in urls if url.strip()]
        self.base_url = ", ".join(self.base_urls)
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.jpeg_quality = jpeg_quality
        self.json_mode = json_mode  # structured prompts ask for response_format json_object
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.abort_after = abort_after or max(3, 2 * concurrency)
        self.api_key_env = api_key_env
        api_key = os.environ.get(api_key_env, "")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._turn = itertools.count()  # round-robin over servers
        self._connection_failures = 0  # consecutive items that could not connect at all
        self._state: _LoopState | None = None  # created on the event loop, at first use
        self._tls: ssl.SSLContext | None = None  # one for every client: each costs ~30 ms CPU to build

    def model_id(self) -> str:
        json_mode = ", json_mode" if self.json_mode else ""
        return f"{self.model} (max_tokens={self.max_new_tokens}, temperature={self.temperature:g}{json_mode})"

    # ------------------------------------------------------------------ before the run

    def preflight(self) -> None:
        """GET /models on every server: unreachable endpoint, bad key or unknown model fail here,
        before any item."""
        for url in self.base_urls:
            with httpx.Client(base_url=url, headers=self._headers, timeout=min(self.timeout, 10.0),
                              verify=self._tls_context()) as client:
                self._preflight_one(client, url)

    def _preflight_one(self, client: httpx.Client, url: str) -> None:
        try:
            response = client.get("/models")
        except httpx.HTTPError as error:
            raise BackendUnavailableError(
                f"cannot reach {url} ({type(error).__name__}: {error}); is the server "
                "running and --base-url right (it usually ends in /v1)?"
            ) from error
        if response.status_code in (401, 403):
            raise BackendUnavailableError(f"{url} answered {response.status_code} "
                                          f"({FATAL_STATUSES[response.status_code]}): {self._key_hint()}")
        if response.status_code != 200:
            return  # some servers have no /models; the requests themselves will tell
        try:
            served = [entry["id"] for entry in response.json().get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        if served and self.model not in served:
            raise BackendUnavailableError(
                f"{url} does not serve model {self.model!r}; it serves: {', '.join(served[:20])} "
                "(pass one of them with --model)"
            )

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return self._tls

    def _key_hint(self) -> str:
        return f"set the key in ${self.api_key_env} or name another variable with --api-key-env"

    # ------------------------------------------------------------------ requests

    def payload(self, request: GroundingRequest) -> dict[str, Any]:
        if request.image_bytes:  # the original JPEG/PNG: no re-encoding cost, no generation loss
            data, mime = request.image_bytes, "png" if request.image_bytes[:3] == b"\x89PN" else "jpeg"
        else:
            buffer = io.BytesIO()
            request.image.save(buffer, "JPEG", quality=self.jpeg_quality)
            data, mime = buffer.getvalue(), "jpeg"
        data_url = f"data:image/{mime};base64," + base64.b64encode(data).decode("ascii")
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": request.prompt},
                {"type": "image_url", "image_url": {"url": data_url}},
            ]}],
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
        }
        if self.json_mode and request.structured_slots:
            body["response_format"] = {"type": "json_object"}  # vLLM / OpenAI: constrained to JSON
        return body

    def prepare(self, request: GroundingRequest) -> GroundingRequest:
        """The request body as bytes, built on the caller's (worker) thread; the decoded image is
        let go."""
        body = json.dumps(self.payload(request), ensure_ascii=False).encode("utf-8")
        return dataclasses.replace(request, image=None, image_bytes=None, prepared=body)

    async def describe_async(self, requests: Sequence[GroundingRequest]) -> list[GroundingOutput]:
        state = self._loop_state()
        task = asyncio.current_task()
        if task is not None:
            state.tasks.add(task)
        try:
            if len(requests) == 1:  # the pipeline's case: no gather, no extra task
                return [await self._describe_one(state, requests[0])]
            return list(await asyncio.gather(*(self._describe_one(state, r) for r in requests)))
        finally:
            state.tasks.discard(task)

    async def _describe_one(self, state: "_LoopState", request: GroundingRequest) -> GroundingOutput:
        body = request.prepared if isinstance(request.prepared, bytes) else self.prepare(request).prepared
        error, detail = "connection_error", ""
        first = next(self._turn)
        for attempt in range(self.max_retries + 1):
            retry_after = None
            server = state.servers[(first + attempt) % len(state.servers)]  # a retry tries the next server
            async with state.slots:
                try:
                    response = await _within(server.post(body), self.timeout)
                except (asyncio.TimeoutError, httpx.TimeoutException) as exc:
                    error = "timeout"
                    detail = f"no complete answer within {self.timeout:g} s ({type(exc).__name__})"
                    response = None
                except HTTPProtocolError as exc:  # connected, but the answer broke off or is not HTTP
                    error, detail, response = "bad_response", f"{type(exc).__name__}: {exc}", None
                except (OSError, httpx.TransportError) as exc:
                    error, detail, response = "connection_error", f"{type(exc).__name__}: {exc}", None
            if response is not None:
                self._connection_failures = 0
                if response.status_code == 200:
                    output = _parse_completion(request.item_id, response)
                    if output.error is None:
                        return output
                    error, detail = output.error, output.detail  # broken answer: retried like a 5xx
                else:
                    error, detail = f"http_{response.status_code}", _error_message(response)
                    if response.status_code in FATAL_STATUSES:
                        raise BackendUnavailableError(self._fatal_message(server.url, response.status_code, detail))
                    if response.status_code not in RETRY_STATUSES:
                        break  # a permanent failure of this item (e.g. 400: image rejected)
                    retry_after = _retry_after_seconds(response.headers.get("retry-after"))
            if attempt < self.max_retries and not state.stop.is_set():
                try:
                    await asyncio.wait_for(state.stop.wait(), self._backoff(attempt, retry_after))
                except asyncio.TimeoutError:
                    pass
            if state.stop.is_set():
                error, detail = "interrupted", f"stopped while retrying ({error}: {detail})"
                break
        if error == "connection_error" and not state.stop.is_set():
            self._cannot_connect(detail)
        tries = f" after {self.max_retries + 1} tries" if self.max_retries else ""
        return GroundingOutput(request.item_id, error=error, detail=f"{detail}{tries}")

    def _fatal_message(self, url: str, status: int, detail: str) -> str:
        fix = {404: f"check --base-url (it usually ends in /v1) and --model {self.model!r} "
                    "(GET <base-url>/models lists the served names)"}.get(status, self._key_hint())
        return f"{url}/chat/completions answered {status} ({FATAL_STATUSES[status]}: {detail}); {fix}"

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, max(self.backoff_max, 300.0))
        delay = min(self.backoff_max, self.backoff_base * 2 ** attempt)
        return delay * random.uniform(0.5, 1.0)

    def _cannot_connect(self, detail: str) -> None:
        self._connection_failures += 1  # only the loop thread touches it
        if self._connection_failures >= self.abort_after:
            raise BackendUnavailableError(
                f"{self.base_url} unreachable: {self._connection_failures} items in a row could not "
                f"connect after {self.max_retries + 1} tries each (last: {detail}); is the server "
                "running and --base-url right?"
            )

    # ------------------------------------------------------------------ the loop's state

    def _loop_state(self) -> "_LoopState":
        if self._state is None:
            self._state = _LoopState(
                servers=[_ServerPool(url, self.concurrency, self.timeout, self._headers, self._tls_context())
                         for url in self.base_urls],
                slots=asyncio.Semaphore(self.concurrency), stop=asyncio.Event(), tasks=set(),
            )
        return self._state

    async def aclose(self, grace_s: float = 2.0) -> None:
        """Ctrl-C / end of run: items waiting to retry give up at once, requests in flight get
        ``grace_s`` to finish, then everything is cancelled and the connections closed."""
        state, self._state = self._state, None
        if state is None:
            return
        state.stop.set()
        running = {task for task in state.tasks if not task.done()}
        if running:
            _, late = await asyncio.wait(running, timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for server in state.servers:
            await server.aclose()


@dataclasses.dataclass
class _LoopState:
    servers: list["_ServerPool"]
    slots: asyncio.Semaphore     # requests in flight, all servers together
    stop: asyncio.Event          # set by close(): retries give up
    tasks: set[asyncio.Task]     # describe_async calls running


class _ServerPool:
    """One server's kept-alive connections: ``http11.ConnectionPool``, or httpx through a proxy."""

    def __init__(self, url: str, connections: int, timeout: float, headers: dict[str, str],
                 tls: ssl.SSLContext) -> None:
        self.url = url
        self.direct: ConnectionPool | None = None
        self.proxied: httpx.AsyncClient | None = None
        if _proxy_for(url):
            # httpx's own timeouts are per read/write; the whole-request deadline is the caller's
            self.proxied = httpx.AsyncClient(
                base_url=url, headers={**_JSON, **headers}, verify=tls,
                timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))
        else:
            self.direct = ConnectionPool(url, {**_JSON, **headers}, tls)

    async def post(self, body: bytes) -> Any:
        if self.direct is not None:
            return await self.direct.post("/chat/completions", body)
        return await self.proxied.post("/chat/completions", content=body)

    async def aclose(self) -> None:
        if self.direct is not None:
            self.direct.close()
        else:
            await self.proxied.aclose()


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (as httpx would use), or None."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return proxy
    return None


async def _within(awaitable: Any, seconds: float) -> Any:
    """``await awaitable`` with a deadline; asyncio.timeout (3.11+) cancels in place, where
    wait_for (3.10) wraps it in one more task."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


def _parse_completion(item_id: str, response: Any) -> GroundingOutput:
    try:
        data = response.json()
        message = data["choices"][0]["message"]
        content = message.get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
        return GroundingOutput(item_id, error="bad_response",
                               detail=f"not a chat completion ({type(error).__name__}): {response.text[:200]!r}")
    if isinstance(content, list):  # content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if content is not None and not isinstance(content, str):
        return GroundingOutput(item_id, error="bad_response", detail=f"content is {type(content).__name__}")
    return GroundingOutput(item_id, text=content or "")


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return str(message or response.text[:200] or response.reason_phrase)


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or unparsable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
