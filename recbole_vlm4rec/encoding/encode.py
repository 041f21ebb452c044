"""Encode item texts or images into a feature file, with a per-input cache and counted skips.

Inputs:

descriptions file (``dataset/<name>/descriptions/<tag>.jsonl``, written by ``vlm4rec ground``)
    Read by formats/descriptions.py: only ``ok`` rows with non-empty text are encoded; failed,
    empty and malformed rows are kept as skip records (with their reason and line), and rows
    superseded by a later row for the same item are counted.
item table (``<name>.item`` atomic file, or any ``.csv`` / ``.tsv``)
    Texts are rendered per row from a ``{column}`` template; images come from an image column
    whose values are paths relative to the table's folder (or absolute). Item ids must be unique.

Output: ``save_feature`` files in the features folder (``<feature>.npy``, ``.tokens``, ``.json``);
the ``.json`` records the encoder, its fingerprint, the source, counts and every skipped item with
its reason. Items that are skipped get no row, so the dataset loader reports them as uncovered.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from recbole_vlm4rec.formats import descriptions
from recbole_vlm4rec.formats.features import FEATURE_META_VERSION, save_feature
from recbole_vlm4rec.formats.images import (
    ImageError,
    image_sha256,
    load_image,
    read_image_bytes,
    resolve_image_reference,
)
from recbole_vlm4rec.encoding.cache import CACHE_FILE_NAME, VectorCache, text_key
from recbole_vlm4rec.encoding.image import ImageEncoder
from recbole_vlm4rec.formats.vectors import l2_normalise
from recbole_vlm4rec.formats import items as item_tables
from recbole_vlm4rec.formats.items import render_item_texts
from recbole_vlm4rec.encoding.text import TextEncoder, encoder_fingerprint


class EncodeInputError(ValueError):
    """The input table or descriptions file cannot be used; the message names file and line."""


@dataclass
class Skipped:
    item_id: str
    reason: str
    detail: str = ""


@dataclass
class TextInputs:
    tokens: list[str]
    texts: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    n_superseded: int = 0  # descriptions rows replaced by a later row for the same item


@dataclass
class EncodeReport:
    feature: str
    path: Path
    n_rows: int
    dim: int
    n_encoded: int  # distinct inputs (texts / image files) that went through the encoder
    n_cache_hits: int  # items whose vector came from the on-disk cache
    skipped: list[Skipped]
    seconds: float
    encoder: str
    n_superseded: int = 0
    n_shared: int = 0  # items that reused the vector of an identical input encoded in this run

    def reasons(self) -> Counter:
        return Counter(s.reason for s in self.skipped)

    def summary(self) -> str:
        lines = [
            f"feature '{self.feature}': {self.n_rows} items, {self.dim}-d, {self.encoder} "
            f"-> {self.path} ({self.seconds:.1f}s)",
            f"  encoded now: {self.n_encoded}, from cache: {self.n_cache_hits}"
            + (f"; {self.n_shared} items reused the vector of an identical input encoded in "
               "this run" if self.n_shared else ""),
        ]
        if self.skipped:
            counts = ", ".join(f"{r}: {n}" for r, n in self.reasons().most_common())
            examples = "; ".join(
                f"{s.item_id} ({s.reason}{': ' + s.detail[:80] if s.detail else ''})"
                for s in self.skipped[:3]
            )
            lines.append(f"  no vector for {len(self.skipped)} items ({counts}); e.g. {examples}")
        if self.n_superseded:
            lines.append(f"  {self.n_superseded} older rows superseded by a later row for the "
                         "same item (last row wins)")
        return "\n".join(lines)


# ---------------------------------------------------------------- reading inputs

def read_descriptions(path: str | Path) -> TextInputs:
    """Texts to encode from a descriptions file (formats/descriptions.py): ``ok`` rows with text;
    failed, empty and malformed rows become skip records with their reason."""
    try:
        parsed = descriptions.read_descriptions(path)
    except descriptions.DescriptionsFileError as error:
        raise EncodeInputError(str(error)) from error
    skipped = [Skipped(f"{parsed.path.name}:{line}", "malformed_line", why)
               for line, why in parsed.malformed]
    texts = parsed.texts()
    for item_id, row in parsed.rows.items():
        if item_id in texts:
            continue
        if row["status"] == "failed":
            why = row.get("reason") or "unknown"
            detail = f"{why}: {row['detail']}" if row.get("detail") else str(why)
            skipped.append(Skipped(item_id, "failed", detail))
        elif row["status"] != "ok":
            skipped.append(Skipped(item_id, "bad_status",
                                   f"{parsed.where(item_id)}: status {row['status']!r}"))
        else:
            skipped.append(Skipped(item_id, "empty_text", parsed.where(item_id)))
    return TextInputs(list(texts), list(texts.values()), skipped, parsed.superseded)


def read_item_table(path: str | Path) -> pd.DataFrame:
    """``formats.items.read_item_table``, failing as an input error of this stage."""
    try:
        return item_tables.read_item_table(path)
    except FileNotFoundError as error:
        raise EncodeInputError(str(error)) from error


def _check_ids(items: pd.DataFrame, item_field: str, source: Path, needed: Sequence[str]) -> None:
    missing = [c for c in [item_field, *needed] if c not in items.columns]
    if missing:
        raise EncodeInputError(
            f"{source}: no column {', '.join(repr(c) for c in missing)} "
            f"(columns: {', '.join(items.columns)})"
        )
    ids = items[item_field].str.strip()
    if (ids == "").any():
        row = int(np.flatnonzero((ids == "").to_numpy())[0])
        raise EncodeInputError(f"{source}: data row {row + 1} has an empty {item_field!r}")
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise EncodeInputError(
            f"{source}: {len(duplicated)} duplicate {item_field!r} values, e.g. "
            f"{', '.join(repr(v) for v in duplicated.unique()[:5])}"
        )


def texts_from_table(path: str | Path, template: str, item_field: str = "item_id") -> TextInputs:
    """One text per item rendered from ``template``; rows whose fields are all empty are skipped."""
    items = read_item_table(path)
    _check_ids(items, item_field, Path(path), [])
    try:
        tokens, texts, without_text = render_item_texts(items, template, item_field, path)
    except KeyError as error:
        raise EncodeInputError(str(error.args[0])) from error
    return TextInputs(tokens, texts, [Skipped(t, "empty_text", "template fields empty")
                                      for t in without_text])


def image_refs_from_table(path: str | Path, image_column: str,
                          item_field: str = "item_id") -> list[tuple[str, str]]:
    """``[(item token, image reference)]`` in table order."""
    items = read_item_table(path)
    _check_ids(items, item_field, Path(path), [image_column])
    return list(zip(items[item_field].str.strip(), items[image_column]))


# ---------------------------------------------------------------- encoding

def usable_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows an encoder got right: finite and not all zero."""
    return np.isfinite(matrix).all(axis=1) & (np.abs(matrix).sum(axis=1) > 0)


