"""Item feature files: the on-disk format every offline stage writes and the dataset loads.

A feature named ``<name>`` lives in a dataset's ``features/`` folder as three files:

``<name>.npy``
    2-D floating-point array (float32 preferred; other float widths are cast to float32),
    one row per item. Non-float dtypes, NaN and inf are rejected.
``<name>.tokens``
    UTF-8 text, one raw item token per line (the item id as written in the atomic files);
    line ``i`` names the item of row ``i``. No blank lines, no duplicates.
``<name>.json`` (optional for hand-made files; always written by ``vlm4rec encode``)
    Provenance, one schema (``format_version`` 2): ``origin`` (``vlm4rec encode``, or
    ``declared`` for a feature the run layer built from a dataset yaml declaration, with the
    ``recipe`` it used), ``kind`` (text / image), ``source``, ``encoder`` and
    ``encoder_fingerprint``, ``n_items``, ``n_cache_hits``, ``skipped`` items with their reasons,
    ``created_utc``, and where it applies ``template``, ``item_table``, ``descriptions``,
    ``command``. ``vlm4rec prepare mmrec`` writes ``origin: imported``.

Rows are matched to RecBole's internal item ids through the tokens, never by position, so a file
written in any item order loads correctly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recbole_vlm4rec.formats.files import atomic_write


FEATURE_META_VERSION = 2
_MAGIC = {".npy": (b"\x93NUMPY", "a NumPy .npy file", "numpy.save"),
          ".npz": (b"PK\x03\x04", "a NumPy .npz archive", "numpy.savez")}


UNKNOWN_TOKEN_RULES = ("error", "ignore")  # feature_unknown_tokens: see align_feature


class FeatureFileError(ValueError):
    """A feature file is missing, malformed or does not match the dataset; names the file."""


def load_array(path: str | os.PathLike) -> Any:
    """``np.load(path, allow_pickle=False)`` of a ``.npy`` / ``.npz`` file, after checking its
    first bytes: a file that is not one raises ValueError naming it (numpy's own message for it
    advises loading the file with pickle, which would run code from it)."""
    path = Path(path)
    magic, kind, writer = _MAGIC.get(path.suffix, _MAGIC[".npy"])
    with open(path, "rb") as handle:
        head = handle.read(len(magic))
    if head != magic:
        raise ValueError(f"{path}: not {kind} (it starts with {head!r}); write it with {writer}")
    return np.load(path, allow_pickle=False)


@dataclass
class FeatureFile:
    """A feature as stored: ``matrix[i]`` is the vector of item ``tokens[i]``."""

    name: str
    matrix: np.ndarray
    tokens: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


@dataclass
class AlignedFeature:
    """A feature aligned to RecBole's internal item ids (row 0 is the padding item).

    ``matrix`` is ``(n_items, dim)`` float32; rows of items without a vector are zero and
    ``has_vector`` is False for them (always False for row 0).
    """

    name: str
    matrix: np.ndarray
    has_vector: np.ndarray
    n_file_rows: int
    n_unknown_tokens: int
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def n_items(self) -> int:
        """Real items (padding excluded)."""
        return int(self.matrix.shape[0] - 1)

    @property
    def n_covered(self) -> int:
        return int(self.has_vector.sum())

    def report(self) -> str:
        share = 100.0 * self.n_covered / max(self.n_items, 1)
        text = (
            f"item feature '{self.name}': {self.n_covered}/{self.n_items} items have a vector "
            f"({share:.1f}%), dim {self.dim}"
        )
        missing = self.n_items - self.n_covered
        if missing:
            text += f"; {missing} items have none (zero vector, excluded from profiles)"
        if self.n_unknown_tokens:
            text += f"; {self.n_unknown_tokens} file rows name items not in the dataset (ignored)"
        if self.path is not None:
            text += f" [{self.path}]"
        return text


def feature_paths(directory: str | os.PathLike, name: str) -> tuple[Path, Path, Path]:
    """``(<name>.npy, <name>.tokens, <name>.json)`` inside ``directory``."""
    base = Path(directory)
    return base / f"{name}.npy", base / f"{name}.tokens", base / f"{name}.json"


def save_feature(
    directory: str | os.PathLike,
    name: str,
    matrix: np.ndarray,
    tokens: Sequence[str],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a feature in the documented format; validates first. Returns the ``.npy`` path."""
    matrix = np.asarray(matrix)
    npy_path, tokens_path, meta_path = feature_paths(directory, name)
    _validate(name, matrix, list(tokens), npy_path, tokens_path)
    # tokens and meta first: the .npy is the file whose presence means "feature exists".
    atomic_write(tokens_path, lambda h: h.write("".join(f"{t}\n" for t in tokens).encode()))
    atomic_write(meta_path, lambda h: h.write(json.dumps(meta or {}, indent=2).encode()))
    atomic_write(npy_path, lambda h: np.save(h, matrix.astype(np.float32, copy=False)))
    return npy_path


