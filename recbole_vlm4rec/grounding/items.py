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

from recbole_vlm4rec.data.feature_status import item_table_columns
from recbole_vlm4rec.data.registry import check_dataset, is_embedded
from recbole_vlm4rec.formats.images import is_url, resolve_image_reference
from recbole_vlm4rec.formats.paths import dataset_root
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


def with_local_image(items: list[GroundingItem]) -> list[GroundingItem]:
    """The items whose image is a local file that exists (no URL, no empty reference)."""
    return [item for item in items
            if item.image and not is_url(item.image) and Path(item.image).is_file()]


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


class NoImagesError(ValueError):
    """A dataset that exists but has no item image to describe."""


def items_of_named_dataset(name: str, context_template: str | None = None,
                           image_column: str = "image") -> list[GroundingItem]:
    """The items of dataset ``name`` under the project's ``dataset/`` folder.

    UnknownDatasetError (with a did-you-mean, or how to prepare a named dataset) when ``name``
    cannot run; NoImagesError when it can but none of its items has an image (ml-100k: its item
    table ships inside recbole, without images).
    """
    dataset_dir = dataset_root() / name
    path = dataset_item_file(dataset_dir)
    other = (" (ml-100k-posters is ml-100k with posters: vlm4rec prepare ml-100k-posters "
             "--posters <folder>)" if name == "ml-100k" else "")
    advice = f"; grounding describes item images{other}, or pass --items TABLE with an image column"
    if not path.is_file():  # grounding needs only the item table, not the interactions
        if not is_embedded(name):
            check_dataset(name)  # unknown (did you mean ...?) or named but not prepared
        why = ("it ships inside a package with no image column" if is_embedded(name)
               else f"it has no item table {path}")
        raise NoImagesError(f"dataset '{name}' has no item images: {why}{advice}")
    if image_column not in item_table_columns(path):
        raise NoImagesError(f"dataset '{name}' has no item images: {path} has no "
                            f"{image_column!r} column{advice}")
    items = items_from_dataset(dataset_dir, context_template, image_column)
    if not any(item.image for item in items):
        raise NoImagesError(f"dataset '{name}' has no item images: the {image_column!r} column of "
                            f"{path} is empty for all {len(items)} items{advice}")
    return items
