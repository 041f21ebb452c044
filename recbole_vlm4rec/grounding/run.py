"""The grounding pipeline: items -> (cache check) -> images -> backend -> validated rows -> files.

:func:`run_grounding` is what ``vlm4rec ground`` runs:

1. *plan*: render each item's prompt, hash its image bytes (no decoding) and look the item up in
   the cache (``grounding/store.py``). Current ``ok`` rows are cache hits; items whose image cannot
   be read get a failed row with the reason (``missing``, ``no_image``...); the rest is to do.
2. *describe* (``grounding/workers.py``): batches of ``backend.batch_size`` items are claimed in
   the cache (two runs on one tag share the work), their images decoded and validated
   (``formats/images.load_image``), sent to the backend (worker threads, or the event loop of an
   async backend), and each answer checked against the prompt (free text not empty nor
   degenerate; JSON valid for its slots). The main thread commits every finished batch to the
   cache at once, so a crash or Ctrl-C loses at most the batches in flight.
   ``backend.preflight()`` runs first when there is anything to do, so a backend that cannot work
   at all (unreachable endpoint, missing weights) fails once, before any item.
3. *export*: the descriptions ``.jsonl`` is rewritten atomically from the whole cache, also after
   Ctrl-C or a backend error (it never loses a row the cache holds), and a summary counts
   successes, failures by reason and cache hits.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, TextIO

from tqdm.auto import tqdm

from recbole_vlm4rec.formats.images import DEFAULT_MAX_SIDE, ImageError, image_sha256, read_image_bytes
from recbole_vlm4rec.grounding.backends.base import GroundingBackend
from recbole_vlm4rec.grounding.items import GroundingItem
from recbole_vlm4rec.grounding.prompts import PromptSpec
from recbole_vlm4rec.grounding.store import (
    CLAIM_TTL_S,
    DescriptionRow,
    DescriptionStore,
    export_jsonl,
    new_claim_owner,
)
from recbole_vlm4rec.grounding.workers import GroundingAborted, RowMaker, Task, describe_all, image_detail

__all__ = ["GroundingAborted", "GroundingSummary", "TagHeldByAnotherDescriber", "run_grounding"]


class TagHeldByAnotherDescriber(ValueError):
    """The tag's good rows were made by another backend, model or prompt (a user mistake, or a
    switch that needs ``--redo``); the message names them and both ways on."""


@dataclass
class GroundingSummary:
    """What a run did; ``failures`` counts failed rows of the run by reason."""

    total: int = 0
    described: int = 0          # new ok rows
    cached: int = 0             # current rows reused from the cache
    by_other_run: int = 0       # rows a concurrent run on the same tag made meanwhile
    failures: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one failed item and its detail
    to_do: int = 0              # items sent (or, in a dry run, that would be sent) to the backend
    exported: int = 0
    kept: int = 0               # exported rows of items outside this run, or made by another backend/model/prompt
    kept_good: int = 0          # items whose attempt failed: their earlier ok row stays
    interrupted: bool = False
    aborted: bool = False
    seconds: float = 0.0
    describe_seconds: float = 0.0
    output: Path | None = None
    backend_report: list[str] = field(default_factory=list)  # e.g. per-server request counts

    @property
    def ok(self) -> int:
        return self.described + self.cached + self.by_other_run

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
            f"ok           {self.ok}  ({self.described} described now, {self.cached} cache hits"
            + (f", {self.by_other_run} by a concurrent run)" if self.by_other_run else ")"),
            f"failed       {sum(self.failures.values())}",
        ]
        lines += [f"  {reason:<18} {count:<6} e.g. {self.examples.get(reason, '')}"[:160].rstrip()
                  for reason, count in self.failures.most_common()]
        if self.kept_good:
            lines.append(f"kept         {self.kept_good}  items whose attempt failed keep their earlier "
                         "description (a failure never replaces one; rerun to retry them)")
        if self.not_done:
            why = "the run stopped on the error below" if self.aborted else \
                "interrupted: rerun the same command to go on"
            lines.append(f"not done     {self.not_done}  ({why})")
        if len(self.backend_report) == 1:
            lines.append(f"server       {self.backend_report[0]}")
        elif self.backend_report:
            lines.append("servers      each request went to the one with the fewest in flight; a "
                         "failed one was retried on another")
            lines += [f"  {line}" for line in self.backend_report]
        sent = f" ({rate:.2f} items/s sent to the backend)" if self.to_do and rate else ""
        lines.append(f"time         {self.seconds:.1f} s{sent}")
        if self.output:
            kept = f"; {self.kept} of them from earlier runs: other items, or another model or prompt" \
                if self.kept else ""
            lines.append(f"wrote        {self.output} ({self.exported} rows{kept})")
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
    redo: bool = False,
    max_side: int | None = DEFAULT_MAX_SIDE,
    progress: bool = True,
    stream: TextIO | None = None,
    claim_ttl_s: float = CLAIM_TTL_S,
) -> GroundingSummary:
    """Describe ``items`` (already limited by the caller) and write ``output``; see module doc.

    ``retry_failed``: failed rows of the cache are redone (False keeps them as cache hits).
    ``redo``: every item is described again, current rows too, and the tag may hold another
    describer's rows (otherwise TagHeldByAnotherDescriber); a good row is still replaced only by
    a good one.
    Ctrl-C stops the run: rows done so far are saved and exported and the summary says
    ``interrupted``. A backend failing as a whole raises GroundingAborted (``.summary`` attached)
    after the same saving. ``claim_ttl_s``: how long this run's claims outlive it if it is killed.
    """
    start, started_at = time.perf_counter(), time.time()
    stream = stream or sys.stderr
    summary = GroundingSummary(total=len(items))
    meta = RowMaker(prompt, backend)
    _check_describer(store, meta, redo)
    cached_rows = store.get_many([item.item_id for item in items])
    current: dict[str, DescriptionRow] = {}
    image_failures: list[DescriptionRow] = []
    tasks: list[Task] = []
    for item in tqdm(items, desc="checking cache", unit="item", disable=not progress or dry_run,
                     file=stream, leave=False):
        rendered = prompt.render(item.context)
        key = prompt.prompt_key(rendered)
        try:
            sha = image_sha256(read_image_bytes(item.image))
        except ImageError as error:
            row = meta.failed(item.item_id, key, None, error.reason, image_detail(error))
            current[item.item_id] = row
            image_failures.append(row)
            continue
        row = cached_rows.get(item.item_id)
        if row is not None and not redo and meta.is_current(row, key, sha) and (row.ok or not retry_failed):
            current[item.item_id] = row
            summary.cached += row.ok
        else:
            tasks.append(Task(item, rendered, key, sha))
    summary.to_do = len(tasks)
    if dry_run:
        _print_dry_run(tasks, image_failures, summary, prompt, backend, stream)
        summary.count_failures(current.values())
        return summary
    kept_good = store.put_many(image_failures)
    if tasks:
        backend.preflight()  # e.g. an unreachable endpoint or missing weights: fail once, not per item
    described: dict[str, DescriptionRow] = {}
    by_other_run: dict[str, DescriptionRow] = {}
    try:
        summary.describe_seconds = describe_all(
            tasks, prompt, backend, store, meta, max_side=max_side, owner=new_claim_owner(),
            started=started_at, done=described, by_other_run=by_other_run, progress=progress,
            stream=stream, claim_ttl_s=claim_ttl_s, kept_good=kept_good)
    except KeyboardInterrupt:
        summary.interrupted = True  # reported by the summary (and exit code 130 in the CLI)
    except GroundingAborted as error:
        summary.aborted = True
        error.summary = summary  # type: ignore[attr-defined]
        raise
    finally:
        current.update(described)
        current.update(by_other_run)
        summary.count_failures(current.values())
        summary.kept_good = len(kept_good)
        summary.described = sum(row.ok for row in described.values())
        summary.by_other_run = sum(row.ok for row in by_other_run.values())
        rows = store.all_rows()  # the whole cache: a run over some items, or one that stopped, drops none
        summary.exported = export_jsonl(output, rows)
        summary.kept = sum(row.item_id not in current for row in rows)
        summary.output = Path(output)
        summary.seconds = time.perf_counter() - start
        summary.backend_report = backend.report()
    return summary


def _check_describer(store: DescriptionStore, meta: RowMaker, redo: bool) -> None:
    """One tag, one describer: refuse a run whose backend, model or prompt differs from every
    good row's the tag holds, unless ``redo`` asks for the switch."""
    held = store.describers()
    mine = (meta.backend_name, meta.model, meta.prompt.name)
    if redo or not held or mine in held:
        return
    (backend, model, prompt), count = max(held.items(), key=lambda entry: entry[1])
    others = f" (and {len(held) - 1} other describers)" if len(held) > 1 else ""
    raise TagHeldByAnotherDescriber(
        f"{store.path.with_suffix('.jsonl').name} holds {count} good descriptions by {backend} / "
        f"{model} / prompt {prompt}{others}, not by this run's {mine[0]} / {mine[1]} / prompt "
        f"{mine[2]}; give this run its own --tag, or pass --redo to describe every item again "
        "with it (a good row is replaced only by a good one)")


def _print_dry_run(
    tasks: list[Task], image_failures: list[DescriptionRow], summary: GroundingSummary,
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
