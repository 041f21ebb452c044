"""Files that survive crashes and concurrent users: atomic writes, shared SQLite caches."""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence


def _default_file_mode() -> int:
    # mkstemp creates 0600 files; give results the mode a plain open() would (0666 minus umask).
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any]) -> Path:
    """Call ``write(binary_handle)`` on a temp file in the same folder, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` as UTF-8, atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def connect_sqlite_wal(path: str | os.PathLike, setup: Sequence[str] = (), timeout_s: float = 60.0,
                       **options: Any) -> sqlite3.Connection:
    """A connection to ``path`` in WAL mode (concurrent readers, one writer at a time), with the
    ``setup`` statements (schema, pragmas) run.

    Two processes opening the same new file at once can get "database is locked" while the WAL
    files are being set up, without SQLite waiting on the busy timeout; the setup is retried.
    """
    connection = sqlite3.connect(str(path), timeout=timeout_s, **options)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            for statement in ("PRAGMA journal_mode=WAL", *setup):
                connection.execute(statement)
            return connection
        except sqlite3.DatabaseError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                connection.close()
                raise
            time.sleep(0.05)
