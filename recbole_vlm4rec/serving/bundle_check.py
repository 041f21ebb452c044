"""Every bundle file checked before a bundle answers anything (bundle.py's ``load_bundle``).

A bundle is read from disk by a long-lived service, often copied between machines: a truncated
copy, an empty or garbage ``index.faiss``, a text file in another encoding, a ``bundle.json``
edited by hand or a NaN row must stop the load with one line naming the file and what is wrong,
never a library traceback or a silently wrong answer. Each reader here raises ``BundleError``
(``<file>: <what is wrong>: export the bundle again``).

What is checked: ``bundle.json`` field types and the counts and dimensions it promises; every
``.tokens`` / ``.tsv`` file is strict UTF-8 with one entry per line (tokens: no blank lines, no
duplicates, one per item / user); every array has the dtype, shape and value range its role needs
(finite vectors, zero rows exactly where ``has_vector`` is False, CSR row pointers that start at
0, never decrease and end at the number of entries, item rows inside the catalogue); ``index.faiss``
is large enough for its vectors before FAISS reads it, is the index kind, metric, dimension and
size ``bundle.json`` names, and holds ``item_embeddings.npy``'s vectors (a sample of rows).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from recbole_vlm4rec.formats.features import load_array


class BundleError(ValueError):
    """A bundle folder is missing a file, is malformed or was written by another format."""


def fail(path: Path, problem: str) -> BundleError:
    return BundleError(f"{path}: {problem}: export the bundle again")


def _integer(meta: dict[str, Any], key: str, path: Path, minimum: int = 0) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise fail(path, f"'{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def check_meta(meta: Any, path: Path, kinds: tuple[str, ...], index_kinds: tuple[str, ...]) -> None:
    """The fields of ``bundle.json`` that the loader relies on, with their types."""
    if not isinstance(meta, dict):
        raise fail(path, f"a JSON object expected, got {type(meta).__name__}")
    if meta.get("kind") not in kinds:
        raise fail(path, f"unknown bundle kind {meta.get('kind')!r} (known: {', '.join(kinds)})")
    _integer(meta, "n_items", path, 1)
    _integer(meta, "n_users", path, 0)
    if "tie_break_seed" in meta:
        _integer(meta, "tie_break_seed", path, 0)
    if meta["kind"] == "topn":
        _integer(meta, "top_n", path, 1)
        return
    dim = _integer(meta, "dim", path, 1)
    if meta.get("index") not in index_kinds:
        raise fail(path, f"'index' must be one of {', '.join(index_kinds)}, got "
                   f"{meta.get('index')!r}")
    if meta.get("profile_aggregation", "mean") not in ("mean", "max"):
        raise fail(path, f"'profile_aggregation' must be mean or max, got "
                   f"{meta.get('profile_aggregation')!r}")
    blocks = meta.get("blocks")
    if not isinstance(blocks, list) or not blocks or not all(
            isinstance(b, dict) and isinstance(b.get("dim"), int) and not isinstance(b["dim"], bool)
            and b["dim"] > 0 and isinstance(b.get("weight"), (int, float))
            and np.isfinite(b["weight"]) and b["weight"] > 0 for b in blocks):
        raise fail(path, "'blocks' must be a list of {name, dim > 0, weight > 0}")
    if sum(b["dim"] for b in blocks) != dim:
        raise fail(path, f"'blocks' dims add up to {sum(b['dim'] for b in blocks)}, 'dim' says "
                   f"{dim}")
    if meta.get("hnsw_ef_search") is not None:
        _integer(meta, "hnsw_ef_search", path, 1)


def read_text(path: Path) -> str:
    """A text file as strict UTF-8; a bad byte is named with its line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise fail(path, f"line {line} is not UTF-8 (byte {data[error.start]:#04x} at offset "
                   f"{error.start})") from None


def read_tokens(path: Path, expected: int, what: str) -> list[str]:
    """One token per line, ``expected`` lines, no blank line, no duplicate."""
    tokens = read_text(path).splitlines()
    if len(tokens) != expected:
        raise fail(path, f"{len(tokens)} lines, bundle.json says {expected} {what}s")
    blank = next((i for i, t in enumerate(tokens) if not t.strip()), None)
    if blank is not None:
        raise fail(path, f"line {blank + 1} is blank")
    if len(set(tokens)) != len(tokens):
        seen: set[str] = set()
        duplicate = next(t for t in tokens if t in seen or seen.add(t))
        raise fail(path, f"{what} {duplicate!r} appears more than once")
    return tokens


def read_texts(path: Path, known: dict[str, int]) -> dict[str, str]:
    """``token<TAB>text`` lines of item tokens the bundle knows."""
    texts = {}
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        token, tab, text = line.partition("\t")
        if not tab:
            raise fail(path, f"line {number} has no tab (token<TAB>text expected)")
        if token not in known:
            raise fail(path, f"line {number} names item {token!r}, not in items.tokens")
        texts[token] = text
    return texts


def read_array(path: Path) -> Any:
    """A ``.npy`` array or the members of a ``.npz`` archive, fully read (a truncated archive
    fails here, not at the first query)."""
    try:
        stored = load_array(path)
        if path.suffix == ".npz":
            with stored:
                return {key: stored[key] for key in stored.files}
        return stored
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as error:
        raise fail(path, f"cannot be read ({type(error).__name__}: {error})") from None


_KINDS = {"f": ("f", "float"), "i": ("iu", "integer"), "b": ("b", "bool")}


