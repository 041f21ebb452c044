"""Grounding through any OpenAI-compatible chat-completions endpoint with image input.

Works with vLLM (``vllm serve Qwen/Qwen2.5-VL-7B-Instruct``), Ollama (``/v1``), SGLang, LM Studio
and hosted APIs. Each item is one request: the prompt as a text part and the image as a base64
JPEG data URL (the original file's bytes when it is a JPEG/PNG that needed no fix), greedy
(``temperature 0``). This is how grounding scales out: raise
``concurrency`` (requests in flight; the pipeline runs that many worker threads) and point
``base_url`` at a server on a GPU machine, or at several (comma-separated): requests are spread
round-robin over them and a retry goes to the next server.

Failure handling, per request:

* 429, 5xx, 408, timeouts and connection errors are retried up to ``max_retries`` times with
  exponential backoff and jitter (``backoff_base * 2**attempt``, capped at ``backoff_max``, times
  a random factor in [0.5, 1]); a ``Retry-After`` header is honoured instead when present.
* after the retries, or at once for other 4xx, the item is recorded as failed with a reason:
  ``http_<status>``, ``timeout``, ``connection_error``, ``bad_response`` (body not the expected
  JSON). An empty answer comes back as empty text and the pipeline records ``empty_output``.
* ``json_mode=True`` (``--backend-option json_mode=true``) adds ``response_format: json_object``
  to structured prompts, for servers that constrain decoding to JSON (vLLM, OpenAI).
* failures that mean *no* item can succeed stop the run with a clear error instead of thousands of
  per-item failures: unreachable endpoint (checked before the run by :meth:`preflight`, and again
  when ``abort_after`` consecutive items fail to connect), 401/403 (API key), 404 (model or path).
"""

from __future__ import annotations

import base64
import email.utils
import io
import itertools
import os
import random
import threading
import time
from typing import Any, Sequence

import httpx

from recbole_vlm4rec.grounding.backends.base import (
    BackendUnavailableError,
    GroundingBackend,
    GroundingOutput,
    GroundingRequest,
)

DEFAULT_BASE_URL = "http://localhost:8000/v1"  # vLLM's default; $OPENAI_BASE_URL overrides
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}
FATAL_STATUSES = {401: "the endpoint rejected the API key", 403: "access denied",
                  404: "model or path not found"}