def encode_texts(inputs: TextInputs, encoder: TextEncoder, cache: VectorCache,
                 show_progress: bool = True,
                 chunk_size: int = 1024) -> tuple[list[str], np.ndarray, int, int, list[Skipped]]:
    """``(tokens, vectors, n_cache_hits, n_encoded, skipped)``: only cache misses go through the
    encoder, once per distinct text, ``chunk_size`` texts at a time, each chunk cached as it ends
    (an interrupted run resumes)."""
    from tqdm.auto import tqdm

    keys = [text_key(text) for text in inputs.texts]
    cached = cache.get_many(keys)
    missing = list(dict.fromkeys(k for k in keys if k not in cached))
    text_of = dict(zip(keys, inputs.texts))
    fresh: dict[str, np.ndarray] = {}
    with tqdm(total=len(missing), desc="encode texts", unit="text",
              disable=not show_progress or not missing) as bar:
        for start in range(0, len(missing), chunk_size):
            chunk = missing[start:start + chunk_size]
            vectors = encoder.encode([text_of[k] for k in chunk], show_progress=False)
            usable = usable_rows(vectors)
            new = {k: vectors[i] for i, k in enumerate(chunk) if usable[i]}
            cache.put_many(new)
            fresh.update(new)
            bar.update(len(chunk))
    tokens, rows, skipped = [], [], []
    for token, key in zip(inputs.tokens, keys):
        vector = cached.get(key, fresh.get(key))
        if vector is None:
            skipped.append(Skipped(token, "non_finite_vector", "encoder output NaN/inf or zero"))
            continue
        tokens.append(token)
        rows.append(vector)
    hits = sum(key in cached for key in keys)
    matrix = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
    return tokens, matrix.astype(np.float32, copy=False), hits, len(fresh), skipped


