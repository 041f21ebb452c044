"""The grounding cache (SQLite, the source of truth) and the descriptions file exported from it.

Files, for a run tagged ``<tag>`` (default ``<backend>-<prompt>``)::

    dataset/<name>/descriptions/<tag>.sqlite   cache: one row per item ever described under <tag>
    dataset/<name>/descriptions/<tag>.jsonl    export: every row the cache holds

``<tag>.jsonl`` is what ``vlm4rec encode`` reads. UTF-8, one JSON object per line, sorted by
``item_id`` (string order), rewritten atomically (temp file + rename) from the whole cache at the
end of every run, also an interrupted or aborted one, so it never holds fewer rows than the cache
(a run over some items, or one that stopped early, keeps the other items' rows; each row names
the backend, model and prompt that made it). Keys, all always present:

==================  ===========================================================================
``item_id``         the item token, as in ``<name>.item``
``status``          ``"ok"`` or ``"failed"``
``text``            ``ok``: the description to encode (never empty); structured prompts give the
                    text rendering of ``fields``. ``failed``: ``null``
``reason``          ``failed``: a short code (``missing``, ``corrupt``, ``timeout``, ``http_500``,
                    ``empty_output``, ``invalid_json``...); ``ok``: ``null``
``detail``          human-readable: the error, or fixes applied to the image (``converted CMYK
                    to RGB``); may be ``""``
``backend``         ``transformers`` | ``openai`` | ``tagger`` | ...
``model``           the backend's model id (name/path and generation settings)
``prompt``          prompt name; ``prompt_version``: its declared version
``image_sha256``    sha256 of the image bytes described (``null`` when they could not be read)
``fields``          structured prompts: the validated slots (``{slot: text or [text]}``); else ``null``
==================  ===========================================================================

The SQLite file (WAL mode, so readers never block the writer and a crash never leaves a torn
write) has one table ``descriptions`` with those columns plus ``prompt_key`` (hash of the prompt
file and the rendered per-item prompt) and ``updated_at`` (unix time). A row is *current* for a run
when its ``backend``, ``model``, ``prompt_key`` and ``image_sha256`` all equal the run's; anything
else is stale and redone. Rows are committed once per batch, so a crash or Ctrl-C loses at most the
batches in flight. A failed row never replaces an ``ok`` row (:meth:`DescriptionStore.put_many`):
a stale description stays until a successful attempt replaces it, whatever the failure (a server
answering 500, one that died, an image gone missing).

Two runs on the same tag share the work through a second table, ``claims`` (``item_id``,
``owner``, ``expires_at``): a run claims items before sending them and skips items another run
holds; it renews its claims while it works and releases them as rows are committed or when it
stops. Claims of a run that was killed expire (``CLAIM_TTL_S``), or at once when the owner was a
process on this host that no longer exists, and are then taken over.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from recbole_vlm4rec.formats.descriptions import DESCRIPTION_KEYS, write_descriptions
from recbole_vlm4rec.formats.files import connect_sqlite_wal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS descriptions (
    item_id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    text TEXT,
    reason TEXT,
    detail TEXT NOT NULL DEFAULT '',
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    prompt_key TEXT NOT NULL,
    image_sha256 TEXT,
    fields TEXT,
    updated_at REAL NOT NULL
)
"""
_CLAIMS_SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    item_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
)
"""
CLAIM_TTL_S = 60.0  # a claim not renewed for this long is taken over by another run
_CHUNK = 500  # SQLite's bound-parameter limit is 999 on old builds


@dataclass
class DescriptionRow:
    """One item's grounding result, as stored and exported."""

    item_id: str
    status: str
    text: str | None
    reason: str | None
    detail: str
    backend: str
    model: str
    prompt: str
    prompt_version: str
    prompt_key: str
    image_sha256: str | None
    fields: dict[str, Any] | None = None
    updated_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def export(self) -> dict[str, Any]:
        record = asdict(self)
        return {key: record[key] for key in DESCRIPTION_KEYS}


