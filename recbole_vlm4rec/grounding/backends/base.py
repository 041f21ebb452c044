"""The interface every grounding backend implements.

The pipeline (``grounding/run.py``) owns everything around a backend: reading items, loading and
validating images (``recbole_vlm4rec.formats.images``), rendering prompts, caching, concurrency across
batches, progress and the summary. A backend only turns a batch of (image, prompt) requests into
texts, and reports per-item failures as values instead of raising, so one bad item never stops a
run. An exception from ``describe`` means the whole backend is unusable (e.g. weights not found).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Sequence

from PIL import Image


@dataclass(frozen=True)
class GroundingRequest:
    """One item to describe."""

    item_id: str
    image: Image.Image          # RGB, already validated by data/images.load_image
    image_sha256: str           # hash of the original image bytes (part of the cache key)
    prompt: str                 # the fully rendered prompt (item context included)
    # Slot names when the prompt asks for structured JSON output; backends that do not generate
    # free text (the tagger) use it to fill what they can.
    structured_slots: tuple[str, ...] | None = None
    # The original file bytes when they are a JPEG or PNG that needed no fix (no mode conversion,
    # no downscale): remote backends may send them as they are instead of re-encoding ``image``.
    image_bytes: bytes | None = None


@dataclass
class GroundingOutput:
    """The result for one request: ``text`` on success, else ``error`` (a short reason code,
    e.g. ``timeout``, ``http_500``, ``empty_output``) and a human-readable ``detail``."""

    item_id: str
    text: str | None = None
    error: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.text and self.text.strip())


class BackendUnavailableError(RuntimeError):
    """The backend cannot work at all (endpoint unreachable, weights missing); the message says
    what to fix. Raised by ``preflight`` or ``describe``; never used for per-item failures."""


class GroundingBackend(ABC):
    """Turns batches of grounding requests into raw model texts."""

    name: ClassVar[str]
    # Requests per describe() call the pipeline should send, and how many describe() calls it may
    # run at once (threads): remote backends want concurrency, local models want batches.
    batch_size: int = 1
    concurrency: int = 1
    # Share of structured-prompt slots an answer must fill; None = the prompt's own `min_filled`.
    # A backend that by design fills only some slots (the tagger: category and colour) lowers it.
    structured_min_filled: float | None = None

    @abstractmethod
    def model_id(self) -> str:
        """What produced the text (model name/path and anything that changes outputs); recorded
        per row and part of the cache key, so changing it makes cached rows stale."""

    @abstractmethod
    def describe(self, requests: Sequence[GroundingRequest]) -> list[GroundingOutput]:
        """One output per request, in order. Per-item failures are outputs with ``error`` set."""

    def preflight(self) -> None:
        """Fail early (BackendUnavailableError) when the backend cannot work at all, before any
        item is sent; called once per run, not in dry runs. Default: nothing to check."""

    def close(self) -> None:
        """Release models, sessions and connections."""