def encode_text_feature(inputs: TextInputs, out_dir: str | Path, feature: str,
                        encoder_spec: str, source: str, use_cache: bool = True,
                        device: str | None = None, batch_size: int = 64,
                        show_progress: bool = True,
                        extra_meta: dict[str, Any] | None = None,
                        processes: int = 1) -> EncodeReport:
    """Encode ``inputs`` with a sentence encoder and write feature ``feature`` into ``out_dir``;
    ``extra_meta`` adds provenance keys (e.g. the template) to the feature's ``.json``;
    ``processes > 1``: sentence-transformers' multi-process pool (same vectors)."""
    started = time.perf_counter()
    fingerprint = encoder_fingerprint(encoder_spec)
    cache_path = Path(out_dir) / CACHE_FILE_NAME if use_cache else None
    encoder = TextEncoder(encoder_spec, device=device, batch_size=batch_size, processes=processes)
    try:
        with VectorCache(cache_path, f"text:{fingerprint}") as cache:
            tokens, matrix, hits, n_encoded, bad = encode_texts(inputs, encoder, cache, show_progress)
    finally:
        encoder.close()
    return write_encoded_feature(out_dir, feature, tokens, matrix, inputs.skipped + bad, hits,
                                 n_encoded, started, encoder_spec, fingerprint, source,
                                 n_superseded=inputs.n_superseded, kind="text",
                                 extra_meta=extra_meta)