def read_meta(directory: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """The provenance record of a feature, or None when there is none (or it is unreadable)."""
    meta_path = feature_paths(directory, name)[2]
    try:
        return json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None


def load_feature(directory: str | os.PathLike, name: str) -> FeatureFile:
    """Read and validate a feature file; every problem raises FeatureFileError naming the file."""
    npy_path, tokens_path, _ = feature_paths(directory, name)
    if not npy_path.is_file():
        raise FeatureFileError(f"feature '{name}': file not found: {npy_path}")
    if not tokens_path.is_file():
        raise FeatureFileError(
            f"feature '{name}': {npy_path} has no item-token list beside it: expected {tokens_path}"
            " (one item token per line, line i names the item of row i)"
        )
    try:
        matrix = load_array(npy_path)
    except (ValueError, OSError, EOFError) as error:
        raise FeatureFileError(f"feature '{name}': cannot read {npy_path}: {error}") from error
    try:
        tokens = tokens_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise FeatureFileError(f"feature '{name}': {tokens_path} is not UTF-8: {error}") from error
    _validate(name, matrix, tokens, npy_path, tokens_path)
    return FeatureFile(
        name=name,
        matrix=matrix.astype(np.float32, copy=False),
        tokens=tokens,
        meta=read_meta(directory, name) or {},
        path=npy_path,
    )


def _validate(
    name: str, matrix: np.ndarray, tokens: list[str], npy_path: Path, tokens_path: Path
) -> None:
    where = f"feature '{name}' ({npy_path})"
    if not np.issubdtype(matrix.dtype, np.floating):
        raise FeatureFileError(f"{where}: dtype is {matrix.dtype}, expected a float array")
    if matrix.ndim != 2:
        raise FeatureFileError(f"{where}: expected a 2-D array (items x dim), got {matrix.shape}")
    if matrix.shape[0] != len(tokens):
        raise FeatureFileError(
            f"{where}: {matrix.shape[0]} rows but {tokens_path} lists {len(tokens)} item tokens"
        )
    seen: dict[str, int] = {}
    for line_no, token in enumerate(tokens, start=1):
        if not token.strip():
            raise FeatureFileError(f"{tokens_path}:{line_no}: empty item token")
        if token in seen:
            raise FeatureFileError(
                f"{tokens_path}:{line_no}: item token {token!r} already on line {seen[token]}"
            )
        seen[token] = line_no
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite)
        examples = ", ".join(f"row {r} (item {tokens[r]!r})" for r in bad_rows[:5])
        raise FeatureFileError(f"{where}: {len(bad_rows)} rows contain NaN or inf: {examples}")


def align_feature(
    feature: FeatureFile,
    item_tokens: Sequence[str],
    unknown_tokens: str = "error",
) -> AlignedFeature:
    """Place each file row at its item's internal id.

    ``item_tokens[i]`` is the raw token of internal item id ``i`` (``item_tokens[0]`` is RecBole's
    ``[PAD]``). Rows whose token is not a dataset item raise FeatureFileError when
    ``unknown_tokens == "error"`` (the default), or are counted and dropped with ``"ignore"``
    (useful after k-core filtering removed items). All-zero rows count as "no vector".
    """
    if unknown_tokens not in UNKNOWN_TOKEN_RULES:
        raise ValueError(f"unknown_tokens must be 'error' or 'ignore', got {unknown_tokens!r}")
    token_to_id = {token: index for index, token in enumerate(item_tokens) if index > 0}
    file_rows, item_ids, unknown = [], [], []
    for row, token in enumerate(feature.tokens):
        item_id = token_to_id.get(token)
        if item_id is None:
            unknown.append(token)
        else:
            file_rows.append(row)
            item_ids.append(item_id)
    if unknown and unknown_tokens == "error":
        examples = ", ".join(repr(t) for t in unknown[:5])
        raise FeatureFileError(
            f"feature '{feature.name}' ({feature.path}): {len(unknown)} of {len(feature.tokens)} "
            f"rows name items that are not in the dataset, e.g. {examples}. If the dataset was "
            "filtered on purpose, set `feature_unknown_tokens: ignore`."
        )
    matrix = np.zeros((len(item_tokens), feature.matrix.shape[1]), dtype=np.float32)
    matrix[item_ids] = feature.matrix[file_rows]
    has_vector = np.zeros(len(item_tokens), dtype=bool)
    has_vector[item_ids] = np.abs(matrix[item_ids]).sum(axis=1) > 0
    return AlignedFeature(
        name=feature.name,
        matrix=matrix,
        has_vector=has_vector,
        n_file_rows=len(feature.tokens),
        n_unknown_tokens=len(unknown),
        path=feature.path,
        meta=feature.meta,
    )