_COLUMNS = [f.name for f in fields(DescriptionRow)]


class DescriptionStore:
    """The SQLite cache of one descriptions tag. Use from one thread (the pipeline's main one)."""

    def __init__(self, path: str | Path, timeout_s: float = 60.0, read_only: bool = False) -> None:
        """``read_only`` (dry runs): nothing is created or written; a missing file reads as an
        empty cache."""
        self.path = Path(path)
        try:
            if read_only:
                self._db = _connect_read_only(self.path)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = connect_sqlite_wal(self.path, ("PRAGMA synchronous=NORMAL", _SCHEMA, _CLAIMS_SCHEMA),
                                          timeout_s, isolation_level=None)
        except sqlite3.DatabaseError as error:
            raise sqlite3.DatabaseError(
                f"{self.path}: not a usable grounding cache ({error}); move it away to start over"
            ) from error

    def __enter__(self) -> "DescriptionStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def get_many(self, item_ids: Sequence[str]) -> dict[str, DescriptionRow]:
        found: dict[str, DescriptionRow] = {}
        ids = list(item_ids)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            cursor = self._db.execute(
                f"SELECT {','.join(_COLUMNS)} FROM descriptions WHERE item_id IN ({marks})", chunk
            )
            found.update((row.item_id, row) for row in map(_row, cursor))
        return found

    def all_rows(self) -> list[DescriptionRow]:
        """Every row the cache holds, sorted by item_id."""
        cursor = self._db.execute(f"SELECT {','.join(_COLUMNS)} FROM descriptions ORDER BY item_id")
        return [_row(values) for values in cursor]

    def describers(self) -> dict[tuple[str, str, str], int]:
        """``(backend, model, prompt) -> ok rows`` over the whole cache."""
        return {(backend, model, prompt): count for backend, model, prompt, count in self._db.execute(
            "SELECT backend, model, prompt, COUNT(*) FROM descriptions WHERE status = 'ok' "
            "GROUP BY backend, model, prompt")}

    def put_many(self, rows: Iterable[DescriptionRow], owner: str | None = None) -> set[str]:
        """Write ``rows`` in one transaction, releasing ``owner``'s claims on them. A failed row
        never replaces an ok one (whatever made it): returns the items whose ok row was kept
        instead of the failed row given."""
        now = time.time()
        values = []
        for row in rows:
            row.updated_at = now
            record = asdict(row)
            record["fields"] = json.dumps(row.fields, ensure_ascii=False) if row.fields is not None else None
            values.append([record[c] for c in _COLUMNS])
        if not values:
            return set()
        marks = ",".join("?" * len(_COLUMNS))
        updates = ", ".join(f"{column} = excluded.{column}" for column in _COLUMNS[1:])
        failed = [value[0] for value in values if value[1] != "ok"]
        kept: set[str] = set()

        def insert() -> None:
            kept.clear()
            for start in range(0, len(failed), _CHUNK):  # read in the write transaction: no race
                chunk = failed[start:start + _CHUNK]
                kept.update(item for (item,) in self._db.execute(
                    f"SELECT item_id FROM descriptions WHERE status = 'ok' AND item_id IN "
                    f"({','.join('?' * len(chunk))})", chunk))
            self._db.executemany(
                f"INSERT INTO descriptions ({','.join(_COLUMNS)}) VALUES ({marks}) ON CONFLICT (item_id) "
                f"DO UPDATE SET {updates} WHERE excluded.status = 'ok' OR descriptions.status != 'ok'",
                values)
            if owner is not None:
                self._db.executemany("DELETE FROM claims WHERE item_id = ? AND owner = ?",
                                     [(value[0], owner) for value in values])

        self._write(insert)
        return set(kept)

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM descriptions").fetchone()[0])

    # ------------------------------------------------------------ claims (runs sharing a tag)

    def claim(self, item_ids: Sequence[str], owner: str, ttl_s: float = CLAIM_TTL_S) -> set[str]:
        """Claim the ``item_ids`` no other live run holds; returns those now held by ``owner``."""
        ids = list(item_ids)
        if not ids:
            return set()
        now = time.time()
        held: set[str] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))

            def take() -> None:
                others = self._db.execute(
                    f"SELECT item_id, owner, expires_at FROM claims WHERE item_id IN ({marks}) AND owner != ?",
                    [*chunk, owner]).fetchall()
                stale = [item for item, other, expires in others if expires < now or _owner_is_gone(other)]
                self._db.executemany("DELETE FROM claims WHERE item_id = ?", [(item,) for item in stale])
                self._db.executemany(
                    "INSERT INTO claims (item_id, owner, expires_at) VALUES (?, ?, ?) ON CONFLICT (item_id) "
                    "DO UPDATE SET expires_at = excluded.expires_at WHERE owner = excluded.owner",
                    [(item, owner, now + ttl_s) for item in chunk])
                held.update(value for (value,) in self._db.execute(
                    f"SELECT item_id FROM claims WHERE item_id IN ({marks}) AND owner = ?", [*chunk, owner]))

            self._write(take)
        return held

    def renew_claims(self, owner: str, ttl_s: float = CLAIM_TTL_S) -> None:
        self._write(lambda: self._db.execute("UPDATE claims SET expires_at = ? WHERE owner = ?",
                                             (time.time() + ttl_s, owner)))

    def release_claims(self, owner: str, item_ids: Sequence[str] | None = None) -> None:
        """Release ``owner``'s claims: all, or those on ``item_ids``."""
        if item_ids is None:
            self._write(lambda: self._db.execute("DELETE FROM claims WHERE owner = ?", (owner,)))
        else:
            self._write(lambda: self._db.executemany("DELETE FROM claims WHERE item_id = ? AND owner = ?",
                                                     [(item_id, owner) for item_id in item_ids]))

    def _write(self, statements: Callable[[], Any]) -> None:
        """Run ``statements`` in one write transaction."""
        if self._db.in_transaction:
            # A Ctrl-C landed between BEGIN and COMMIT of an earlier call: its rows were not saved
            # (the pipeline passes them again), and the open transaction must not block this one.
            self._db.execute("ROLLBACK")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            statements()
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that creates and writes nothing: an empty in-memory cache when ``path`` does
    not exist; ``immutable`` when no write-ahead log is beside it (a read-only WAL connection
    would create one), else read-only (a run on the tag is active or died: its log holds rows)."""
    if not path.exists():
        connection = sqlite3.connect(":memory:", isolation_level=None)
        connection.execute(_SCHEMA)
        connection.execute(_CLAIMS_SCHEMA)
        return connection
    mode = "mode=ro" if Path(f"{path}-wal").exists() else "immutable=1"
    uri = f"{path.resolve().as_uri()}?{mode}"
    connection = sqlite3.connect(uri, uri=True, isolation_level=None)
    connection.execute("SELECT COUNT(*) FROM descriptions").fetchone()  # fails now if not a cache
    return connection


def _row(values: Sequence[Any]) -> DescriptionRow:
    row = DescriptionRow(**dict(zip(_COLUMNS, values)))
    row.fields = json.loads(row.fields) if row.fields else None  # type: ignore[arg-type]
    return row


def new_claim_owner() -> str:
    """A claim owner name: host, process id and a random part (two runs in one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_is_gone(owner: str) -> bool:
    """The owner was a process on this host that no longer runs (its claims need not expire)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. EPERM: the process exists
        return False
    return False



def export_jsonl(path: str | Path, rows: Iterable[DescriptionRow]) -> int:
    """Write ``rows`` in the descriptions format (formats/descriptions.py); returns the line count."""
    return write_descriptions(path, (row.export() for row in rows))
