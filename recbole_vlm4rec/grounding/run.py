"""The grounding pipeline: items -> (cache check) -> images -> backend -> validated rows -> files.

:func:`run_grounding` is what ``vlm4rec ground`` runs:

1. *plan*: render each item's prompt, hash its image bytes (no decoding) and look the item up in
   the cache (``grounding/store.py``). Current ``ok`` rows are cache hits; items whose image cannot
   be read get a failed row with the reason (``missing``, ``no_image``...); the rest is to do.
2. *describe*: batches of ``backend.batch_size`` items go to ``backend.concurrency`` worker
   threads; a worker decodes and validates the images (``data/images.load_image``), calls the
   backend, and checks each answer against the prompt (free text not empty nor degenerate; JSON
   valid for its slots). The main thread commits every finished batch to the cache at once, so a
   crash or Ctrl-C loses at most the batches in flight.
   ``backend.preflight()`` runs first when there is anything to do, so a backend that cannot work
   at all (unreachable endpoint, missing weights) fails once, before any item.
3. *export*: the descriptions ``.jsonl`` is rewritten atomically from the cache with the run's
   current rows, also after Ctrl-C or a backend error, and a summary counts successes, failures
   by reason and cache hits.
"""

from __future__ import annotations

import queue
import sys
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, TextIO

from tqdm.auto import tqdm

from recbole_vlm4rec.formats.images import DEFAULT_MAX_SIDE, ImageError, image_sha256, load_image, read_image_bytes
from recbole_vlm4rec.formats.images import REASONS as IMAGE_REASONS
from recbole_vlm4rec.grounding.backends.base import GroundingBackend, GroundingRequest
from recbole_vlm4rec.grounding.items import GroundingItem
from recbole_vlm4rec.grounding.prompts import OutputRejected, PromptSpec
from recbole_vlm4rec.grounding.store import DescriptionRow, DescriptionStore, export_jsonl



class GroundingAborted(RuntimeError):
    """The backend failed as a whole (not per item); rows finished before it are saved."""


@dataclass
class _Task:
    item: GroundingItem
    prompt: str
    prompt_key: str
    image_sha256: str


@dataclass
class GroundingSummary:
    """What a run did; ``failures`` counts failed rows of the run by reason."""

    total: int = 0
    described: int = 0          # new ok rows
    cached: int = 0             # current rows reused from the cache
    failures: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one failed item and its detail
    to_do: int = 0              # items sent (or, in a dry run, that would be sent) to the backend
    exported: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    describe_seconds: float = 0.0
    output: Path | None = None

    @property
    def ok(self) -> int:
        return self.described + self.cached

    @property
    def not_done(self) -> int:
        return self.total - self.ok - sum(self.failures.values())

    def count_failures(self, rows) -> None:
        for row in sorted(rows, key=lambda row: row.item_id):
            if not row.ok:
                self.failures[row.reason] += 1
                self.examples.setdefault(row.reason, f"item {row.item_id}: {row.detail}")

    def format(self) -> str:
        rate = self.to_do / self.describe_seconds if self.describe_seconds > 0 else 0.0
        lines = [
            f"items        {self.total}",
            f"ok           {self.ok}  ({self.described} described now, {self.cached} cache hits)",
            f"failed       {sum(self.failures.values())}",
        ]
        lines += [f"  {reason:<18} {count:<6} e.g. {self.examples.get(reason, '')}"[:160].rstrip()
                  for reason, count in self.failures.most_common()]
        if self.not_done:
            lines.append(f"not done     {self.not_done}  (interrupted: rerun the same command to go on)")
        sent = f" ({rate:.2f} items/s sent to the backend)" if self.to_do and rate else ""
        lines.append(f"time         {self.seconds:.1f} s{sent}")
        if self.output:
            lines.append(f"wrote        {self.output} ({self.exported} rows)")
        return "\n".join(lines)


