"""The items a grounding run describes: token, image reference and catalogue text per item.

Two sources:

* a prepared dataset: ``dataset/<name>/<name>.item`` (RecBole atomic file) with columns
  ``item_id`` and ``image`` (path relative to the dataset folder, absolute path or URL; empty =
  no image); every other column can go into the prompt through a context template like
  ``"{title}"``;
* any table (``--items file``): ``.item`` / ``.tsv`` (tab-separated) or ``.csv``, with the item,
  image and context columns named by flags and relative image paths under ``--image-root``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from recbole_vlm4rec.formats.images import resolve_image_reference
from recbole_vlm4rec.formats.items import read_atomic_item_file


@dataclass(frozen=True)
class GroundingItem:
    item_id: str
    image: str      # resolved path or URL; "" when the item has no image
    context: str    # catalogue text for the prompt; may be ""


def items_from_table(
    table: pd.DataFrame,
    image_root: str | Path,
    item_column: str = "item_id",
    image_column: str = "image",
    context_template: str | None = None,
    source: str | Path = "<items>",
) -> list[GroundingItem]:
    """One :class:`GroundingItem` per row; KeyError naming the file when a column is missing,
    ValueError when an item token is blank or repeats."""
    context_columns = [
        name for _, name, _, _ in string.Formatter().parse(context_template or "") if name
    ]
    needed = [item_column, image_column, *context_columns]
    missing = [column for column in needed if column not in table.columns]
    if missing:
        raise KeyError(
            f"{source}: columns {missing} not found (columns: {list(table.columns)}); "
            "name them with --item-column / --image-column / --context"
        )
    items, seen = [], set()
    for line, record in enumerate(table[needed].itertuples(index=False), start=2):
        values = dict(zip(needed, record))
        token = str(values[item_column]).strip()
        if not token:
            raise ValueError(f"{source}:{line}: blank {item_column!r}")
        if token in seen:
            raise ValueError(f"{source}:{line}: item {token!r} appears twice")
        seen.add(token)
        context = ""
        if context_template and any(str(values[c]).strip() for c in context_columns):
            context = " ".join(context_template.format_map(values).split())
        image = resolve_image_reference(str(values[image_column]), image_root)
        items.append(GroundingItem(token, image, context))
    return items


def dataset_item_file(dataset_dir: str | Path) -> Path:
    dataset_dir = Path(dataset_dir)
    return dataset_dir / f"{dataset_dir.name}.item"


def items_from_dataset(
    dataset_dir: str | Path, context_template: str | None = None, image_column: str = "image"
) -> list[GroundingItem]:
    """Items of a prepared dataset folder (``<dir>/<name>.item``, images relative to ``<dir>``)."""
    path = dataset_item_file(dataset_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: prepare the dataset first (vlm4rec prepare ...) or pass --items"
        )
    return items_from_table(
        read_atomic_item_file(path), dataset_dir, "item_id", image_column, context_template, path
    )
