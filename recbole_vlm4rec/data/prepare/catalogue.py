"""Source: any catalogue with images, and the ``ml-100k-posters`` shortcut built on it.

Input:

interactions table (csv/tsv/semicolon, separator sniffed from the header; RecBole atomic headers
    such as ``user_id:token`` work): user and item columns, optional rating and timestamp.
    Column names are guessed (``user_id``/``userId``/``user``..., ``item_id``/``movieId``/
    ``asin``...) or given with ``--user-col`` etc.
items table (optional): the item column, text columns (all others, or ``--text-cols``) and an
    image column (``image``/``image_path``/``poster_path``/``imUrl``...): a URL, an absolute path,
    or a path relative to ``--images`` (default: the items table's folder).
images folder (optional): without an image column, ``<images>/<item token>.<jpg|jpeg|png|webp>``.

Images are referenced in place (absolute paths; URLs kept), never copied. Items without an image
or whose file is missing keep an empty ``image`` and are counted; items absent from the items
table are kept with empty text (counted); items that no interaction names are left out (counted),
because features must only name dataset items.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from recbole_vlm4rec.formats.images import is_url
from recbole_vlm4rec.data.prepare.prepared import PrepareError, PreparedDataset
from recbole_vlm4rec.data.prepare.readers import find_column, read_table
from recbole_vlm4rec.data.prepare.values import (
    Problems,
    Refusals,
    check_id,
    check_number,
    check_reference,
    check_timestamp,
    clean_text,
    nothing_usable,
)
from recbole_vlm4rec.data.prepare.splits import apply_split, drop_duplicate_interactions, k_core

USER_COLUMNS = ("user_id", "userID", "userId", "user", "uid", "reviewerID")
ITEM_COLUMNS = ("item_id", "itemID", "itemId", "movieId", "movie_id", "item", "iid", "asin")
RATING_COLUMNS = ("rating", "overall", "score", "stars")
TIME_COLUMNS = ("timestamp", "time", "unixReviewTime", "date")
IMAGE_COLUMNS = ("image", "image_path", "poster_path", "imUrl", "image_url", "poster", "img")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def _malformed(refusals: Refusals) -> Problems:
    return refusals.counter("malformed_lines", "lines skipped: undecodable, wrong field count, "
                            "empty id or non-numeric rating/timestamp")


def read_interactions(path: Path, encoding: str, problems: Problems, user_col: str | None = None,
                      item_col: str | None = None, rating_col: str | None = None,
                      time_col: str | None = None) -> pd.DataFrame:
    """``user_id``, ``item_id`` (+ ``rating``, ``timestamp`` when present) in file order."""
    header, rows = read_table(path, encoding, problems)
    u = find_column(header, (user_col,) if user_col else USER_COLUMNS, path)
    i = find_column(header, (item_col,) if item_col else ITEM_COLUMNS, path)
    r = find_column(header, (rating_col,) if rating_col else RATING_COLUMNS, path,
                    required=bool(rating_col))
    t = find_column(header, (time_col,) if time_col else TIME_COLUMNS, path,
                    required=bool(time_col))
    records = []
    for line_no, fields in rows:
        try:
            user, item = check_id(fields[u], header[u]), check_id(fields[i], header[i])
            rating = check_number(fields[r], header[r]) if r is not None else None
            stamp = check_timestamp(fields[t], header[t]) if t is not None else None
        except ValueError as error:
            problems.refuse(f"{path}:{line_no}", error)
            continue
        records.append((user, item, rating, stamp))
    if not records:
        raise nothing_usable(path, "interaction lines", problems)
    frame = pd.DataFrame(records, columns=["user_id", "item_id", "rating", "timestamp"])
    return frame.drop(columns=[c for c, col in (("rating", r), ("timestamp", t)) if col is None])


def read_items(path: Path, encoding: str, problems: Problems, item_col: str | None = None,
               image_col: str | None = None, text_cols: list[str] | None = None
               ) -> tuple[pd.DataFrame, str | None]:
    """Items table as strings (``item_id`` first) and the name of its image column, if any."""
    header, rows = read_table(path, encoding, problems)
    i = find_column(header, (item_col,) if item_col else ITEM_COLUMNS, path)
    m = find_column(header, (image_col,) if image_col else IMAGE_COLUMNS, path,
                    required=bool(image_col))
    if text_cols is not None:
        missing = [c for c in text_cols if c not in header]
        if missing:
            raise PrepareError(f"{path}:1: text columns {missing} not in header {header}")
        keep = [header.index(c) for c in text_cols]
    else:
        keep = [k for k in range(len(header)) if k not in (i, m)]
    records, seen = [], set()
    for line_no, fields in rows:
        where = f"{path}:{line_no}"
        try:
            token = check_id(fields[i], header[i])
        except ValueError as error:
            problems.refuse(where, error)
            continue
        if token in seen:
            problems.add(where, f"item {token!r} listed again (first row kept)")
            continue
        seen.add(token)
        image = []
        if m is not None:
            try:
                image = [check_reference(fields[m], header[m])]
            except ValueError as error:
                problems.refuse(where, error, note=" (left empty)")
                image = [""]
        records.append([token] + [clean_text(fields[k]) for k in keep] + image)
    columns = ["item_id"] + [header[k] for k in keep] + (["image"] if m is not None else [])
    if len(set(columns)) != len(columns):
        raise PrepareError(f"{path}:1: column names clash after renaming: {columns}")
    return pd.DataFrame(records, columns=columns), ("image" if m is not None else None)


def resolve_image(reference: str, base: Path | None) -> tuple[str, bool]:
    """``(reference to write, file exists)``: URLs kept, paths made absolute against ``base``."""
    if not reference:
        return "", False
    if is_url(reference):
        return reference, True
    path = Path(reference)
    if not path.is_absolute() and base is not None:
        path = base / path
    path = path.resolve()
    return (str(path), True) if path.is_file() else ("", False)


def images_by_token(tokens: list[str], folder: Path) -> list[str]:
    """``<folder>/<token>.<suffix>`` for each token, or '' when no such file exists."""
    found = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.stem not in found:
            found[path.stem] = str(path.resolve())
    return [found.get(token, "") for token in tokens]


def attach_items(prepared: PreparedDataset, items: pd.DataFrame | None,
                 image_base: Path | None, images_folder: Path | None,
                 source: str) -> None:
    """Align the items table to the dataset's items, resolve images, count what is missing."""
    tokens = sorted(set(prepared.inter["item_id"]))
    if items is None:
        items = pd.DataFrame({"item_id": tokens})
    else:
        unused = int((~items["item_id"].isin(tokens)).sum())
        if unused:
            prepared.count("items_without_interactions", unused,
                           f"rows of {source} that no interaction names: left out")
        without = len(set(tokens) - set(items["item_id"]))
        if without:
            prepared.count("items_without_metadata", without,
                           f"interaction items absent from {source}: kept with empty text")
        items = pd.DataFrame({"item_id": tokens}).merge(items, on="item_id", how="left")
        items = items.fillna("")
    if "image" in items.columns:
        resolved = [resolve_image(str(ref), image_base) for ref in items["image"]]
        broken = sum(1 for ref, (_, ok) in zip(items["image"], resolved) if ref and not ok)
        if broken:
            prepared.count("image_files_missing", broken,
                           "image paths that point to no file: kept with an empty image")
        items["image"] = [ref for ref, _ in resolved]
    elif images_folder is not None:
        items["image"] = images_by_token(tokens, images_folder)
    if "image" in items.columns:
        without_image = int((items["image"] == "").sum())
        if without_image:
            prepared.count("items_without_image", without_image,
                           "dataset items with no image: kept, empty image column")
    prepared.items = items
    prepared.item_types = {"item_id": "token", "image": "token", **{
        c: "token_seq" for c in items.columns if c not in ("item_id", "image")}}


