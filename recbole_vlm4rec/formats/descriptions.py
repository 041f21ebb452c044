"""Item descriptions: ``dataset/<name>/descriptions/<tag>.jsonl``, written by ``vlm4rec ground``.

One JSON object per line, sorted by item id::

    {"item_id": "42", "status": "ok", "text": "A dark noir poster ...", "reason": null,
     "detail": "", "backend": "openai", "model": "...", "prompt": "preference",
     "prompt_version": "...", "image_sha256": "...", "fields": {...} or null}

``status`` is ``ok`` (``text`` holds the description) or ``failed`` (``reason`` / ``detail`` say
why). Hand-written files may name the item ``item`` / ``token`` / ``asin`` and the text
``description`` / ``desc``; a row without ``status`` counts as ``ok``. When an item appears on
several lines the last one wins (counted as superseded). Lines that are not JSON objects or name no
item are *malformed*: every reader reports them with their line number, none drops them silently.

This module is the one reader and the one writer of the format; grounding writes it, encoding,
serving and the report read it. ``read_description_table`` reads the plain TSV alternative
(``item_id<TAB>description`` with a header) accepted by ``vlm4rec export``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from recbole_vlm4rec.formats.files import atomic_write_text

DESCRIPTION_KEYS = (
    "item_id", "status", "text", "reason", "detail", "backend", "model", "prompt",
    "prompt_version", "image_sha256", "fields",
)
ITEM_KEYS = ("item_id", "item", "token", "asin")
TEXT_KEYS = ("text", "description", "desc")


class DescriptionsFileError(ValueError):
    """A descriptions file is missing or unreadable as a whole; names the file."""


@dataclass
class DescriptionsFile:
    """A parsed descriptions file: the last row per item, plus what could not be used."""

    path: Path
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # item -> last row (normalised)
    line_of: dict[str, int] = field(default_factory=dict)  # item -> line of its last row
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (line, why)
    superseded: int = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows.values())

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, item_id: str) -> str:
        return f"{self.path.name}:{self.line_of[item_id]}"

    def texts(self) -> dict[str, str]:
        """``item -> text`` for rows with status ``ok`` and a non-blank text."""
        return {item: row["text"].strip() for item, row in self.rows.items()
                if row["status"] == "ok" and isinstance(row["text"], str) and row["text"].strip()}

    def malformed_summary(self) -> str:
        shown = "; ".join(f"{self.path}:{line}: {why}" for line, why in self.malformed[:3])
        more = f" (+{len(self.malformed) - 3} more)" if len(self.malformed) > 3 else ""
        return f"{len(self.malformed)} malformed lines left out: {shown}{more}"


def _normalise(record: dict[str, Any]) -> dict[str, Any] | None:
    item = next((record[k] for k in ITEM_KEYS if k in record), None)
    if item is None or not str(item).strip():
        return None
    row = {key: record.get(key) for key in DESCRIPTION_KEYS}
    row["item_id"] = str(item)
    row["text"] = next((record[k] for k in TEXT_KEYS if k in record), None)
    row["status"] = record.get("status", "ok")
    return row


def read_descriptions(path: str | Path) -> DescriptionsFile:
    """Parse a descriptions JSONL file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DescriptionsFileError(f"descriptions file not found: {path}")
    parsed = DescriptionsFile(path)
    try:
        with path.open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as error:
                    parsed.malformed.append((line_no, f"not JSON ({error})"))
                    continue
                row = _normalise(record) if isinstance(record, dict) else None
                if row is None:
                    parsed.malformed.append((line_no, f"names no item (one of {ITEM_KEYS})"))
                    continue
                parsed.superseded += row["item_id"] in parsed.rows
                parsed.rows[row["item_id"]] = row
                parsed.line_of[row["item_id"]] = line_no
    except UnicodeDecodeError as error:
        raise DescriptionsFileError(f"{path}: not UTF-8 text ({error})") from error
    return parsed


def write_descriptions(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` (dicts with DESCRIPTION_KEYS) sorted by item id, atomically; returns the
    number of lines."""
    ordered = sorted(rows, key=lambda row: str(row["item_id"]))
    payload = "".join(
        json.dumps({key: row.get(key) for key in DESCRIPTION_KEYS}, ensure_ascii=False) + "\n"
        for row in ordered)
    atomic_write_text(path, payload)
    return len(ordered)


def read_description_table(path: str | Path) -> dict[str, str]:
    """``item -> description`` from a TSV with a header naming an item and a text column."""
    path = Path(path)
    if not path.is_file():
        raise DescriptionsFileError(f"descriptions file not found: {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        columns = {c.split(":")[0]: c for c in reader.fieldnames or []}
        item_col = next((columns[k] for k in ITEM_KEYS if k in columns), None)
        text_col = next((columns[k] for k in TEXT_KEYS if k in columns), None)
        if item_col is None or text_col is None:
            raise DescriptionsFileError(
                f"{path}: header needs an item column {ITEM_KEYS} and a description column "
                f"{TEXT_KEYS}; got {reader.fieldnames}")
        return {str(row[item_col]): str(row[text_col] or "") for row in reader}
