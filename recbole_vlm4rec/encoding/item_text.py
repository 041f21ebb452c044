"""Build a text feature from an item atomic file: render a template per item, encode, cache.

The cache is the feature's own ``.json`` record: it stores a key over the rendered texts and the
encoder fingerprint, so the vectors are rebuilt exactly when the item texts, the template or the
encoder change, and reused otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import string
from pathlib import Path

import pandas as pd

from recbole_vlm4rec.data.features import feature_paths, read_meta, save_feature
from recbole_vlm4rec.encoding.text import TextEncoder, encoder_fingerprint

logger = logging.getLogger(__name__)


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


def text_cache_key(tokens: list[str], texts: list[str], encoder_spec: str) -> str:
    digest = hashlib.sha256(encoder_fingerprint(encoder_spec).encode())
    for token, text in zip(tokens, texts):
        digest.update(f"{token}\t{text}\n".encode())
    return digest.hexdigest()


def build_item_text_feature(
    item_file: str | Path,
    template: str,
    out_dir: str | Path,
    name: str,
    encoder_spec: str,
    item_field: str = "item_id",
    device: str | None = None,
    force: bool = False,
) -> Path:
    """Make sure ``out_dir/<name>.npy`` holds the encoded item texts; returns its path.

    Reuses the existing file when its cache key matches (same texts, same encoder).
    """
    items = read_atomic_item_file(item_file)
    tokens, texts, without_text = render_item_texts(items, template, item_field, item_file)
    key = text_cache_key(tokens, texts, encoder_spec)
    npy_path = feature_paths(out_dir, name)[0]
    meta = read_meta(out_dir, name)
    if not force and npy_path.is_file() and meta and meta.get("cache_key") == key:
        return npy_path
    if without_text:
        logger.warning(
            "%s: %d items have no text for template %r and get no '%s' vector (e.g. %s)",
            item_file, len(without_text), template, name, ", ".join(without_text[:5]),
        )
    logger.info("encoding %d item texts of %s with %s", len(texts), item_file, encoder_spec)
    vectors = TextEncoder(encoder_spec, device=device).encode(texts)
    save_feature(
        out_dir,
        name,
        vectors,
        tokens,
        meta={
            "kind": "item_text",
            "source": str(item_file),
            "template": template,
            "encoder": encoder_spec,
            "encoder_fingerprint": encoder_fingerprint(encoder_spec),
            "cache_key": key,
            "n_items": len(tokens),
            "items_without_text": len(without_text),
        },
    )
    return npy_path
