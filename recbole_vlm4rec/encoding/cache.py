"""Per-input vector cache shared by text and image encoding: a SQLite file in the features folder.

``<features_dir>/encode_cache.sqlite`` holds one table::

    vectors(namespace TEXT, key TEXT, vector BLOB, PRIMARY KEY (namespace, key))

``namespace`` names the encoder and what it encodes (``text:<encoder fingerprint>`` or
``image:<encoder fingerprint>``), ``key`` is the sha256 of the input (the exact text, or the image
file's bytes), ``vector`` the float32 bytes of its L2-normalised embedding. A rerun after a few
descriptions or images change encodes only those; a new encoder gets its own namespace, so stale
vectors are never reused. Each batch is committed as it finishes (WAL mode), so Ctrl-C loses at
most the batch in flight and two runs writing the same cache do not corrupt it. Delete the file to
drop the cache; nothing else depends on it.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from recbole_vlm4rec.formats.files import connect_sqlite_wal

CACHE_FILE_NAME = "encode_cache.sqlite"
_SQLITE_VARIABLE_LIMIT = 500  # keys per SELECT ... IN (...), well under SQLite's limit


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_stat_parts(path: str | os.PathLike) -> list[str]:
    """``name:size:mtime`` of a file, or of every file directly inside a folder.

    Cheap to compute and different whenever weights are replaced: part of encoder fingerprints.
    """
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    parts = []
    for file in files:
        if file.is_file():
            stat = file.stat()
            parts.append(f"{file.name}:{stat.st_size}:{int(stat.st_mtime)}")
    return parts


class VectorCache:
    """Vectors by (namespace, key) in a SQLite file; ``path=None`` is a no-op cache."""

    def __init__(self, path: str | os.PathLike | None, namespace: str) -> None:
        self.path = Path(path) if path is not None else None
        self.namespace = namespace
        self._connection: sqlite3.Connection | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = connect_sqlite_wal(self.path, (
                "CREATE TABLE IF NOT EXISTS vectors (namespace TEXT NOT NULL, key TEXT NOT NULL, "
                "vector BLOB NOT NULL, PRIMARY KEY (namespace, key))",
            ))
            self._connection.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys`` (missing keys are absent from the result)."""
        if self._connection is None:
            return {}
        unique = list(dict.fromkeys(keys))
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(unique), _SQLITE_VARIABLE_LIMIT):
            chunk = unique[start:start + _SQLITE_VARIABLE_LIMIT]
            rows = self._connection.execute(
                f"SELECT key, vector FROM vectors WHERE namespace = ? AND key IN "
                f"({','.join('?' * len(chunk))})",
                [self.namespace, *chunk],
            )
            for key, blob in rows:
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, vectors: Mapping[str, np.ndarray]) -> None:
        """Store vectors and commit (one transaction per call)."""
        if self._connection is None or not vectors:
            return
        with self._connection:
            self._connection.executemany(
                "INSERT OR REPLACE INTO vectors (namespace, key, vector) VALUES (?, ?, ?)",
                [
                    (self.namespace, key, np.asarray(vector, dtype=np.float32).tobytes())
                    for key, vector in vectors.items()
                ],
            )

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> "VectorCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
