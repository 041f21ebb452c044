"""Line readers shared by the sources: delimited tables and JSON/Python-literal lines.

Lines are decoded one at a time, so a bad byte or a broken record is reported as ``file:line``.
Broken records are collected in a :class:`Problems` log (counted, first examples kept) rather than
silently skipped; a file where every record is broken raises :class:`PrepareError`.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

from recbole_vlm4rec.data.prepare.output import PrepareError, PreparedDataset

MAX_EXAMPLES = 5


@dataclass
class Problems:
    """Counted, located problems of one kind (e.g. malformed lines)."""

    key: str
    reason: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {message}")

    def record(self, prepared: PreparedDataset) -> None:
        """Put the count (with the first examples) on the dataset card; nothing when zero."""
        if self.count:
            examples = "; ".join(self.examples)
            prepared.count(self.key, self.count, f"{self.reason} (e.g. {examples})")


def open_binary(path: Path) -> IO[bytes]:
    """A file or its ``.gz`` transparently (by magic bytes, not name)."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def iter_lines(path: Path, encoding: str, problems: Problems) -> Iterator[tuple[int, str]]:
    """``(line_no, text)`` of non-blank lines; undecodable lines go to ``problems``."""
    with open_binary(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as error:
                problems.add(f"{path}:{line_no}", f"not {encoding} ({error.reason}); "
                             "pass --encoding if the file uses another one")
                continue
            text = text.lstrip("\ufeff") if line_no == 1 else text
            text = text.rstrip("\r\n")
            if text.strip():
                yield line_no, text


def sniff_separator(header: str, path: Path) -> str:
    for separator in ("\t", ",", ";", "|"):
        if separator in header:
            return separator
    raise PrepareError(f"{path}:1: cannot tell the column separator of header {header!r}")


def read_table(
    path: Path, encoding: str, problems: Problems, separator: str | None = None
) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Header names and an iterator of ``(line_no, fields)`` with the header's field count.

    Header names keep RecBole's ``name:type`` suffix stripped (``user_id:token`` -> ``user_id``).
    Rows with a different number of fields go to ``problems``. Quoted csv is handled with the
    csv module so commas inside quotes are not separators.
    """
    import csv

    lines = iter_lines(path, encoding, problems)
    try:
        _, header_text = next(lines)
    except StopIteration:
        raise PrepareError(f"{path}: empty file (expected a header line)") from None
    separator = separator or sniff_separator(header_text, path)
    header = [name.strip().split(":")[0] for name in header_text.split(separator)]

    def rows() -> Iterator[tuple[int, list[str]]]:
        for line_no, text in lines:
            if separator == "\t":
                fields = text.split("\t")
            else:
                fields = next(csv.reader([text], delimiter=separator))
            if len(fields) != len(header):
                problems.add(f"{path}:{line_no}",
                             f"{len(fields)} fields, header has {len(header)}")
                continue
            yield line_no, [f.strip() for f in fields]

    return header, rows()


def find_column(header: list[str], candidates: tuple[str, ...], path: Path,
                required: bool = True) -> int | None:
    """Index of the first header name in ``candidates`` (case-insensitive)."""
    lowered = [name.lower() for name in header]
    for candidate in candidates:
        if candidate.lower() in lowered:
            return lowered.index(candidate.lower())
    if required:
        raise PrepareError(
            f"{path}:1: no column named any of {list(candidates)}; header is {header}"
        )
    return None