def check_matrix(path: Path, array: Any, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """``array`` has ``shape`` and a dtype of ``kind`` (``f`` float, ``i`` integer, ``b`` bool);
    float arrays hold no NaN / inf."""
    if not isinstance(array, np.ndarray) or array.dtype.kind not in _KINDS[kind][0]:
        dtype = getattr(array, "dtype", type(array).__name__)
        raise fail(path, f"{_KINDS[kind][1]} array expected, got {dtype}")
    if array.shape != shape:
        raise fail(path, f"shape {array.shape}, expected {shape}")
    if kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise fail(path, f"{int(bad.sum())} values are NaN or infinite (first in row {row})")
    return array


def check_rows(path: Path, rows: np.ndarray, n_items: int, where: str) -> None:
    """Item rows inside the catalogue."""
    if len(rows) and (rows.min() < 0 or rows.max() >= n_items):
        bad = rows[(rows < 0) | (rows >= n_items)][0]
        raise fail(path, f"{where} holds item row {int(bad)}, outside 0..{n_items - 1}")


def read_csr(path: Path, n_rows: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """A CSR of item rows per user (``indptr`` / ``indices``), checked."""
    stored = read_array(path)
    if not isinstance(stored, dict) or {"indptr", "indices"} - set(stored):
        raise fail(path, "an archive with 'indptr' and 'indices' expected")
    indptr = check_matrix(path, stored["indptr"], (n_rows + 1,), "i").astype(np.int64)
    indices = stored["indices"]
    if not isinstance(indices, np.ndarray) or indices.ndim != 1 or indices.dtype.kind not in "iu":
        raise fail(path, f"'indices' must be a 1-D integer array, got "
                   f"{getattr(indices, 'dtype', type(indices).__name__)}")
    if indptr[0] != 0 or (np.diff(indptr) < 0).any() or indptr[-1] != len(indices):
        raise fail(path, f"'indptr' must start at 0, never decrease and end at {len(indices)} "
                   f"(the number of entries)")
    indices = indices.astype(np.int64)
    check_rows(path, indices, n_items, "'indices'")
    return indptr, indices


def check_vectors(folder: Path, embeddings: Any, has_vector: Any, n_items: int,
                  dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors and their coverage flags agree: a zero row exactly where there is no vector."""
    embeddings = check_matrix(folder / "item_embeddings.npy", embeddings, (n_items, dim), "f")
    has_vector = check_matrix(folder / "has_vector.npy", has_vector, (n_items,), "b")
    nonzero = np.abs(embeddings).sum(axis=1) > 0
    if (nonzero != has_vector).any():
        row = int(np.flatnonzero(nonzero != has_vector)[0])
        raise fail(folder / "has_vector.npy", f"row {row} says {bool(has_vector[row])} but "
                   f"item_embeddings.npy's row {row} is {'non-' if nonzero[row] else ''}zero")
    return np.ascontiguousarray(embeddings, dtype=np.float32), has_vector


def read_index(path: Path, embeddings: np.ndarray, kind: str) -> Any:
    """``index.faiss``: its size is checked before FAISS reads it (a garbage header can ask FAISS
    for any amount of memory), then its kind, metric, dimension, size and vectors."""
    import faiss

    n_items, dim = embeddings.shape
    size = path.stat().st_size
    if size == 0:
        raise fail(path, "empty file")
    needed = n_items * dim * 4
    if size < needed:
        raise fail(path, f"{size} bytes, too small for {n_items} x {dim} float32 vectors "
                   f"({needed} bytes): truncated")
    try:
        index = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))  # already downcast
    except (RuntimeError, MemoryError, TypeError, ValueError) as error:
        reason = str(error).strip().splitlines()[-1][:160] if str(error).strip() else repr(error)
        raise fail(path, f"not a readable FAISS index ({reason})") from None
    expected = {"flat": faiss.IndexFlat, "hnsw": faiss.IndexHNSWFlat}[kind]
    if not isinstance(index, expected):
        raise fail(path, f"a {type(index).__name__}, bundle.json says a {kind} index")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise fail(path, "not an inner-product index")
    if index.d != dim or index.ntotal != n_items:
        raise fail(path, f"{index.ntotal} vectors of dim {index.d}, item_embeddings.npy has "
                   f"{n_items} x {dim}")
    sample = np.unique(np.linspace(0, n_items - 1, num=min(n_items, 64)).astype(np.int64))
    stored = np.stack([index.reconstruct(int(row)) for row in sample])
    differs = ~np.isclose(stored, embeddings[sample], atol=1e-6).all(axis=1)
    if differs.any():
        raise fail(path, f"does not hold item_embeddings.npy's vectors (row "
                   f"{int(sample[differs][0])} differs)")
    return index


def check_topn(folder: Path, items: Any, scores: Any, n_users: int, top_n: int,
               n_items: int) -> None:
    """Precomputed lists: item rows in the catalogue, scores finite or ``-inf`` (no item left)."""
    items = check_matrix(folder / "topn_items.npy", items, (n_users, top_n), "i")
    check_rows(folder / "topn_items.npy", items.ravel(), n_items, "a list")
    path = folder / "topn_scores.npy"
    if not isinstance(scores, np.ndarray) or scores.dtype.kind != "f":
        raise fail(path, f"float array expected, got {getattr(scores, 'dtype', type(scores))}")
    if scores.shape != (n_users, top_n):
        raise fail(path, f"shape {scores.shape}, expected {(n_users, top_n)}")
    if np.isnan(scores).any() or (scores == np.inf).any():
        raise fail(path, "NaN or +inf scores (only -inf marks an empty place)")
