"""``vlm4rec encode --modality lvlm``: item images + a grounding prompt -> LVLM hidden-state vectors.

Items and prompts are the grounding stage's (``grounding/items.py``, ``grounding/prompts.py``): the
same ``<name>.item`` image column, the same prompt files (``structured``, ``preference`` or a path)
with optional catalogue context; images go through the shared loader (``formats/images.py``).

Cache: the per-input vector cache of every encoder (``features/encode_cache.sqlite``), namespace
``lvlm:<embedder fingerprint>`` (model, weights, pooling, layer, dtype), key = sha256 of the image
bytes' sha256 and the rendered prompt's key: a rerun embeds only new or changed images / prompts.

With ``describe_to`` (transformers only: one generate pass per batch gives vectors and answers) the
answers are validated like ``vlm4rec ground`` does and written as a descriptions file
(``descriptions/<tag>.jsonl``, formats/descriptions.py) from a grounding cache beside it
(``<tag>.sqlite``). An item is redone when its vector or its current description is missing.

Output: feature ``<feature>.npy/.tokens/.json`` (``kind: lvlm``; the ``.json`` also records the
model id, pooling, layer and prompt), vectors L2-normalised; skipped items with their reasons.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recbole_vlm4rec.encoding.cache import CACHE_FILE_NAME, VectorCache
from recbole_vlm4rec.encoding.encode import (EncodeReport, Skipped, usable_rows,
                                             write_encoded_feature)
from recbole_vlm4rec.encoding.lvlm import LVLMEmbedder, LVLMOutput
from recbole_vlm4rec.formats.images import (DEFAULT_MAX_SIDE, ImageError, image_sha256, load_image,
                                            read_image_bytes)
from recbole_vlm4rec.formats.vectors import l2_normalise
from recbole_vlm4rec.grounding.backends.base import GroundingRequest
from recbole_vlm4rec.grounding.items import GroundingItem
from recbole_vlm4rec.grounding.prompts import OutputRejected, PromptSpec
from recbole_vlm4rec.grounding.store import DescriptionRow, DescriptionStore, export_jsonl


class _Plan:
    """One item to embed: its rendered prompt, the prompt's key and the image's sha256."""

    def __init__(self, item: GroundingItem, prompt: str, prompt_key: str, sha: str) -> None:
        self.item, self.prompt, self.prompt_key, self.sha = item, prompt, prompt_key, sha
        self.key = hashlib.sha256(f"{sha}\n{prompt_key}".encode()).hexdigest()


class _Descriptions:
    """The answers written beside the vectors: a grounding cache + the exported JSONL."""

    def __init__(self, path: Path, prompt: PromptSpec, backend: str, model_id: str) -> None:
        self.path, self.prompt, self.backend, self.model_id = path, prompt, backend, model_id
        self.store = DescriptionStore(path.with_suffix(".sqlite"))

    def row(self, item_id: str, prompt_key: str, sha: str | None, **values: Any) -> DescriptionRow:
        return DescriptionRow(item_id=item_id, backend=self.backend, model=self.model_id,
                              prompt=self.prompt.name, prompt_version=self.prompt.version,
                              prompt_key=prompt_key, image_sha256=sha, **values)

    def failed(self, item_id: str, prompt_key: str, sha: str | None, reason: str,
               detail: str) -> DescriptionRow:
        return self.row(item_id, prompt_key, sha, status="failed", text=None, reason=reason,
                        detail=detail)

    def from_answer(self, plan: _Plan, text: str | None) -> DescriptionRow:
        try:
            rendered, fields = self.prompt.parse(text)
        except OutputRejected as rejected:
            return self.failed(plan.item.item_id, plan.prompt_key, plan.sha, rejected.reason,
                               rejected.detail)
        return self.row(plan.item.item_id, plan.prompt_key, plan.sha, status="ok", text=rendered,
                        reason=None, detail="", fields=fields)

    def current(self, plans: Sequence[_Plan]) -> set[str]:
        """Items whose cached row is current (same model, prompt and image)."""
        cached = self.store.get_many([plan.item.item_id for plan in plans])
        done = set()
        for plan in plans:
            row = cached.get(plan.item.item_id)
            if row is not None and (row.backend, row.model, row.prompt_key, row.image_sha256) == (
                    self.backend, self.model_id, plan.prompt_key, plan.sha):
                done.add(row.item_id)
        return done

    def save(self, rows: Sequence[DescriptionRow]) -> None:
        self.store.put_many(rows)

    def export(self) -> int:
        # the whole cache: rows of other items stay, and a failed attempt the cache refused to
        # write over a good row is not exported either
        count = export_jsonl(self.path, self.store.all_rows())
        self.store.close()
        return count


def encode_lvlm_feature(items: Sequence[GroundingItem], prompt: PromptSpec,
                        embedder: LVLMEmbedder, out_dir: str | Path, feature: str, source: str,
                        use_cache: bool = True, describe_to: str | Path | None = None,
                        max_side: int | None = DEFAULT_MAX_SIDE, show_progress: bool = True,
                        extra_meta: dict[str, Any] | None = None) -> EncodeReport:
    """Embed every item's image with its rendered prompt and write feature ``feature``."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    if describe_to is not None and not embedder.describes:
        raise ValueError(f"the {embedder.name} LVLM backend cannot describe while embedding "
                         "(--describe needs --backend transformers)")
    skipped: list[Skipped] = []
    descriptions = (_Descriptions(Path(describe_to), prompt, embedder.name,
                                  embedder.description_model_id())
                    if describe_to is not None else None)
    plans = _plan(items, prompt, skipped, descriptions)
    fingerprint = embedder.fingerprint()
    cache_path = Path(out_dir) / CACHE_FILE_NAME if use_cache else None
    with VectorCache(cache_path, f"lvlm:{fingerprint}") as cache:
        vectors = cache.get_many(plan.key for plan in plans)
        hits = sum(plan.key in vectors for plan in plans)
        described = descriptions.current(plans) if descriptions else set()
        todo = [plan for plan in plans if plan.key not in vectors
                or (descriptions is not None and plan.item.item_id not in described)]
        if descriptions is not None:  # a vector without its current description is redone
            redo = {plan.key for plan in todo}
            hits = sum(plan.key in vectors and plan.key not in redo for plan in plans)
        fresh_keys: set[str] = set()
        if todo:
            embedder.preflight()
        try:
            with tqdm(total=len(todo), desc=f"encode {feature}", unit="img",
                      disable=not show_progress or not todo) as bar:
                for start in range(0, len(todo), embedder.batch_size):
                    chunk = todo[start:start + embedder.batch_size]
                    fresh = _embed_chunk(chunk, embedder, max_side, skipped, descriptions)
                    cache.put_many(fresh)
                    vectors.update(fresh)
                    fresh_keys.update(fresh)
                    bar.update(len(chunk))
        finally:
            if descriptions is not None:
                descriptions.export()
    failed = {s.item_id for s in skipped}
    kept = [plan for plan in plans if plan.key in vectors and plan.item.item_id not in failed]
    tokens = [plan.item.item_id for plan in kept]
    matrix = (np.stack([vectors[plan.key] for plan in kept]) if kept
              else np.zeros((0, 0), np.float32))
    meta = {"prompt": prompt.name, "prompt_version": prompt.version, "domain": prompt.domain,
            "lvlm_backend": embedder.name, **(extra_meta or {})}
    if descriptions is not None:
        meta["descriptions_written"] = str(describe_to)
    n_encoded = sum(plan.key in fresh_keys for plan in kept)
    return write_encoded_feature(out_dir, feature, tokens, matrix, skipped, hits, n_encoded,
                                 started, embedder.model_id(), fingerprint, source, kind="lvlm",
                                 extra_meta=meta)