def run_grounding(
    items: Sequence[GroundingItem],
    prompt: PromptSpec,
    backend: GroundingBackend,
    store: DescriptionStore,
    output: str | Path,
    *,
    dry_run: bool = False,
    retry_failed: bool = True,
    max_side: int | None = DEFAULT_MAX_SIDE,
    progress: bool = True,
    stream: TextIO | None = None,
) -> GroundingSummary:
    """Describe ``items`` (already limited by the caller) and write ``output``; see module doc.

    ``retry_failed``: failed rows of the cache are redone (False keeps them as cache hits).
    Ctrl-C stops the run: rows done so far are saved and exported and the summary says
    ``interrupted``. A backend failing as a whole raises GroundingAborted (``.summary`` attached)
    after the same saving.
    """
    start = time.perf_counter()
    stream = stream or sys.stderr
    summary = GroundingSummary(total=len(items))
    meta = _RowMaker(prompt, backend)
    cached_rows = store.get_many([item.item_id for item in items])
    current: dict[str, DescriptionRow] = {}
    image_failures: list[DescriptionRow] = []
    tasks: list[_Task] = []
    for item in tqdm(items, desc="checking cache", unit="item", disable=not progress or dry_run,
                     file=stream, leave=False):
        rendered = prompt.render(item.context)
        key = prompt.prompt_key(rendered)
        try:
            sha = image_sha256(read_image_bytes(item.image))
        except ImageError as error:
            row = meta.failed(item.item_id, key, None, error.reason, _detail(error))
            current[item.item_id] = row
            image_failures.append(row)
            continue
        row = cached_rows.get(item.item_id)
        if row is not None and meta.is_current(row, key, sha) and (row.ok or not retry_failed):
            current[item.item_id] = row
            summary.cached += row.ok
        else:
            tasks.append(_Task(item, rendered, key, sha))
    summary.to_do = len(tasks)
    if dry_run:
        _print_dry_run(tasks, image_failures, summary, prompt, backend, stream)
        summary.count_failures(current.values())
        return summary
    store.put_many(image_failures)
    if tasks:
        backend.preflight()  # e.g. an unreachable endpoint or missing weights: fail once, not per item
    described: dict[str, DescriptionRow] = {}
    try:
        _describe_all(tasks, prompt, backend, store, meta, max_side, progress, stream, summary, described)
    except KeyboardInterrupt:
        summary.interrupted = True  # reported by the summary (and exit code 130 in the CLI)
    except GroundingAborted as error:
        error.summary = summary  # type: ignore[attr-defined]
        raise
    finally:
        current.update(described)
        summary.count_failures(current.values())
        summary.described = sum(row.ok for row in current.values()) - summary.cached
        summary.exported = export_jsonl(output, current.values())
        summary.output = Path(output)
        summary.seconds = time.perf_counter() - start
    return summary


class _RowMaker:
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


def _describe_batch(
    batch: list[_Task], prompt: PromptSpec, backend: GroundingBackend, meta: _RowMaker,
    max_side: int | None,
) -> list[DescriptionRow]:
    """Worker: decode images, ask the backend, validate answers. One row per task, in order."""
    rows: dict[str, DescriptionRow] = {}
    requests, notes = [], {}
    for task in batch:
        item_id = task.item.item_id
        try:
            data = read_image_bytes(task.item.image)
            loaded = load_image(data, max_side=max_side, name=task.item.image)
        except ImageError as error:
            rows[item_id] = meta.failed(item_id, task.prompt_key, task.image_sha256, error.reason, _detail(error))
            continue
        notes[item_id] = "; ".join(loaded.notes)
        task.image_sha256 = loaded.sha256  # what was described, even if the file changed since
        unchanged = not loaded.notes and data[:3] in (b"\xff\xd8\xff", b"\x89PN")  # JPEG / PNG as is
        requests.append(GroundingRequest(item_id, loaded.image, loaded.sha256, task.prompt,
                                         prompt.structured_slots, data if unchanged else None))
    outputs = backend.describe(requests) if requests else []
    if len(outputs) != len(requests):
        raise GroundingAborted(f"backend {backend.name} returned {len(outputs)} outputs for {len(requests)} requests")
    by_id = {task.item.item_id: task for task in batch}
    for request, output in zip(requests, outputs):
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
                                        fields, notes[request.item_id])
    return [rows[task.item.item_id] for task in batch]


