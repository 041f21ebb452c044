"""The interface every grounding backend implements.

The pipeline (``grounding/run.py``) owns everything around a backend: reading items, loading and
validating images (``recbole_vlm4rec.formats.images``), rendering prompts, caching, concurrency across
batches, progress and the summary. A backend only turns a batch of (image, prompt) requests into
texts, and reports per-item failures as values instead of raising, so one bad item never stops a
run. An exception from ``describe`` means the whole backend is unusable (e.g. weights not found).

Two kinds: a plain :class:`GroundingBackend` is called from ``concurrency`` worker threads (local
models batch on a GPU); an :class:`AsyncGroundingBackend` (remote APIs) runs every request as a
coroutine on one event-loop thread it owns, so hundreds of requests in flight cost no threads.
"""

from __future__ import annotations

import concurrent.futures
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Coroutine, Sequence

from PIL import Image

from recbole_vlm4rec.formats.loop import BackgroundLoop


@dataclass(frozen=True)
class GroundingRequest:
    """One item to describe."""

    item_id: str
    # RGB, already validated by formats/images.load_image; None once the backend's prepare() has
    # turned it into ``prepared`` (so a large look-ahead window does not hold decoded images)
    image: Image.Image | None
    image_sha256: str           # hash of the original image bytes (part of the cache key)
    prompt: str                 # the fully rendered prompt (item context included)
    # Slot names when the prompt asks for structured JSON output; backends that do not generate
    # free text (the tagger) use it to fill what they can.
    structured_slots: tuple[str, ...] | None = None
    # The original file bytes when they are a JPEG or PNG that needed no fix (no mode conversion,
    # no downscale): remote backends may send them as they are instead of re-encoding ``image``.
    image_bytes: bytes | None = None
    # What the backend's prepare() made of the request on a worker thread (e.g. the HTTP body).
    prepared: Any = None


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

    def prepare(self, request: GroundingRequest) -> GroundingRequest:
        """CPU work on one request before it is sent (e.g. encoding the image), run by the
        pipeline on a worker thread, never on an event loop. Default: the request as it is."""
        return request

    def report(self) -> list[str]:
        """Lines for the run's summary about the backend itself (e.g. per-server counts)."""
        return []

    def close(self) -> None:
        """Release models, sessions and connections."""


class AsyncGroundingBackend(GroundingBackend):
    """A backend whose requests are coroutines on one event-loop thread the backend owns.

    The pipeline submits batches with :meth:`submit` and never blocks a thread per request;
    ``describe`` (the plain interface) runs the same coroutine and waits for it.
    """

    _runner: BackgroundLoop | None = None
    _runner_lock = threading.Lock()  # two threads submitting first must not start two loops

    @abstractmethod
    async def describe_async(self, requests: Sequence[GroundingRequest]) -> list[GroundingOutput]:
        """As :meth:`describe`, on the backend's event loop."""

    def describe(self, requests: Sequence[GroundingRequest]) -> list[GroundingOutput]:
        return self.submit(self.describe_async(requests)).result()

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
        """Run ``coroutine`` on the backend's loop (started on first use); cancelling the
        returned future cancels the coroutine."""
        with self._runner_lock:
            if self._runner is None:
                self._runner = BackgroundLoop(f"{self.name}-loop")
        return self._runner.submit(coroutine)

    async def aclose(self) -> None:
        """Release what lives on the loop (clients); called on the loop by :meth:`close`."""

    def close(self) -> None:
        """Let the backend's coroutines end (``aclose``), then stop its loop thread."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.stop(self.aclose())
