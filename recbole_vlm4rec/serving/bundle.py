"""Serving bundles: everything online recommendation needs, exported once from a dataset feature.

VLM4Rec's expensive work (grounding, encoding) is offline; online it only averages a few vectors
and searches a nearest-neighbour index. A bundle is a folder::

    bundle.json          format_version, model (VLM4Rec), dataset, item_feature,
                         profile_aggregation, dim, counts, index kind, the feature's provenance
                         (encoder name + fingerprint when it was encoded from text), created_at
    items.tokens         one item token per line; line i is row i of the embeddings and the index
    item_embeddings.npy  (n_items, dim) float32, L2-normalised; only items that have a vector
    index.faiss          FAISS inner-product index over item_embeddings (flat: exact; hnsw: approx.,
                         searched with efSearch = bundle.json's hnsw_ef_search)
    users.tokens         one user token per line
    histories.npz        CSR of each user's interacted items (rows of items.tokens): indptr, indices
    descriptions.tsv     optional: item_token<TAB>description (one line each, tabs/newlines folded)

Every file is written atomically; ``bundle.json`` last, so a folder with it is complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from recbole_vlm4rec.encoding.image import l2_normalise
from recbole_vlm4rec.files import atomic_write, atomic_write_bytes, atomic_write_text

FORMAT_VERSION = 1
INDEX_KINDS = ("flat", "hnsw")


class BundleError(ValueError):
    """A bundle folder is missing a file, is malformed or was written by another format."""


@dataclass
class Bundle:
    folder: Path
    meta: dict[str, Any]
    item_tokens: list[str]
    embeddings: np.ndarray
    index: Any
    user_tokens: list[str]
    history_indptr: np.ndarray
    history_indices: np.ndarray
    descriptions: dict[str, str] = field(default_factory=dict)

    def history_rows(self, user_row: int) -> np.ndarray:
        return self.history_indices[self.history_indptr[user_row]:self.history_indptr[user_row + 1]]


HNSW_EF_SEARCH = 1024  # measured on 100k x 384 (bench_serving.py): recall@10 ~0.9 at ~3 ms/query


def build_index(embeddings: np.ndarray, kind: str = "flat", hnsw_m: int = 32) -> Any:
    """A FAISS inner-product index (cosine on normalised rows) over ``embeddings``."""
    import faiss

    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
    dim = embeddings.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return index


def write_bundle(
    folder: str | Path,
    item_tokens: list[str],
    embeddings: np.ndarray,
    user_tokens: list[str],
    histories: list[np.ndarray],
    meta: dict[str, Any],
    descriptions: dict[str, str] | None = None,
    index_kind: str = "flat",
) -> Path:
    """Normalise, index and write a bundle; ``histories[u]`` are rows of ``item_tokens``."""
    import faiss

    folder = Path(folder)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    if embeddings.ndim != 2 or len(embeddings) != len(item_tokens) or not (norms > 0).all():
        raise BundleError("embeddings must be one non-zero row per item token")
    embeddings = l2_normalise(embeddings)
    index = build_index(embeddings, index_kind)
    indptr = np.zeros(len(histories) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(h) for h in histories])
    indices = np.concatenate(histories).astype(np.int64) if histories else np.zeros(0, np.int64)
    (folder / "bundle.json").unlink(missing_ok=True)  # incomplete until rewritten last

    def write_lines(name: str, lines: list[str]) -> None:
        atomic_write_text(folder / name, "".join(f"{line}\n" for line in lines))

    write_lines("items.tokens", item_tokens)
    write_lines("users.tokens", user_tokens)
    atomic_write(folder / "item_embeddings.npy", lambda h: np.save(h, embeddings))
    atomic_write(folder / "histories.npz", lambda h: np.savez(h, indptr=indptr, indices=indices))
    atomic_write_bytes(folder / "index.faiss", faiss.serialize_index(index).tobytes())
    if descriptions:
        rows = [f"{t}\t{' '.join(str(d).split())}" for t, d in descriptions.items()]
        write_lines("descriptions.tsv", rows)
    else:
        (folder / "descriptions.tsv").unlink(missing_ok=True)
    full_meta = {
        "format_version": FORMAT_VERSION, **meta, "dim": int(embeddings.shape[1]),
        "n_items": len(item_tokens), "n_users": len(user_tokens), "index": index_kind,
        "hnsw_ef_search": HNSW_EF_SEARCH if index_kind == "hnsw" else None,
        "n_descriptions": len(descriptions or {}),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(folder / "bundle.json", json.dumps(full_meta, indent=2, default=str))
    return folder


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def load_bundle(folder: str | Path) -> Bundle:
    """Read a bundle; BundleError names the file at fault."""
    import faiss

    folder = Path(folder)
    meta_path = folder / "bundle.json"
    if not meta_path.is_file():
        raise BundleError(f"{folder}: no bundle.json (not a bundle, or its export did not finish)")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as error:
        raise BundleError(f"{meta_path}: not valid JSON: {error}") from error
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{meta_path}: format_version {meta.get('format_version')!r}, this "
                          f"code reads {FORMAT_VERSION}: export the bundle again")
    needed = ["items.tokens", "item_embeddings.npy", "index.faiss", "users.tokens",
              "histories.npz"]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise BundleError(f"{folder}: missing {missing}: export the bundle again")
    item_tokens = _read_lines(folder / "items.tokens")
    embeddings = np.load(folder / "item_embeddings.npy", allow_pickle=False)
    index = faiss.deserialize_index(np.fromfile(folder / "index.faiss", dtype=np.uint8))
    if not (len(item_tokens) == len(embeddings) == index.ntotal == meta["n_items"]):
        raise BundleError(f"{folder}: items.tokens ({len(item_tokens)}), item_embeddings.npy "
                          f"({len(embeddings)}) and index.faiss ({index.ntotal}) disagree")
    if meta.get("hnsw_ef_search") and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(meta["hnsw_ef_search"])  # search depth: recall vs latency
    histories = np.load(folder / "histories.npz", allow_pickle=False)
    user_tokens = _read_lines(folder / "users.tokens")
    if len(histories["indptr"]) != len(user_tokens) + 1:
        raise BundleError(f"{folder}: histories.npz does not have one row per line of users.tokens")
    descriptions = {}
    if (folder / "descriptions.tsv").is_file():
        for line in _read_lines(folder / "descriptions.tsv"):
            token, _, text = line.partition("\t")
            descriptions[token] = text
    return Bundle(folder, meta, item_tokens, embeddings, index, user_tokens,
                  histories["indptr"], histories["indices"], descriptions)
