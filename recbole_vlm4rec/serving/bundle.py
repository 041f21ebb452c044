"""Serving bundles: everything online recommendation needs, exported once from a model.

A bundle is a folder; ``bundle.json`` (written last, so a folder with it is complete) holds
``format_version``, ``kind``, ``model``, ``dataset``, ``features``, the masking rule, counts and
provenance. Row ``r`` of every item file is the item on line ``r`` of ``items.tokens``; row ``u``
of every user file the user on line ``u`` of ``users.tokens``.

``kind: profile`` (VLM4Rec, VLM4RecFusion: profile matching on item features)
    ``item_embeddings.npy`` the model's item vectors (unit blocks, each scaled by the square root
    of its fusion weight; zero rows for items without a vector), ``has_vector.npy``,
    ``index.faiss`` (inner product over item_embeddings; flat: exact, hnsw: approximate, searched
    with efSearch = ``hnsw_ef_search``), ``user_profiles.npy`` (mean aggregation: the model's
    profile of each user), ``profile_histories.npz`` (CSR: the training items a profile is made
    of), ``masked.npz`` (CSR: the items the evaluation masks per user), ``blocks`` in bundle.json
    (name, dim, weight of each feature block: how to build a profile for a new item list),
    ``profile_aggregation``, ``tie_break_seed`` (equal scores are ordered by the run's seeded
    permutation, formats/ranking.py, as its evaluation ordered them).
``kind: topn`` (any model)
    ``topn_items.npy`` / ``topn_scores.npy``: ``(n_users, top_n)`` best unmasked items of the
    model's ``full_sort_predict`` (rows of items.tokens) and their scores.
Both may hold ``descriptions.tsv`` (item_token<TAB>description) for explanations and
``titles.tsv`` (item_token<TAB>title: the item table's title, or its first text column) so answers
name items, not only ids; ``title_column`` in bundle.json says which column it came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recbole_vlm4rec.formats.files import atomic_write, atomic_write_bytes, atomic_write_text
from recbole_vlm4rec.serving.bundle_check import (
    BundleError,
    check_matrix,
    check_meta,
    check_topn,
    check_vectors,
    read_array,
    read_csr,
    read_index,
    read_texts,
    read_tokens,
)

FORMAT_VERSION = 3  # 3: tie_break_seed (equal scores ordered as the evaluation orders them)
INDEX_KINDS = ("flat", "hnsw")


@dataclass
class Bundle:
    folder: Path
    meta: dict[str, Any]
    item_tokens: list[str]
    user_tokens: list[str]
    descriptions: dict[str, str] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)  # token -> image file (explorer page)
    train: tuple[np.ndarray, np.ndarray] | None = None  # CSR per user: training items (all)
    test: tuple[np.ndarray, np.ndarray] | None = None  # CSR per user: held-out test items
    # kind: profile
    embeddings: np.ndarray | None = None
    has_vector: np.ndarray | None = None
    index: Any = None
    user_profiles: np.ndarray | None = None
    profile_indptr: np.ndarray | None = None
    profile_indices: np.ndarray | None = None
    masked_indptr: np.ndarray | None = None
    masked_indices: np.ndarray | None = None
    # kind: topn
    topn_items: np.ndarray | None = None
    topn_scores: np.ndarray | None = None

    def profile_rows(self, user_row: int) -> np.ndarray:
        """Item rows a known user's profile is made of (training items with a vector)."""
        return self.profile_indices[self.profile_indptr[user_row]:self.profile_indptr[user_row + 1]]

    def masked_rows(self, user_row: int) -> np.ndarray:
        """Item rows never recommended to a known user (the evaluation's masked items)."""
        return self.masked_indices[self.masked_indptr[user_row]:self.masked_indptr[user_row + 1]]

    def train_rows(self, user_row: int) -> np.ndarray | None:
        """A known user's training items (None for bundles written without train.npz)."""
        return _csr_row(self.train, user_row)

    def test_rows(self, user_row: int) -> np.ndarray | None:
        """A known user's held-out test items (None for bundles written without test.npz)."""
        return _csr_row(self.test, user_row)


def _csr_row(csr: tuple[np.ndarray, np.ndarray] | None, row: int) -> np.ndarray | None:
    if csr is None:
        return None
    indptr, indices = csr
    return indices[indptr[row]:indptr[row + 1]]