def _describe_all(
    tasks: list[_Task], prompt: PromptSpec, backend: GroundingBackend, store: DescriptionStore,
    meta: _RowMaker, max_side: int | None, progress: bool, stream: TextIO, summary: GroundingSummary,
    done: dict[str, DescriptionRow],
) -> None:
    """Run the batches on worker threads, committing finished batches into the cache and ``done``
    (filled as it goes, so the caller has every saved row even after an exception)."""
    if not tasks:
        return
    batch_size, workers = max(1, backend.batch_size), max(1, backend.concurrency)
    batches = [tasks[i:i + batch_size] for i in range(0, len(tasks), batch_size)]
    window = 2 * workers  # bounded look-ahead: never hold decoded images of the whole catalogue
    bar = tqdm(total=len(tasks), desc=f"grounding ({backend.name})", unit="item",
               disable=not progress, file=stream, dynamic_ncols=True)
    started = time.perf_counter()
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grounding")
    finished: queue.SimpleQueue[Future] = queue.SimpleQueue()  # O(1) per completion at any concurrency
    pending: set[Future] = set()
    next_batch, failed = 0, [0]

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
        store.put_many(rows)
        done.update((row.item_id, row) for row in rows)
        failed[0] += sum(not row.ok for row in rows)
        bar.update(len(rows))
        bar.set_postfix(failed=failed[0], refresh=False)
        if isinstance(error, Exception) and not isinstance(error, GroundingAborted):
            raise GroundingAborted(f"backend {backend.name} failed: {type(error).__name__}: {error}") from error
        if error is not None:
            raise error

    try:
        while next_batch < len(batches) or pending:
            while next_batch < len(batches) and len(pending) < window:
                future = executor.submit(_describe_batch, batches[next_batch], prompt, backend, meta, max_side)
                pending.add(future)
                future.add_done_callback(finished.put)
                next_batch += 1
            ready = [finished.get()]  # blocks; Ctrl-C lands here
            while not finished.empty():  # under load several batches finish together: one commit
                ready.append(finished.get())
            collect(ready)
    except BaseException:
        for future in list(pending):
            future.cancel()
        # batches that finished while we were stopping are saved too
        collect([f for f in pending if f.done() and not f.cancelled() and f.exception() is None])
        raise
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        bar.close()
        summary.describe_seconds = time.perf_counter() - started


def _detail(error: ImageError) -> str:
    """Where and what: the file and the error (or the reason's description)."""
    return f"{error.source}: {error.detail or IMAGE_REASONS[error.reason]}"


def _print_dry_run(
    tasks: list[_Task], image_failures: list[DescriptionRow], summary: GroundingSummary,
    prompt: PromptSpec, backend: GroundingBackend, stream: TextIO, show: int = 3,
) -> None:
    print(f"dry run: backend {backend.name} ({backend.model_id()}), prompt {prompt.name} "
          f"v{prompt.version} [{prompt.format}, domain {prompt.domain}]", file=stream)
    print(f"  {summary.total} items: {len(tasks)} to describe, {summary.cached} cache hits, "
          f"{len(image_failures)} without a usable image", file=stream)
    for reason, count in Counter(row.reason for row in image_failures).most_common():
        print(f"    {reason:<14} {count}", file=stream)
    for task in tasks[:show]:
        print(f"\n--- item {task.item.item_id}  image {task.item.image}\n{task.prompt}", file=stream)
    if len(tasks) > show:
        print(f"\n... and {len(tasks) - show} more items (nothing was sent or written)", file=stream)
