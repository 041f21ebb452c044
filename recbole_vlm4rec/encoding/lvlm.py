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
    The HTTP client is the one grounding uses (``formats/openai_client.py``: retries, deadlines,
    fatal statuses, several servers); ``concurrency`` requests in flight.

Per-item failures come back as values (``error`` + ``detail``); an exception means the embedder
cannot work at all (weights missing, endpoint unreachable).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from abc import ABC, abstractmethod
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
    """``/embeddings`` with chat-style messages on an OpenAI-compatible server (vLLM), through the
    shared client (``formats/openai_client.py``: retries with backoff, ``Retry-After``, whole-request
    deadlines, fatal statuses, a fleet of servers): ``concurrency`` requests in flight."""

    name = "openai"

    def __init__(self, model: str | None = None, base_url: str | Sequence[str] | None = None,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 timeout: float = 120.0, max_retries: int = 5, backoff_base: float = 1.0,
                 backoff_max: float = 60.0, jpeg_quality: int = 90) -> None:
        from recbole_vlm4rec.formats.loop import BackgroundLoop
        from recbole_vlm4rec.formats.openai_client import OpenAIClient

        if not model:
            raise ValueError("the openai LVLM backend needs --model: the model name the "
                             "endpoint serves (GET <base-url>/models lists them)")
        try:
            self.client = OpenAIClient(base_url, model=model, api_key_env=api_key_env,
                                       concurrency=concurrency, timeout=timeout,
                                       max_retries=max_retries, backoff_base=backoff_base,
                                       backoff_max=backoff_max)
        except ValueError as error:
            raise ValueError(f"openai LVLM backend: {error}") from None
        self.model = model
        self.base_url = ", ".join(self.client.urls)
        self.jpeg_quality = jpeg_quality
        self.batch_size = concurrency  # requests in flight per embed() call
        self._loop = BackgroundLoop("lvlm-openai")

    def model_id(self) -> str:
        return f"{self.model} via {self.base_url}/embeddings (server-side pooling)"

    def preflight(self) -> None:
        """GET /models: an unreachable endpoint, a rejected key or an unknown model fail here."""
        self._run(self.client.preflight())

    def embed(self, requests: Sequence[GroundingRequest]) -> list[LVLMOutput]:
        from recbole_vlm4rec.formats.openai_messages import user_message

        bodies = [json.dumps({"model": self.model, "encoding_format": "float",
                              "messages": user_message(r.prompt, r.image, r.image_bytes,
                                                       self.jpeg_quality)}).encode()
                  for r in requests]  # built here, off the client's loop
        return self._run(self._embed_all(requests, bodies))

    async def _embed_all(self, requests: Sequence[GroundingRequest],
                         bodies: list[bytes]) -> list[LVLMOutput]:
        outcomes = await asyncio.gather(*(self.client.post("/embeddings", body, embedding_vector)
                                          for body in bodies))
        return [LVLMOutput(r.item_id, vector=o.value, error=o.error, detail=o.detail)
                for r, o in zip(requests, outcomes)]

    def _run(self, coroutine: Any) -> Any:
        from recbole_vlm4rec.formats.openai_client import EndpointUnavailableError
        from recbole_vlm4rec.grounding.backends.base import BackendUnavailableError

        try:
            return self._loop.run(coroutine)
        except EndpointUnavailableError as error:
            raise BackendUnavailableError(str(error)) from error

    def close(self) -> None:
        self._loop.stop(self.client.aclose())


def embedding_vector(content: bytes) -> np.ndarray:
    """The vector of an embeddings answer; BadAnswer (retried) when it is not one."""
    from recbole_vlm4rec.formats.openai_client import BadAnswer

    try:
        vector = np.asarray(json.loads(content)["data"][0]["embedding"], dtype=np.float32)
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise BadAnswer(f"not an embeddings response ({type(error).__name__}): "
                        f"{content[:200].decode('utf-8', 'replace')!r}") from None
    if vector.ndim != 1 or not len(vector):
        raise BadAnswer(f"embedding of shape {vector.shape}")
    return vector


def create_lvlm_embedder(backend: str, **options: Any) -> LVLMEmbedder:
    """``transformers`` or ``openai`` with its keyword options (see each class)."""
    if backend == "transformers":
        return TransformersLVLMEmbedder(**options)
    if backend == "openai":
        return OpenAILVLMEmbedder(**options)
    raise ValueError(f"unknown LVLM backend {backend!r}: use one of {', '.join(LVLM_BACKENDS)}")