def block_profile(summed: np.ndarray, blocks: Sequence[dict[str, Any]]) -> np.ndarray:
    """VLM4Rec's mean profile from the sum of its items' vectors: per feature block, the
    normalised sum scaled by the square root of the block's weight (a block no item has stays
    zero)."""
    parts, start = [], 0
    for block in blocks:
        part = summed[..., start:start + block["dim"]]
        norm = np.linalg.norm(part, axis=-1, keepdims=True)
        parts.append(np.where(norm > 0, part / np.where(norm > 0, norm, 1.0), 0.0)
                     * np.sqrt(block["weight"]))
        start += block["dim"]
    return np.concatenate(parts, axis=-1).astype(np.float32)


DEFAULT_TIE_BREAK_SEED = 2020  # RecBole's default seed, for bundles written from bare arrays
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


def _write_lines(folder: Path, name: str, lines: Sequence[str]) -> None:
    atomic_write_text(folder / name, "".join(f"{line}\n" for line in lines))


def _write_npy(folder: Path, name: str, array: np.ndarray) -> None:
    atomic_write(folder / name, lambda h: np.save(h, array))


def _write_csr(folder: Path, name: str, rows: Sequence[np.ndarray]) -> None:
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.concatenate(rows).astype(np.int64) if len(rows) else np.zeros(0, np.int64)
    atomic_write(folder / name, lambda h: np.savez(h, indptr=indptr, indices=indices))


def _write_texts(folder: Path, name: str, texts: dict[str, str] | None) -> None:
    """``item_token<TAB>text`` lines (texts made one line), or no file when there are none."""
    if texts:
        _write_lines(folder, name, [f"{t}\t{' '.join(str(d).split())}" for t, d in texts.items()])
    else:
        (folder / name).unlink(missing_ok=True)


