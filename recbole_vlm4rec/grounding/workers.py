"""How a run's items reach the backend: claimed, batched, described, validated and committed.

:func:`describe_all` is step 2 of ``grounding/run.py``. Batches of ``backend.batch_size`` items go

* to ``backend.concurrency`` worker threads for a plain backend (local models batch on a GPU);
* for an :class:`~recbole_vlm4rec.grounding.backends.base.AsyncGroundingBackend` (remote APIs),
  to coroutines on the backend's event loop: images are decoded, validated and turned into the
  request (``backend.prepare``) by a few worker threads, never on the loop, so hundreds of
  requests in flight cost neither threads nor loop time.

At most two rounds of batches are in flight or prepared at once (decoded images of the whole
catalogue are never held). The main thread commits every finished batch to the cache, so a crash
or Ctrl-C loses at most the batches in flight. Before a batch is sent its items are claimed in the
cache (``DescriptionStore.claim``): items another run holds are skipped and picked up later, from
that run's rows once they are committed or by claiming them when that run stopped or died.
"""

from __future__ import annotations

import asyncio
import os
import queue
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TextIO

from tqdm.auto import tqdm

from recbole_vlm4rec.formats.images import REASONS as IMAGE_REASONS
from recbole_vlm4rec.formats.images import ImageError, load_image, read_image_bytes
from recbole_vlm4rec.grounding.backends.base import (
    AsyncGroundingBackend,
    BackendUnavailableError,
    GroundingBackend,
    GroundingOutput,
    GroundingRequest,
)
from recbole_vlm4rec.grounding.items import GroundingItem
from recbole_vlm4rec.grounding.prompts import OutputRejected, PromptSpec
from recbole_vlm4rec.grounding.store import CLAIM_TTL_S, DescriptionRow, DescriptionStore


# Finished rows wait this long for others before a commit: at hundreds of answers a second, one
# SQLite transaction per answer would cost the main thread a tenth of a core.
COMMIT_EVERY_S = 0.02


class GroundingAborted(RuntimeError):
    """The backend failed as a whole (not per item); the message says what failed and, for a
    backend that cannot work (endpoint, model, key), what to fix. Finished rows are saved."""


@dataclass
class Task:
    item: GroundingItem
    prompt: str
    prompt_key: str
    image_sha256: str


class RowMaker:
    """Builds rows carrying the run's backend, model and prompt identity."""

    def __init__(self, prompt: PromptSpec, backend: GroundingBackend) -> None:
        self.prompt = prompt
        self.backend_name = backend.name
        self.model = backend.model_id()

    def is_current(self, row: DescriptionRow, prompt_key: str, sha: str | None) -> bool:
        return (row.backend, row.model, row.prompt_key, row.image_sha256) == (
            self.backend_name, self.model, prompt_key, sha
        )

    def _row(self, item_id: str, key: str, sha: str | None, **values) -> DescriptionRow:
        return DescriptionRow(
            item_id=item_id, backend=self.backend_name, model=self.model, prompt=self.prompt.name,
            prompt_version=self.prompt.version, prompt_key=key, image_sha256=sha, **values,
        )

    def failed(self, item_id: str, key: str, sha: str | None, reason: str, detail: str) -> DescriptionRow:
        return self._row(item_id, key, sha, status="failed", text=None, reason=reason, detail=detail)

    def ok(self, item_id: str, key: str, sha: str, text: str, fields, detail: str) -> DescriptionRow:
        return self._row(item_id, key, sha, status="ok", text=text, reason=None, detail=detail,
                         fields=fields)


def image_detail(error: ImageError) -> str:
    """Where and what: the file and the error (or the reason's description)."""
    return f"{error.source}: {error.detail or IMAGE_REASONS[error.reason]}"


# ---------------------------------------------------------------- one batch

@dataclass
class _Prepared:
    requests: list[GroundingRequest]
    rows: dict[str, DescriptionRow]   # items that failed before the backend (bad image)
    notes: dict[str, str]             # item -> fixes applied to its image


