"""LVLM embedders: item image + prompt -> a vector read from a vision-language model's hidden states.

The second study this project implements ("Do Recommender Systems Really Leverage Multimodal
Content?", arXiv:2508.04571) embeds an item by prompting a vision-language model with its image and
a (structured) prompt and pooling the hidden states: multimodal by construction, no fusion step.

``transformers`` (:class:`TransformersLVLMEmbedder`)
    The grounding stage's model loader and chat-template batching
    (grounding/backends/transformers_vlm.py: Qwen2-VL / Qwen2.5-VL, LLaVA / LLaVA-NeXT, Idefics3 /
    SmolVLM, ...), on the GPU when present. One forward pass per batch with
    ``output_hidden_states``; the prompt is the chat-templated user turn (image, then text) plus the
    assistant prefix, left-padded. Pooling over that sequence:

    ``mean``   mean over its tokens (padding excluded by the attention mask; default),
    ``last``   the last token's state (the position that would predict the answer's first token),
    ``image``  mean over the image placeholder tokens only (the vision features as the language
               model sees them, after the layers up to ``layer``).

    ``layer`` indexes the model's ``hidden_states``: 0 = the input embeddings, -1 = the last layer
    (after the final norm, default), -2 the one before, ... With ``describe`` the pass is a greedy
    ``generate`` call instead: its first step is the same forward pass over the prompt, so one pass
    yields the vector (identical to the one without ``describe``) *and* the answer, validated like
    ``vlm4rec ground`` validates it (structured prompts: the JSON slots).
``openai`` (:class:`OpenAILVLMEmbedder`)
    ``POST <base-url>/embeddings`` with chat-style ``messages`` (image as a data URL + prompt), the
    request vLLM serves for multimodal embedding models (``vllm serve <model> --task embed``; its
    ``--override-pooler-config '{"pooling_type": "MEAN"}'`` picks the pooling, server-side).
    Retries with backoff, fatal statuses as the grounding backend (openai_compatible.py);
    ``concurrency`` requests in flight.

Per-item failures come back as values (``error`` + ``detail``); an exception means the embedder
cannot work at all (weights missing, endpoint unreachable).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import random
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from recbole_vlm4rec.grounding.backends.base import GroundingRequest

logger = logging.getLogger(__name__)
POOLINGS = ("mean", "last", "image")
LVLM_BACKENDS = ("transformers", "openai")


@dataclass
class LVLMOutput:
    """One request's result: ``vector`` (float32) on success, else ``error`` + ``detail``;
    ``text`` holds the generated answer when the embedder was asked to describe too."""

    item_id: str
    vector: np.ndarray | None = None
    text: str | None = None
    error: str | None = None
    detail: str = ""


class LVLMEmbedder(ABC):
    """Turns batches of (image, prompt) requests into vectors."""

    name: str = "lvlm"
    batch_size: int = 1
    describes: bool = False  # also returns the generated answer (``LVLMOutput.text``)

    @abstractmethod
    def model_id(self) -> str:
        """The model and every setting that changes the vectors (a cache namespace part)."""

    @abstractmethod
    def embed(self, requests: Sequence[GroundingRequest]) -> list[LVLMOutput]:
        """One output per request, in order."""

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_id().encode()).hexdigest()[:16]

    def description_model_id(self) -> str:
        """The model id the descriptions written beside the vectors record."""
        return self.model_id()

    def preflight(self) -> None:
        """Fail early when the embedder cannot work at all; called once before any item."""

    def close(self) -> None:
        """Release models and connections."""


class TransformersLVLMEmbedder(LVLMEmbedder):
    """Hidden states of a local/hub vision-language model, pooled (see the module docstring)."""

    name = "transformers"

    def __init__(self, model: str | None = None, device: str | None = None, dtype: str = "auto",
                 batch_size: int = 4, pooling: str = "mean", layer: int = -1,
                 describe: bool = False, max_new_tokens: int = 256,
                 revision: str | None = None) -> None:
        from recbole_vlm4rec.grounding.backends.transformers_vlm import TransformersBackend

        if pooling not in POOLINGS:
            raise ValueError(f"--pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
        self.backend = TransformersBackend(model=model, device=device, dtype=dtype,
                                           batch_size=batch_size, max_new_tokens=max_new_tokens,
                                           revision=revision)
        self.batch_size = batch_size
        self.pooling = pooling
        self.layer = int(layer)
        self.describes = describe
        self._succeeded, self._failures_in_a_row = False, 0

    def model_id(self) -> str:
        # generation settings change only the text; the vectors come from the pass over the prompt
        from recbole_vlm4rec.grounding.backends.transformers_vlm import local_fingerprint

        backend = self.backend
        name = backend.model_name + (f"@{backend.revision}" if backend.revision else "")
        weights = local_fingerprint(backend.model_name)
        return (f"{name} (hidden states, pooling={self.pooling}, layer={self.layer}, "
                f"dtype={backend.dtype_name}{', weights ' + weights if weights else ''})")

    def description_model_id(self) -> str:
        """What the descriptions written beside the vectors record as their model."""
        return self.backend.model_id()

    def preflight(self) -> None:
        """Load the weights; a ``layer`` or ``pooling`` the model cannot give fails here."""
        model, _, _ = self.backend.load()
        config = getattr(model.config, "text_config", None) or model.config
        n_states = int(config.num_hidden_layers) + 1
        if not -n_states <= self.layer < n_states:
            raise ValueError(f"--layer {self.layer}: {self.backend.model_name} has {n_states} "
                             f"hidden states (0 = embeddings .. {n_states - 1} or -1 = last layer)")
        if self.pooling == "image":
            _image_token_id(model.config)

    def embed(self, requests: Sequence[GroundingRequest]) -> list[LVLMOutput]:
        try:
            outputs = self._embed_batch(requests)
        except Exception as error:  # noqa: BLE001  (retried item by item, as grounding does)
            if len(requests) > 1:
                logger.warning("batch of %d failed (%s); retrying one by one", len(requests), error)
                return [output for request in requests for output in self.embed([request])]
            self._failures_in_a_row += 1
            if not self._succeeded and self._failures_in_a_row >= max(4, self.batch_size):
                raise RuntimeError(  # nothing has ever worked: the model is the problem
                    f"{self.backend.model_name}: the first {self._failures_in_a_row} items all "
                    f"failed, last with {type(error).__name__}: {str(error)[:300]}") from error
            reason = "out_of_memory" if "out of memory" in str(error).lower() else "model_error"
            return [LVLMOutput(requests[0].item_id, error=reason,
                               detail=f"{type(error).__name__}: {str(error)[:300]}")]
        self._succeeded, self._failures_in_a_row = True, 0
        return outputs

    def _embed_batch(self, requests: Sequence[GroundingRequest]) -> list[LVLMOutput]:
        import torch

        model, _, _ = self.backend.load()
        inputs = self.backend.model_inputs(requests)
        prompt_length = inputs["input_ids"].shape[1]
        texts: list[str | None] = [None] * len(requests)
        with torch.inference_mode():
            if self.describes:
                generated = model.generate(**inputs, **self.backend.generation_options(),
                                           output_hidden_states=True, return_dict_in_generate=True)
                hidden_states = generated.hidden_states[0]  # step 0: the pass over the prompt
                texts = list(self.backend.decode_new_tokens(generated.sequences, prompt_length))
            else:
                hidden_states = model(**inputs, output_hidden_states=True).hidden_states
        vectors = self._pool(hidden_states[self.layer].float(), inputs, model.config)
        return [LVLMOutput(r.item_id, vector=v, text=t)
                for r, v, t in zip(requests, vectors.cpu().numpy(), texts)]

    def _pool(self, states: Any, inputs: Any, config: Any) -> Any:
        mask = inputs["attention_mask"].to(states.dtype)
        if self.pooling == "last":
            return states[:, -1]  # left padding: the last position is real for every row
        if self.pooling == "image":
            image_token = _image_token_id(config)
            mask = mask * (inputs["input_ids"] == image_token).to(states.dtype)
            if bool((mask.sum(dim=1) == 0).any()):
                raise ValueError(f"pooling=image: a prompt has no image token (id {image_token})")
        return (states * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)

    def close(self) -> None:
        self.backend.close()


def _image_token_id(config: Any) -> int:
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    raise ValueError(f"pooling=image: {config.model_type} config names no image token id")


class OpenAILVLMEmbedder(LVLMEmbedder):
    """``/embeddings`` with chat-style messages on an OpenAI-compatible server (vLLM).

    One server (``base_url``, default ``$OPENAI_BASE_URL`` or vLLM's localhost:8000/v1); 429, 5xx,
    408 and connection errors are retried ``max_retries`` times with exponential backoff and jitter
    (``Retry-After`` honoured), other 4xx fail the item, 401/403/404 stop the run.
    """

    name = "openai"

    def __init__(self, model: str | None = None, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 timeout: float = 120.0, max_retries: int = 5, backoff_base: float = 1.0,
                 backoff_max: float = 60.0, jpeg_quality: int = 90) -> None:
        import httpx

        from recbole_vlm4rec.grounding.backends.openai_compatible import DEFAULT_BASE_URL

        if not model:
            raise ValueError("the openai LVLM backend needs --model: the model name the "
                             "endpoint serves (GET <base-url>/models lists them)")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("openai LVLM backend: concurrency >= 1, max_retries >= 0, timeout > 0")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.concurrency, self.max_retries = concurrency, max_retries
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.jpeg_quality, self.api_key_env = jpeg_quality, api_key_env
        api_key = os.environ.get(api_key_env, "")
        self._client = httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))
        self.batch_size = concurrency  # requests in flight per embed() call

    def model_id(self) -> str:
        return f"{self.model} via {self.base_url}/embeddings (server-side pooling)"

    def preflight(self) -> None:
        """GET /models: an unreachable endpoint, a rejected key or an unknown model fail here."""
        import httpx

        from recbole_vlm4rec.grounding.backends.base import BackendUnavailableError

        try:
            response = self._client.get("/models")
        except httpx.HTTPError as error:
            raise BackendUnavailableError(f"cannot reach {self.base_url} ({type(error).__name__}: "
                                          f"{error}); is the server running?") from error
        if response.status_code in (401, 403):
            raise BackendUnavailableError(f"{self.base_url} answered {response.status_code}; set "
                                          f"the key in ${self.api_key_env}")
        try:
            served = [entry["id"] for entry in response.json().get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return  # some servers have no /models: the requests themselves will tell
        if response.status_code == 200 and served and self.model not in served:
            raise BackendUnavailableError(f"{self.base_url} does not serve model {self.model!r}; "
                                          f"it serves: {', '.join(served[:20])}")

    def embed(self, requests: Sequence[GroundingRequest]) -> list[LVLMOutput]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._embed_one, requests))

    def _embed_one(self, request: GroundingRequest) -> LVLMOutput:
        body = {"model": self.model, "encoding_format": "float",
                "messages": user_message(request, self.jpeg_quality)}
        outcome = self._post(body)
        if isinstance(outcome, tuple):
            return LVLMOutput(request.item_id, error=outcome[0], detail=outcome[1])
        try:
            vector = np.asarray(outcome.json()["data"][0]["embedding"], dtype=np.float32)
        except (ValueError, KeyError, IndexError, TypeError) as error:
            return LVLMOutput(request.item_id, error="bad_response",
                              detail=f"not an embeddings response ({type(error).__name__}): "
                                     f"{outcome.text[:200]!r}")
        if vector.ndim != 1 or not len(vector):
            return LVLMOutput(request.item_id, error="bad_response",
                              detail=f"embedding of shape {vector.shape}")
        return LVLMOutput(request.item_id, vector=vector)

    def _post(self, body: dict[str, Any]) -> Any:
        """The 200 response, or ``(reason, detail)`` after the retries."""
        import httpx

        from recbole_vlm4rec.grounding.backends.base import BackendUnavailableError
        from recbole_vlm4rec.grounding.backends.openai_compatible import (FATAL_STATUSES,
                                                                          RETRY_STATUSES)

        error, detail = "connection_error", ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                response = self._client.post("/embeddings", json=body)
            except httpx.TimeoutException as exc:
                error, detail = "timeout", f"{type(exc).__name__}: {exc}"
            except httpx.TransportError as exc:
                error, detail = "connection_error", f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return response
                error, detail = f"http_{response.status_code}", _error_message(response)
                if response.status_code in FATAL_STATUSES:
                    raise BackendUnavailableError(
                        f"{self.base_url} answered {response.status_code} "
                        f"({FATAL_STATUSES[response.status_code]}): {detail}")
                if response.status_code not in RETRY_STATUSES:
                    break  # a permanent failure of this item (e.g. 400: image rejected)
                retry_after = _seconds(response.headers.get("retry-after"))
            if attempt < self.max_retries:
                delay = min(self.backoff_max, self.backoff_base * 2 ** attempt)
                time.sleep(retry_after if retry_after is not None
                           else delay * random.uniform(0.5, 1.0))
        tries = f" after {self.max_retries + 1} tries" if self.max_retries else ""
        return error, f"{detail}{tries}"

    def close(self) -> None:
        self._client.close()


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


def _error_message(response: Any) -> str:
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return str(message or response.text[:200] or response.reason_phrase)


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def create_lvlm_embedder(backend: str, **options: Any) -> LVLMEmbedder:
    """``transformers`` or ``openai`` with its keyword options (see each class)."""
    if backend == "transformers":
        return TransformersLVLMEmbedder(**options)
    if backend == "openai":
        return OpenAILVLMEmbedder(**options)
    raise ValueError(f"unknown LVLM backend {backend!r}: use one of {', '.join(LVLM_BACKENDS)}")
