"""Grounding through any OpenAI-compatible chat-completions endpoint with image input.

Works with vLLM (``vllm serve Qwen/Qwen2.5-VL-7B-Instruct``), Ollama (``/v1``), SGLang, LM Studio
and hosted APIs. Each item is one request: the prompt as a text part and the image as a base64
JPEG data URL (the original file's bytes when it is a JPEG/PNG that needed no fix), greedy
(``temperature 0``). This is how grounding scales out: raise ``concurrency`` (requests in flight)
and point ``base_url`` at a server on a GPU machine, or at a fleet of them (a list, or a
comma-separated string): each request goes to the server with the fewest in flight, a failed one
is retried on another, and the summary counts what each server did.

The HTTP side (retries, ``Retry-After``, deadlines, fatal statuses, the fleet) is the shared
client, ``formats/openai_client.py``: its module docstring says what is retried and how. This
module builds the request bodies (on the pipeline's worker threads, :meth:`prepare`, off the
event loop) and reads the answers: a 200 that is not a chat completion (broken JSON, no
``choices``) is retried like a 5xx, then recorded as ``bad_response``; an empty answer comes back
as empty text and the pipeline records ``empty_output``. ``json_mode=True``
(``--backend-option json_mode=true``) adds ``response_format: json_object`` to structured prompts,
for servers that constrain decoding to JSON (vLLM, OpenAI). Failures that mean *no* item can
succeed stop the run with what to fix instead of thousands of per-item failures: unreachable
endpoint (:meth:`preflight`, and ``abort_after`` items in a row that cannot connect), 401/403 (API
key), 404 (base URL or model).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any, Sequence

from recbole_vlm4rec.formats.openai_client import BadAnswer, EndpointUnavailableError, OpenAIClient
from recbole_vlm4rec.formats.openai_messages import user_message
from recbole_vlm4rec.grounding.backends.base import (
    AsyncGroundingBackend,
    BackendUnavailableError,
    GroundingOutput,
    GroundingRequest,
)


class OpenAICompatibleBackend(AsyncGroundingBackend):
    """Chat completions with an image part; see the module docstring for retries and failures."""

    name = "openai"
    batch_size = 1

    def __init__(
        self,
        model: str | None = None,
        base_url: str | Sequence[str] | None = None,
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
        transport: str = "http11",
    ) -> None:
        if not model:
            raise ValueError("the openai backend needs --model: the model name the endpoint serves "
                             "(e.g. Qwen/Qwen2.5-VL-7B-Instruct; GET <base-url>/models lists them)")
        try:
            self.client = OpenAIClient(
                base_url, model=model, api_key_env=api_key_env, concurrency=concurrency,
                timeout=timeout, max_retries=max_retries, backoff_base=backoff_base,
                backoff_max=backoff_max, abort_after=abort_after, transport=transport)
        except ValueError as error:
            raise ValueError(f"openai backend: {error}") from None
        self.model = model
        self.base_urls = self.client.urls
        self.base_url = ", ".join(self.base_urls)
        self.concurrency = concurrency
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.jpeg_quality = jpeg_quality
        self.json_mode = json_mode  # structured prompts ask for response_format json_object

    def model_id(self) -> str:
        json_mode = ", json_mode" if self.json_mode else ""
        return f"{self.model} (max_tokens={self.max_new_tokens}, temperature={self.temperature:g}{json_mode})"

    def preflight(self) -> None:
        """GET /models on every server: unreachable endpoint, bad key or unknown model fail here,
        before any item."""
        try:
            self.submit(self.client.preflight()).result()
        except EndpointUnavailableError as error:
            raise BackendUnavailableError(str(error)) from error

    def report(self) -> list[str]:
        return self.client.report()

    # ------------------------------------------------------------------ requests

    def payload(self, request: GroundingRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": user_message(request.prompt, request.image, request.image_bytes, self.jpeg_quality),
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
        try:
            if len(requests) == 1:  # the pipeline's case: no gather, no extra task
                return [await self._describe_one(requests[0])]
            return list(await asyncio.gather(*(self._describe_one(r) for r in requests)))
        except EndpointUnavailableError as error:
            raise BackendUnavailableError(str(error)) from error

    async def _describe_one(self, request: GroundingRequest) -> GroundingOutput:
        body = request.prepared if isinstance(request.prepared, bytes) else self.prepare(request).prepared
        outcome = await self.client.post("/chat/completions", body, completion_text)
        return GroundingOutput(request.item_id, text=outcome.value, error=outcome.error, detail=outcome.detail)

    async def aclose(self, grace_s: float = 2.0) -> None:
        """Ctrl-C / end of run: items waiting to retry give up at once, requests in flight get
        ``grace_s`` to finish, then everything is cancelled and the connections closed."""
        await self.client.aclose(grace_s)


def completion_text(content: bytes) -> str:
    """The answer text of a chat completion (content parts joined); BadAnswer when it is not one."""
    try:
        message = json.loads(content)["choices"][0]["message"]
        text = message.get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
        raise BadAnswer(f"not a chat completion ({type(error).__name__}): "
                        f"{content[:200].decode('utf-8', 'replace')!r}") from None
    if isinstance(text, list):  # content parts
        text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
    if text is not None and not isinstance(text, str):
        raise BadAnswer(f"content is {type(text).__name__}")
    return text or ""
