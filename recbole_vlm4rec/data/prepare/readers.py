"""Line readers shared by the sources: delimited tables and JSON/Python-literal lines.

Lines are decoded one at a time, so a bad byte or a broken record is reported as ``file:line``.
Broken records and refused values are counted in :class:`~.values.Problems` (first examples kept)
rather than silently skipped; a line longer than ``values.MAX_LINE_BYTES`` is never held in memory
whole. A file where every record is broken raises :class:`PrepareError` in the source.
"""

from __future__ import annotations

import codecs
import csv
import gzip
from pathlib import Path
from typing import IO, Iterator

from recbole_vlm4rec.data.prepare.prepared import PrepareError
from recbole_vlm4rec.data.prepare.values import (MAX_LINE_BYTES, OVER_LONG, BadValue, Problems,
                                                  show)


def open_binary(path: Path) -> IO[bytes]:
    """A file or its ``.gz`` transparently (by magic bytes, not name)."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _raw_lines(handle: IO[bytes]) -> Iterator[tuple[bytes, int]]:
    """``(line, size in bytes)``; a line over ``MAX_LINE_BYTES`` is read past in bounded pieces
    and given as ``(b"", size)``."""
    while True:
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        size = len(raw)
        if size <= MAX_LINE_BYTES or raw.endswith(b"\n"):
            yield raw, size
            continue
        while not raw.endswith(b"\n"):
            raw = handle.readline(MAX_LINE_BYTES)
            if not raw:
                break
            size += len(raw)
        yield b"", size


def iter_lines(path: Path, encoding: str, problems: Problems,
               header: bool = False) -> Iterator[tuple[int, str]]:
    """``(line_no, text)`` of non-blank lines; undecodable or over-long lines go to ``problems``
    (a header line that is either is a :class:`PrepareError`)."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise PrepareError(f"unknown --encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") \
            from None
    with open_binary(path) as handle:
        for line_no, (raw, size) in enumerate(_raw_lines(handle), start=1):
            if size > MAX_LINE_BYTES:
                error: ValueError = BadValue(
                    OVER_LONG, f"line of {size:,} bytes (at most {MAX_LINE_BYTES:,}): skipped")
            else:
                try:
                    text = raw.decode(encoding)
                except UnicodeDecodeError as decode_error:
                    error = ValueError(f"not {encoding} ({decode_error.reason}); pass --encoding "
                                       "if the file uses another one")
                else:
                    text = text.lstrip("\ufeff") if line_no == 1 else text
                    text = text.rstrip("\r\n")
                    if text.strip():
                        header = False
                        yield line_no, text
                    continue
            if header:
                raise PrepareError(f"{path}:{line_no}: header line refused: {error}")
            problems.refuse(f"{path}:{line_no}", error)


def sniff_separator(header: str, path: Path) -> str:
    for separator in ("\t", ",", ";", "|"):
        if separator in header:
            return separator
    raise PrepareError(f"{path}:1: cannot tell the column separator of header {show(header)}")


def read_table(
    path: Path, encoding: str, problems: Problems, separator: str | None = None
) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Header names and an iterator of ``(line_no, fields)`` with the header's field count.

    Header names keep RecBole's ``name:type`` suffix stripped (``user_id:token`` -> ``user_id``).
    Rows with a different number of fields go to ``problems``. Quoted csv is handled with the
    csv module so commas inside quotes are not separators (a field over its limit is refused).
    """
    lines = iter_lines(path, encoding, problems, header=True)
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
                try:
                    fields = next(csv.reader([text], delimiter=separator))
                except csv.Error as error:
                    too_long = "field larger than field limit" in str(error)
                    problems.refuse(f"{path}:{line_no}", BadValue(OVER_LONG, f"csv: {error}")
                                    if too_long else ValueError(f"csv: {error}"))
                    continue
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
            f"{path}:1: no column named any of {list(candidates)}; header is {show(header, 200)}"
        )
    return None