def encode_image_feature(refs: Sequence[tuple[str, str]], base_dir: str | Path,
                         out_dir: str | Path, feature: str, encoder: ImageEncoder,
                         source: str, use_cache: bool = True, chunk_size: int = 128,
                         show_progress: bool = True) -> EncodeReport:
    """Encode each item's image (chunk by chunk, cached by image sha256) into feature ``feature``.

    Memory stays bounded: ``chunk_size`` files' bytes and one batch of decoded images at a time;
    each chunk's vectors are cached as it ends, so an interrupted run resumes.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    fingerprint = encoder.fingerprint()
    cache_path = Path(out_dir) / CACHE_FILE_NAME if use_cache else None
    skipped: list[Skipped] = []
    vector_of: dict[str, np.ndarray] = {}  # sha256 -> vector
    sha_of: dict[str, str] = {}  # token -> sha256
    from_cache: set[str] = set()  # sha256 of vectors read from the on-disk cache
    with VectorCache(cache_path, f"image:{fingerprint}") as cache, tqdm(
        total=len(refs), desc=f"encode {feature}", unit="img", disable=not show_progress
    ) as bar:
        for start in range(0, len(refs), chunk_size):
            chunk = refs[start:start + chunk_size]
            _encode_image_chunk(chunk, base_dir, encoder, cache, vector_of, sha_of, from_cache,
                                skipped)
            bar.update(len(chunk))
    tokens = [token for token, _ in refs if token in sha_of]
    matrix = (np.stack([vector_of[sha_of[t]] for t in tokens]) if tokens
              else np.zeros((0, 0), np.float32))
    # Counted per item over the whole run: an image repeated in a later chunk is not "new".
    hits = sum(sha_of[t] in from_cache for t in tokens)
    n_encoded = len(set(vector_of) - from_cache)
    return write_encoded_feature(out_dir, feature, tokens, matrix, skipped, hits, n_encoded,
                                 started, encoder.describe(), fingerprint, source, kind="image")


def _encode_image_chunk(chunk: Sequence[tuple[str, str]], base_dir: str | Path,
                        encoder: ImageEncoder, cache: VectorCache,
                        vector_of: dict[str, np.ndarray], sha_of: dict[str, str],
                        from_cache: set[str], skipped: list[Skipped]) -> None:
    """Fill ``vector_of``/``sha_of`` for one chunk (``from_cache``: the sha256 it read from the
    cache); each distinct image is decoded and encoded once per run."""
    pending: list[tuple[str, str, str, bytes]] = []  # token, source, sha, bytes
    for token, reference in chunk:
        source = resolve_image_reference(str(reference), base_dir)
        try:
            data = read_image_bytes(source)
        except ImageError as error:
            skipped.append(Skipped(token, error.reason, error.detail or source))
            continue
        pending.append((token, source, image_sha256(data), data))
    cached = cache.get_many(sha for _, _, sha, _ in pending if sha not in vector_of)
    vector_of.update(cached)
    from_cache.update(cached)
    to_decode: dict[str, tuple[str, str, bytes]] = {}
    for token, source, sha, data in pending:
        if sha not in vector_of:
            to_decode.setdefault(sha, (token, source, data))
    decode_errors: dict[str, ImageError] = {}
    fresh: dict[str, np.ndarray] = {}
    todo = list(to_decode.items())
    for start in range(0, len(todo), encoder.batch_size):  # decode per batch: bounded memory
        images, shas = [], []
        for sha, (_, source, data) in todo[start:start + encoder.batch_size]:
            try:
                images.append(load_image(data, name=source).image)
                shas.append(sha)
            except ImageError as error:
                decode_errors[sha] = error
        if images:
            vectors = l2_normalise(encoder.encode_batch(images))
            usable = usable_rows(vectors)
            fresh.update({sha: vectors[i] for i, sha in enumerate(shas) if usable[i]})
    cache.put_many(fresh)
    vector_of.update(fresh)
    for token, source, sha, _ in pending:
        if sha in vector_of:
            sha_of[token] = sha
        elif sha in decode_errors:
            error = decode_errors[sha]
            skipped.append(Skipped(token, error.reason, f"{source}: {error.detail}"))
        else:
            skipped.append(Skipped(token, "non_finite_vector", "encoder output NaN/inf or zero"))


def write_encoded_feature(out_dir: str | Path, feature: str, tokens: list[str],
                          matrix: np.ndarray, skipped: list[Skipped], hits: int, n_encoded: int,
                          started: float, encoder: str, fingerprint: str, source: str, kind: str,
                          n_superseded: int = 0,
                          extra_meta: dict[str, Any] | None = None) -> EncodeReport:
    """Save the feature with its provenance (module docstring) and return the run's report;
    EncodeInputError when no item got a vector."""
    if not tokens:
        reasons = Counter(s.reason for s in skipped)
        raise EncodeInputError(
            f"nothing to encode for feature '{feature}' from {source}: "
            f"{len(skipped)} items skipped ({dict(reasons) or 'no items'})"
        )
    meta = {
        "format_version": FEATURE_META_VERSION,
        "origin": "vlm4rec encode",
        "kind": kind,
        "source": source,
        "encoder": encoder,
        "encoder_fingerprint": fingerprint,
        "n_items": len(tokens),
        "n_cache_hits": hits,
        "n_encoded": n_encoded,
        "n_skipped": len(skipped),
        "skipped_by_reason": dict(Counter(s.reason for s in skipped)),
        "n_superseded_rows": n_superseded,
        "skipped": [{"item_id": s.item_id, "reason": s.reason, "detail": s.detail}
                    for s in skipped],
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra_meta or {}),
    }
    path = save_feature(out_dir, feature, matrix, tokens, meta=meta)
    return EncodeReport(feature, path, len(tokens), int(matrix.shape[1]), n_encoded, hits,
                        skipped, time.perf_counter() - started, encoder, n_superseded,
                        n_shared=len(tokens) - hits - n_encoded)