def prepare_catalogue(
    interactions: str | Path, name: str, items: str | Path | None = None,
    images: str | Path | None = None, user_col: str | None = None, item_col: str | None = None,
    rating_col: str | None = None, time_col: str | None = None, image_col: str | None = None,
    text_cols: list[str] | None = None, k: int = 0, split: str = "recbole", seed: int = 2024,
    encoding: str = "utf-8",
) -> PreparedDataset:
    """Read a catalogue (see the module docstring) into a PreparedDataset."""
    inter_path = Path(interactions).resolve()
    items_path = Path(items).resolve() if items else None
    images_dir = Path(images).resolve() if images else None
    for path in (inter_path, items_path):
        if path is not None and not path.is_file():
            raise PrepareError(f"file not found: {path}")
    if images_dir is not None and not images_dir.is_dir():
        raise PrepareError(f"images folder not found: {images_dir}")
    prepared = PreparedDataset(name=name, inter=pd.DataFrame(), source_kind="catalogue",
                               sources=[p for p in (inter_path, items_path) if p])
    refusals = Refusals()
    problems = _malformed(refusals)
    inter = read_interactions(inter_path, encoding, problems, user_col, item_col, rating_col,
                              time_col)
    inter = drop_duplicate_interactions(inter, prepared, "the first row in file order")
    inter = k_core(inter, k, prepared)
    prepared.inter = apply_split(inter, split, seed, prepared)
    table = None
    if items_path is not None:
        table, _ = read_items(items_path, encoding, problems, item_col, image_col, text_cols)
    base = images_dir or (items_path.parent if items_path else None)
    attach_items(prepared, table, base, images_dir,
                 items_path.name if items_path else "the items table")
    refusals.record(prepared)
    return prepared


POSTER_TABLE = "ml100k_items_with_posters.tsv"


def recbole_ml100k_folder() -> Path:
    import recbole

    return Path(recbole.__file__).resolve().parent / "dataset_example" / "ml-100k"


def prepare_ml100k_posters(posters: str | Path, name: str = "ml-100k-posters",
                           split: str = "recbole", seed: int = 2024) -> PreparedDataset:
    """RecBole's bundled ml-100k + ``<posters>/ml100k_items_with_posters.tsv`` (item_id ...
    poster_path, relative to ``posters``). Posters are referenced in place by absolute path."""
    posters = Path(posters).resolve()
    table_path = posters / POSTER_TABLE
    if not table_path.is_file():
        raise PrepareError(f"{posters}: no {POSTER_TABLE} (expected columns item_id ... "
                           "poster_path, poster_path relative to that folder)")
    ml100k = recbole_ml100k_folder()
    inter_path, item_path = ml100k / "ml-100k.inter", ml100k / "ml-100k.item"
    prepared = PreparedDataset(name=name, inter=pd.DataFrame(), source_kind="ml-100k + posters",
                               sources=[inter_path, item_path, table_path])
    refusals = Refusals()
    problems = _malformed(refusals)
    inter = read_interactions(inter_path, "utf-8", problems)
    inter = drop_duplicate_interactions(inter, prepared, "the first row in file order")
    prepared.inter = apply_split(inter, split, seed, prepared)
    items, _ = read_items(item_path, "utf-8", problems)
    poster_table, _ = read_items(table_path, "utf-8", problems, image_col="poster_path",
                                 text_cols=[])
    items = items.merge(poster_table, on="item_id", how="left").fillna("")
    attach_items(prepared, items, posters, None, item_path.name)
    refusals.record(prepared)
    return prepared
