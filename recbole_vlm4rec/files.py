"""Writing files so that a crash, Ctrl-C or a concurrent reader never sees half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


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