def _plan(items: Sequence[GroundingItem], prompt: PromptSpec, skipped: list[Skipped],
          descriptions: _Descriptions | None) -> list[_Plan]:
    """Render prompts and hash images (no decoding); unreadable images become skip records."""
    plans, failed_rows = [], []
    for item in items:
        rendered = prompt.render(item.context)
        key = prompt.prompt_key(rendered)
        try:
            sha = image_sha256(read_image_bytes(item.image))
        except ImageError as error:
            skipped.append(Skipped(item.item_id, error.reason, error.detail or error.source))
            if descriptions is not None:
                failed_rows.append(descriptions.failed(item.item_id, key, None, error.reason,
                                                       f"{error.source}: {error.detail}"))
            continue
        plans.append(_Plan(item, rendered, key, sha))
    if descriptions is not None:
        descriptions.save(failed_rows)
    return plans


def _embed_chunk(chunk: Sequence[_Plan], embedder: LVLMEmbedder, max_side: int | None,
                 skipped: list[Skipped], descriptions: _Descriptions | None
                 ) -> dict[str, np.ndarray]:
    """Decode, embed and validate one chunk; returns its usable vectors by cache key."""
    requests, by_id, rows = [], {}, []
    for plan in chunk:
        try:
            data = read_image_bytes(plan.item.image)
            loaded = load_image(data, max_side=max_side, name=plan.item.image)
        except ImageError as error:
            skipped.append(Skipped(plan.item.item_id, error.reason,
                                   f"{error.source}: {error.detail}"))
            if descriptions is not None:
                rows.append(descriptions.failed(plan.item.item_id, plan.prompt_key, plan.sha,
                                                error.reason, error.detail))
            continue
        unchanged = not loaded.notes and data[:3] in (b"\xff\xd8\xff", b"\x89PN")
        requests.append(GroundingRequest(plan.item.item_id, loaded.image, loaded.sha256,
                                         plan.prompt, None, data if unchanged else None))
        by_id[plan.item.item_id] = plan
    outputs: list[LVLMOutput] = embedder.embed(requests) if requests else []
    if len(outputs) != len(requests):
        raise RuntimeError(f"LVLM backend {embedder.name} returned {len(outputs)} outputs for "
                           f"{len(requests)} requests")
    fresh: dict[str, np.ndarray] = {}
    for output in outputs:
        plan = by_id[output.item_id]
        if output.error or output.vector is None:
            skipped.append(Skipped(output.item_id, output.error or "no_vector", output.detail))
            if descriptions is not None:
                rows.append(descriptions.failed(output.item_id, plan.prompt_key, plan.sha,
                                                output.error or "no_vector", output.detail))
            continue
        vector = l2_normalise(np.asarray(output.vector, dtype=np.float32)[None, :])
        if usable_rows(vector)[0]:
            fresh[plan.key] = vector[0]
        else:
            skipped.append(Skipped(output.item_id, "non_finite_vector",
                                   "hidden states NaN/inf or zero"))
        if descriptions is not None:
            rows.append(descriptions.from_answer(plan, output.text))
    if descriptions is not None:
        descriptions.save(rows)
    return fresh