def _prepare_batch(batch: list[Task], prompt: PromptSpec, backend: GroundingBackend, meta: RowMaker,
                   max_side: int | None) -> _Prepared:
    """Decode and validate the images, build the requests (worker thread)."""
    prepared = _Prepared([], {}, {})
    for task in batch:
        item_id = task.item.item_id
        try:
            data = read_image_bytes(task.item.image)
            loaded = load_image(data, max_side=max_side, name=task.item.image)
        except ImageError as error:
            prepared.rows[item_id] = meta.failed(item_id, task.prompt_key, task.image_sha256, error.reason,
                                                 image_detail(error))
            continue
        prepared.notes[item_id] = "; ".join(loaded.notes)
        task.image_sha256 = loaded.sha256  # what was described, even if the file changed since
        unchanged = not loaded.notes and data[:3] in (b"\xff\xd8\xff", b"\x89PN")  # JPEG / PNG as is
        request = GroundingRequest(item_id, loaded.image, loaded.sha256, task.prompt,
                                   prompt.structured_slots, data if unchanged else None)
        prepared.requests.append(backend.prepare(request))
    return prepared


def _finish_batch(batch: list[Task], prepared: _Prepared, outputs: list[GroundingOutput],
                  prompt: PromptSpec, backend: GroundingBackend, meta: RowMaker) -> list[DescriptionRow]:
    """Check each answer against the prompt; one row per task, in order."""
    if len(outputs) != len(prepared.requests):
        raise GroundingAborted(f"backend {backend.name} returned {len(outputs)} outputs for "
                               f"{len(prepared.requests)} requests")
    rows = prepared.rows
    by_id = {task.item.item_id: task for task in batch}
    for request, output in zip(prepared.requests, outputs):
        task = by_id[request.item_id]
        if output.error:
            rows[request.item_id] = meta.failed(request.item_id, task.prompt_key, request.image_sha256,
                                                output.error, output.detail)
            continue
        try:
            text, fields = prompt.parse(output.text, backend.structured_min_filled)
        except OutputRejected as rejected:
            rows[request.item_id] = meta.failed(request.item_id, task.prompt_key, request.image_sha256,
                                                rejected.reason, rejected.detail)
            continue
        rows[request.item_id] = meta.ok(request.item_id, task.prompt_key, request.image_sha256, text,
                                        fields, prepared.notes[request.item_id])
    return [rows[task.item.item_id] for task in batch]


def _describe_batch(batch: list[Task], prompt: PromptSpec, backend: GroundingBackend, meta: RowMaker,
                    max_side: int | None) -> list[DescriptionRow]:
    """Worker thread of a plain backend."""
    prepared = _prepare_batch(batch, prompt, backend, meta, max_side)
    outputs = backend.describe(prepared.requests) if prepared.requests else []
    return _finish_batch(batch, prepared, outputs, prompt, backend, meta)


