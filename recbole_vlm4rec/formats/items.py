"""Item tables: RecBole ``.item`` atomic files, ``.csv`` and ``.tsv``, read as strings.

Every stage that reads item metadata (grounding's item list, encoding's text templates and image
columns, serving's titles, the report's examples) reads it here, with the same rules: all values
are strings, ``:type`` suffixes are dropped from the header, empty cells stay empty strings.
Texts are rendered per item from a ``{column}`` template.
"""

from __future__ import annotations

import string
from pathlib import Path

import pandas as pd


def read_atomic_item_file(path: str | Path) -> pd.DataFrame:
    """An ``.item`` atomic file as strings, with the ``:type`` suffixes stripped from the header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"item atomic file not found: {path}")
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    frame.columns = [str(column).split(":")[0] for column in frame.columns]
    return frame


def read_item_table(path: str | Path) -> pd.DataFrame:
    """An ``.item`` atomic file, ``.csv`` or ``.tsv`` as strings (``:type`` header suffixes dropped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"item table not found: {path}")
    if path.suffix == ".item":
        return read_atomic_item_file(path)
    separator = "," if path.suffix == ".csv" else "\t"
    frame = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False)
    frame.columns = [str(column).split(":")[0] for column in frame.columns]
    return frame


def render_item_texts(
    items: pd.DataFrame, template: str, item_field: str, source: str | Path = "<items>"
) -> tuple[list[str], list[str], list[str]]:
    """``(tokens, texts, tokens_without_text)`` for each row, rendered with ``template``.

    ``template`` uses ``{column}`` placeholders. A row whose placeholders are all empty has no
    text: it is returned in ``tokens_without_text`` rather than encoded as a blank string.
    """
    columns = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    missing = [c for c in [item_field, *columns] if c not in items.columns]
    if missing:
        raise KeyError(
            f"{source}: template {template!r} needs columns {missing} that are not in the file "
            f"(columns: {list(items.columns)})"
        )
    tokens, texts, without_text = [], [], []
    for record in items[[item_field, *columns]].itertuples(index=False):
        values = dict(zip([item_field, *columns], record))
        token = values[item_field]
        if not any(str(values[c]).strip() for c in columns):
            without_text.append(token)
            continue
        tokens.append(token)
        texts.append(" ".join(template.format_map(values).split()))
    return tokens, texts, without_text