def _finish(folder: Path, meta: dict[str, Any], descriptions: dict[str, str] | None) -> Path:
    """The optional files (absent ones removed: a rewritten folder keeps nothing stale), then
    ``bundle.json``. ``meta``'s ``titles`` / ``images`` (token -> text) and ``train_items`` /
    ``test_items`` (per user row, item rows) become files, not JSON."""
    _write_texts(folder, "descriptions.tsv", descriptions)
    _write_texts(folder, "titles.tsv", meta.pop("titles", None))
    _write_texts(folder, "images.tsv", meta.pop("images", None))
    for name, key in (("train.npz", "train_items"), ("test.npz", "test_items")):
        rows = meta.pop(key, None)
        if rows is None:
            (folder / name).unlink(missing_ok=True)
        else:
            _write_csr(folder, name, rows)
    full_meta = {"format_version": FORMAT_VERSION, **meta,
                 "n_descriptions": len(descriptions or {}),
                 "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(folder / "bundle.json", json.dumps(full_meta, indent=2, default=str))
    return folder


def _start(folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bundle.json").unlink(missing_ok=True)  # incomplete until rewritten last
    return folder


def write_profile_arrays(
    folder: str | Path,
    item_tokens: list[str],
    embeddings: np.ndarray,
    has_vector: np.ndarray,
    user_tokens: list[str],
    profile_histories: Sequence[np.ndarray],
    masked: Sequence[np.ndarray],
    meta: dict[str, Any],
    descriptions: dict[str, str] | None = None,
    index_kind: str = "flat",
    user_profiles: np.ndarray | None = None,
) -> Path:
    """Write a ``profile`` bundle from arrays (rows of ``item_tokens`` / ``user_tokens``)."""
    import faiss

    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(item_tokens) != len(has_vector):
        raise BundleError("embeddings and has_vector must have one row per item token")
    if not (len(profile_histories) == len(masked) == len(user_tokens)):
        raise BundleError("profile_histories and masked must have one row per user token")
    folder = _start(folder)
    _write_lines(folder, "items.tokens", item_tokens)
    _write_lines(folder, "users.tokens", user_tokens)
    _write_npy(folder, "item_embeddings.npy", embeddings)
    _write_npy(folder, "has_vector.npy", np.asarray(has_vector, dtype=bool))
    meta = {"profile_aggregation": "mean", **meta}
    meta.setdefault("blocks", [{"name": meta.get("item_feature"), "dim": int(embeddings.shape[1]),
                                "weight": 1.0}])
    if user_profiles is None and meta["profile_aggregation"] == "mean":
        user_profiles = np.stack([block_profile(embeddings[h].sum(axis=0), meta["blocks"])
                                  for h in profile_histories]) if len(profile_histories) else \
            np.zeros((0, embeddings.shape[1]), np.float32)
    if user_profiles is not None:
        _write_npy(folder, "user_profiles.npy", np.asarray(user_profiles, dtype=np.float32))
    else:
        (folder / "user_profiles.npy").unlink(missing_ok=True)
    _write_csr(folder, "profile_histories.npz", profile_histories)
    _write_csr(folder, "masked.npz", masked)
    index = build_index(embeddings, index_kind)
    atomic_write_bytes(folder / "index.faiss", faiss.serialize_index(index).tobytes())
    meta = {"kind": "profile", **meta,
            "dim": int(embeddings.shape[1]), "n_items": len(item_tokens),
            "n_users": len(user_tokens), "index": index_kind,
            "hnsw_ef_search": HNSW_EF_SEARCH if index_kind == "hnsw" else None}
    meta.setdefault("tie_break_seed", DEFAULT_TIE_BREAK_SEED)
    return _finish(folder, meta, descriptions)


def write_profile_bundle(folder: str | Path, model: Any, train: Any, item_tokens: list[str],
                         user_tokens: list[str], masked: list[np.ndarray], meta: dict[str, Any],
                         descriptions: dict[str, str] | None, index_kind: str) -> Path:
    """A ``profile`` bundle of a VLM4Rec-family model: its own item vectors and profiles."""
    # Row 0 of RecBole's token lists is [PAD]: no user, no item; bundle rows are ids - 1.
    embeddings = model.item_embeddings.detach().cpu().numpy()[1:]
    has_vector = np.abs(embeddings).sum(axis=1) > 0
    history = train.inter_matrix(form="csr")  # the training split: what profiles are made of
    train_items = [np.asarray(history[u].indices, np.int64) - 1
                   for u in range(1, len(user_tokens))]
    profile_histories = [h[has_vector[h]] for h in train_items]
    profiles = (model.user_profiles.detach().cpu().numpy()[1:]
                if model.aggregation == "mean" else None)
    blocks = [{"name": b.name, "dim": int(b.embeddings.shape[1]), "weight": float(b.weight)}
              for b in model.blocks]
    encoder = {}
    if len(meta["features"]) == 1:  # text queries need the one encoder the items were made with
        feature_meta = train.item_feature(meta["features"][0]).meta
        encoder = {"name": feature_meta.get("encoder"),
                   "fingerprint": feature_meta.get("encoder_fingerprint")}
    meta = {"train_items": train_items, **meta, "profile_aggregation": model.aggregation,
            "blocks": blocks, "encoder": encoder}
    return write_profile_arrays(
        folder, item_tokens[1:], embeddings, has_vector, user_tokens[1:], profile_histories,
        [m[m > 0] - 1 for m in masked[1:]], meta, descriptions, index_kind, profiles)


def write_topn_bundle(folder: str | Path, top: tuple[np.ndarray, np.ndarray],
                      item_tokens: list[str], user_tokens: list[str], meta: dict[str, Any],
                      descriptions: dict[str, str] | None) -> Path:
    """A ``topn`` bundle: each user's precomputed best items (internal ids -> rows - 1)."""
    items, scores = top
    folder = _start(folder)
    _write_lines(folder, "items.tokens", item_tokens[1:])
    _write_lines(folder, "users.tokens", user_tokens[1:])
    _write_npy(folder, "topn_items.npy", (items[1:] - 1).astype(np.int64))
    _write_npy(folder, "topn_scores.npy", scores[1:].astype(np.float32))
    meta = {"kind": "topn", **meta, "top_n": int(items.shape[1]),
            "n_items": len(item_tokens) - 1, "n_users": len(user_tokens) - 1}
    return _finish(folder, meta, descriptions)


NEEDED = {
    "profile": ["items.tokens", "users.tokens", "item_embeddings.npy", "has_vector.npy",
                "index.faiss", "profile_histories.npz", "masked.npz"],
    "topn": ["items.tokens", "users.tokens", "topn_items.npy", "topn_scores.npy"],
}
TEXT_FILES = {"descriptions.tsv": "descriptions", "titles.tsv": "titles", "images.tsv": "images"}
CSR_FILES = {"train.npz": "train", "test.npz": "test"}


def _read_meta(meta_path: Path) -> tuple[bytes, dict[str, Any]]:
    try:
        raw = meta_path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{meta_path.parent}: no bundle.json (not a bundle, or its export did "
                          "not finish)") from None
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise BundleError(f"{meta_path}: not valid JSON: {error}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise BundleError(f"{meta_path}: format_version {version!r}, this code reads "
                          f"{FORMAT_VERSION}: export the bundle again")
    check_meta(meta, meta_path, tuple(NEEDED), INDEX_KINDS)
    return raw, meta


def load_bundle(folder: str | Path) -> Bundle:
    """Read a bundle, every file checked (bundle_check.py); BundleError names the file at fault.

    ``bundle.json`` is read before and after the other files: an export writing the folder
    meanwhile (it removes ``bundle.json`` first and writes it last) fails the load instead of
    mixing two versions' files."""
    folder = Path(folder)
    meta_path = folder / "bundle.json"
    raw, meta = _read_meta(meta_path)
    kind, n_items, n_users = meta["kind"], meta["n_items"], meta["n_users"]
    missing = [name for name in NEEDED[kind] if not (folder / name).is_file()]
    if missing:
        raise BundleError(f"{folder}: missing {missing}: export the bundle again")
    bundle = Bundle(folder, meta, read_tokens(folder / "items.tokens", n_items, "item"),
                    read_tokens(folder / "users.tokens", n_users, "user"))
    known = {token: row for row, token in enumerate(bundle.item_tokens)}
    for name, attribute in TEXT_FILES.items():
        if (folder / name).is_file():
            setattr(bundle, attribute, read_texts(folder / name, known))
    for name, attribute in CSR_FILES.items():
        if (folder / name).is_file():
            setattr(bundle, attribute, read_csr(folder / name, n_users, n_items))
    if kind == "topn":
        bundle.topn_items = read_array(folder / "topn_items.npy")
        bundle.topn_scores = read_array(folder / "topn_scores.npy")
        check_topn(folder, bundle.topn_items, bundle.topn_scores, n_users, meta["top_n"], n_items)
    else:
        _load_profile_files(bundle)
    if _read_bytes(meta_path) != raw:
        raise BundleError(f"{meta_path}: the bundle changed while it was read (an export is "
                          "writing it): load it again when the export has finished")
    return bundle


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _load_profile_files(bundle: Bundle) -> None:
    folder, meta = bundle.folder, bundle.meta
    n_items, n_users = meta["n_items"], meta["n_users"]
    bundle.embeddings, bundle.has_vector = check_vectors(
        folder, read_array(folder / "item_embeddings.npy"), read_array(folder / "has_vector.npy"),
        n_items, meta["dim"])
    bundle.index = read_index(folder / "index.faiss", bundle.embeddings, meta["index"])
    if meta.get("hnsw_ef_search") and hasattr(bundle.index, "hnsw"):
        bundle.index.hnsw.efSearch = int(meta["hnsw_ef_search"])  # search depth: recall vs latency
    if (folder / "user_profiles.npy").is_file():
        bundle.user_profiles = check_matrix(folder / "user_profiles.npy",
                                            read_array(folder / "user_profiles.npy"),
                                            (n_users, meta["dim"]), "f").astype(np.float32)
    elif meta.get("profile_aggregation", "mean") == "mean":
        raise BundleError(f"{folder}: missing ['user_profiles.npy'] (a mean-profile bundle needs "
                          "it): export the bundle again")
    bundle.profile_indptr, bundle.profile_indices = read_csr(folder / "profile_histories.npz",
                                                             n_users, n_items)
    without = ~bundle.has_vector[bundle.profile_indices]
    if without.any():
        raise BundleError(f"{folder / 'profile_histories.npz'}: item row "
                          f"{int(bundle.profile_indices[without][0])} has no vector, so it cannot "
                          "be part of a profile: export the bundle again")
    bundle.masked_indptr, bundle.masked_indices = read_csr(folder / "masked.npz", n_users, n_items)