class _ThreadDispatcher:
    """Batches of a plain backend, each on one of ``workers`` threads."""

    def __init__(self, prompt: PromptSpec, backend: GroundingBackend, meta: RowMaker,
                 max_side: int | None, workers: int) -> None:
        self._args = prompt, backend, meta, max_side
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grounding")

    def submit(self, batches: list[list[Task]]) -> list[Future]:
        return [self._executor.submit(_describe_batch, batch, *self._args) for batch in batches]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class _LoopDispatcher:
    """Batches of an async backend, as tasks on its event loop.

    Cross-thread wake-ups cost more CPU than the HTTP exchange itself at hundreds of requests a
    second, so they are made per group, not per request: the batches the main thread submits
    together start with one wake-up of the loop, and are prepared (decode, validate, request
    body) ``PREPARE_GROUP`` at a time on the worker threads, with one wake-up back each.
    """

    PREPARE_GROUP = 8

    def __init__(self, prompt: PromptSpec, backend: AsyncGroundingBackend, meta: RowMaker,
                 max_side: int | None) -> None:
        self._args = prompt, backend, meta, max_side
        self._backend = backend
        self._pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1)),
                                        thread_name_prefix="grounding-prepare")

    def submit(self, batches: list[list[Task]]) -> list[Future]:
        futures: list[Future] = [Future() for _ in batches]
        self._backend.submit(self._start(list(zip(batches, futures))))
        return futures

    async def _start(self, work: list[tuple[list[Task], Future]]) -> None:
        loop = asyncio.get_running_loop()
        for start in range(0, len(work), self.PREPARE_GROUP):
            loop.create_task(self._prepare_and_send(work[start:start + self.PREPARE_GROUP]))

    async def _prepare_and_send(self, work: list[tuple[list[Task], Future]]) -> None:
        loop = asyncio.get_running_loop()
        work = [(batch, future) for batch, future in work if not future.cancelled()]
        try:
            prepared = await loop.run_in_executor(
                self._pool, lambda: [_prepare_batch(batch, *self._args) for batch, _ in work])
        except BaseException as error:  # noqa: BLE001  (handed to the main thread)
            for _, future in work:
                _settle(future, error=error)
            return
        for (batch, future), batch_prepared in zip(work, prepared):
            if future.cancelled():
                continue
            task = loop.create_task(self._send(batch, batch_prepared, future))
            future.add_done_callback(
                lambda done, task=task: done.cancelled() and loop.call_soon_threadsafe(task.cancel))

    async def _send(self, batch: list[Task], prepared: "_Prepared", future: Future) -> None:
        prompt, backend, meta, _ = self._args
        try:
            outputs = await backend.describe_async(prepared.requests) if prepared.requests else []
            _settle(future, result=_finish_batch(batch, prepared, outputs, prompt, backend, meta))
        except BaseException as error:  # noqa: BLE001  (cancellation included: the future says so)
            _settle(future, error=error)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _settle(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Complete a future the main thread may have cancelled meanwhile."""
    if future.done():
        return
    try:
        if error is None:
            future.set_result(result)
        elif not isinstance(error, asyncio.CancelledError):
            future.set_exception(error)
        else:
            future.cancel()
    except InvalidStateError:  # cancelled by the main thread between the check and now
        pass


# ---------------------------------------------------------------- the run's batches

def describe_all(
    tasks: list[Task], prompt: PromptSpec, backend: GroundingBackend, store: DescriptionStore,
    meta: RowMaker, *, max_side: int | None, owner: str, started: float,
    done: dict[str, DescriptionRow], by_other_run: dict[str, DescriptionRow],
    progress: bool, stream: TextIO, claim_ttl_s: float = CLAIM_TTL_S,
    kept_good: set[str] | None = None,
) -> float:
    """Describe ``tasks``, committing finished batches into the cache and ``done`` (filled as it
    goes, so the caller has every saved row even after an exception); items another run
    described meanwhile land in ``by_other_run``; items whose attempt failed but whose earlier
    ok row the cache kept land in ``kept_good``. Returns the seconds spent."""
    if not tasks:
        return 0.0
    batch_size, workers = max(1, backend.batch_size), max(1, backend.concurrency)
    window = 2 * workers  # batches in flight or being prepared
    dispatcher = _LoopDispatcher(prompt, backend, meta, max_side) \
        if isinstance(backend, AsyncGroundingBackend) else _ThreadDispatcher(prompt, backend, meta, max_side, workers)
    unclaimed, claimed = deque(tasks), deque()
    elsewhere: dict[str, Task] = {}  # claimed by another run
    finished: queue.SimpleQueue[Future] = queue.SimpleQueue()  # O(1) per completion at any concurrency
    pending: set[Future] = set()
    tick = min(0.5, claim_ttl_s / 6)
    next_renewal = time.monotonic() + claim_ttl_s / 3
    bar = tqdm(total=len(tasks), desc=f"grounding ({backend.name})", unit="item",
               disable=not progress, file=stream, dynamic_ncols=True)
    begun, failed, told = time.perf_counter(), [0], [False]

    def take(chunk: list[Task]) -> None:
        """Claim ``chunk``. Items another run committed since this one began are taken from its
        rows (read after claiming, so a row committed just before is seen); items it holds wait."""
        ids = [task.item.item_id for task in chunk]
        held = store.claim(ids, owner, claim_ttl_s)
        rows = store.get_many(ids)
        theirs = []
        for task in chunk:
            item_id, row = task.item.item_id, rows.get(task.item.item_id)
            if row is not None and row.updated_at >= started and \
                    meta.is_current(row, task.prompt_key, task.image_sha256):
                by_other_run[item_id] = row
                theirs.append(item_id)
            elif item_id in held:
                claimed.append(task)
            else:
                elsewhere[item_id] = task
        if theirs:
            store.release_claims(owner, theirs)
            bar.update(len(theirs))

    def claim_more() -> None:
        take([unclaimed.popleft() for _ in range(min(batch_size * workers, len(unclaimed)))])

    def look_elsewhere() -> None:
        waiting = list(elsewhere.values())
        elsewhere.clear()
        take(waiting)

    def collect(futures: list[Future]) -> None:
        """Save every successful batch in one transaction, then re-raise the first failure."""
        error: BaseException | None = None
        rows: list[DescriptionRow] = []
        for future in futures:
            pending.discard(future)
            try:
                rows.extend(future.result())
            except BaseException as raised:  # noqa: BLE001  (re-raised below, Ctrl-C included)
                error = error or raised
        kept = store.put_many(rows, owner)
        if kept_good is not None:
            kept_good.update(kept)
        done.update((row.item_id, row) for row in rows)
        failed[0] += sum(not row.ok for row in rows)
        bar.update(len(rows))
        bar.set_postfix(failed=failed[0], refresh=False)
        if isinstance(error, BackendUnavailableError):
            raise GroundingAborted(str(error)) from error
        if isinstance(error, Exception) and not isinstance(error, GroundingAborted):
            raise GroundingAborted(f"backend {backend.name} failed: {type(error).__name__}: {error}") from error
        if error is not None:
            raise error

    try:
        while unclaimed or claimed or pending or elsewhere:
            batches = []
            while len(pending) + len(batches) < window and (claimed or unclaimed):
                if not claimed:
                    claim_more()
                    continue
                batches.append([claimed.popleft() for _ in range(min(batch_size, len(claimed)))])
            for future in dispatcher.submit(batches) if batches else []:
                pending.add(future)
                future.add_done_callback(finished.put)
            try:
                ready = [finished.get(timeout=tick)]  # Ctrl-C lands here
                if len(pending) > 1:
                    time.sleep(COMMIT_EVERY_S)  # let more finish: one commit for many rows
            except queue.Empty:
                ready = []
            while not finished.empty():  # under load several batches finish together: one commit
                ready.append(finished.get())
            if ready:
                collect(ready)
            if time.monotonic() >= next_renewal:
                store.renew_claims(owner, claim_ttl_s)
                next_renewal = time.monotonic() + claim_ttl_s / 3
            if elsewhere and not ready:
                look_elsewhere()
                if elsewhere and not (pending or claimed or unclaimed) and not told[0]:
                    told[0] = True
                    bar.write(f"waiting for {len(elsewhere)} items another run on this tag is "
                              "describing (Ctrl-C stops this run; they stay with the other)", file=stream)
    except BaseException:
        for future in list(pending):
            future.cancel()
        # batches that finished while we were stopping are saved too
        collect([f for f in pending if f.done() and not f.cancelled() and f.exception() is None])
        raise
    finally:
        dispatcher.shutdown()
        store.release_claims(owner)
        bar.close()
    return time.perf_counter() - begun