class OpenAICompatibleBackend(GroundingBackend):
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
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
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
        headers = {}
        api_key = os.environ.get(api_key_env, "")
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.api_key_env = api_key_env
        self._clients = [httpx.Client(
            base_url=url, headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        ) for url in self.base_urls]
        self._turn = itertools.count()  # round-robin over servers (next() on it is atomic)
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set by close(): in-flight items stop retrying (Ctrl-C)
        self._connection_failures = 0  # consecutive items that could not connect at all

    def model_id(self) -> str:
        json_mode = ", json_mode" if self.json_mode else ""
        return f"{self.model} (max_tokens={self.max_new_tokens}, temperature={self.temperature:g}{json_mode})"

    def preflight(self) -> None:
        """GET /models on every server: unreachable endpoint, bad key or unknown model fail here,
        before any item."""
        for client in self._clients:
            self._preflight_one(client, str(client.base_url).rstrip("/"))

    def _preflight_one(self, client: httpx.Client, url: str) -> None:
        try:
            response = client.get("/models", timeout=min(self.timeout, 10.0))
        except httpx.HTTPError as error:
            raise BackendUnavailableError(
                f"cannot reach {url} ({type(error).__name__}: {error}); is the server "
                "running and --base-url right (it usually ends in /v1)?"
            ) from error
        if response.status_code in (401, 403):
            raise BackendUnavailableError(
                f"{url} answered {response.status_code} ({FATAL_STATUSES[response.status_code]}); "
                f"set the key in ${self.api_key_env} or name another variable with --api-key-env"
            )
        if response.status_code != 200:
            return  # some servers have no /models; the requests themselves will tell
        try:
            served = [entry["id"] for entry in response.json().get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        if served and self.model not in served:
            raise BackendUnavailableError(
                f"{url} does not serve model {self.model!r}; it serves: {', '.join(served[:20])}"
            )

    def describe(self, requests: Sequence[GroundingRequest]) -> list[GroundingOutput]:
        return [self._describe_one(request) for request in requests]

    def close(self) -> None:
        self._stop.set()
        for client in self._clients:
            client.close()

    def payload(self, request: GroundingRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": user_message(request, self.jpeg_quality),
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
        }
        if self.json_mode and request.structured_slots:
            body["response_format"] = {"type": "json_object"}  # vLLM / OpenAI: constrained to JSON
        return body

    def _describe_one(self, request: GroundingRequest) -> GroundingOutput:
        outcome = self.post("/chat/completions", self.payload(request))
        if isinstance(outcome, httpx.Response):
            return _parse_completion(request.item_id, outcome)
        error, detail = outcome
        return GroundingOutput(request.item_id, error=error, detail=detail)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response | tuple[str, str]:
        """POST ``body`` to ``path`` with the retries, backoff and fatal-status rules above: the
        200 response, or ``(reason, detail)`` for a failed item. The LVLM encoder's
        ``/embeddings`` requests go through here too."""
        error, detail = "connection_error", ""
        first = next(self._turn)
        for attempt in range(self.max_retries + 1):
            retry_after = None
            client = self._clients[(first + attempt) % len(self._clients)]  # a retry tries the next server
            try:
                response = client.post(path, json=body)
            except httpx.TimeoutException as exc:
                error, detail = "timeout", f"no answer within {self.timeout:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                error, detail = "connection_error", f"{type(exc).__name__}: {exc}"
            else:
                self._connected()
                if response.status_code == 200:
                    return response
                error = f"http_{response.status_code}"
                detail = _error_message(response)
                if response.status_code in FATAL_STATUSES:
                    raise BackendUnavailableError(
                        f"{client.base_url} answered {response.status_code} "
                        f"({FATAL_STATUSES[response.status_code]}): {detail}"
                    )
                if response.status_code not in RETRY_STATUSES:
                    break  # a permanent failure of this item (e.g. 400: image rejected)
                retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
            if attempt < self.max_retries and not self._stop.is_set():
                self._stop.wait(self._backoff(attempt, retry_after))
            if self._stop.is_set():
                error, detail = "interrupted", f"stopped while retrying ({error}: {detail})"
                break
        if error == "connection_error" and not self._stop.is_set():
            self._cannot_connect(detail)
        tries = f" after {self.max_retries + 1} tries" if self.max_retries else ""
        return error, f"{detail}{tries}"

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, max(self.backoff_max, 300.0))
        delay = min(self.backoff_max, self.backoff_base * 2 ** attempt)
        return delay * random.uniform(0.5, 1.0)

    def _connected(self) -> None:
        with self._lock:
            self._connection_failures = 0

    def _cannot_connect(self, detail: str) -> None:
        with self._lock:
            self._connection_failures += 1
            failures = self._connection_failures
        if failures >= self.abort_after:
            raise BackendUnavailableError(
                f"{self.base_url} unreachable: {failures} items in a row could not connect "
                f"after {self.max_retries + 1} tries each (last: {detail})"
            )


def user_message(request: GroundingRequest, jpeg_quality: int = 90) -> list[dict[str, Any]]:
    """One user turn: the prompt as a text part and the image as a base64 data URL (the original
    JPEG/PNG bytes when the request carries them: no re-encoding cost, no generation loss)."""
    if request.image_bytes:
        data, mime = request.image_bytes, "png" if request.image_bytes[:3] == b"\x89PN" else "jpeg"
    else:
        buffer = io.BytesIO()
        request.image.save(buffer, "JPEG", quality=jpeg_quality)
        data, mime = buffer.getvalue(), "jpeg"
    data_url = f"data:image/{mime};base64," + base64.b64encode(data).decode("ascii")
    return [{"role": "user", "content": [
        {"type": "text", "text": request.prompt},
        {"type": "image_url", "image_url": {"url": data_url}},
    ]}]


def _parse_completion(item_id: str, response: httpx.Response) -> GroundingOutput:
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
