"""Source: an MMRec data folder (github.com/enoche/MMRec, ``data/<name>/``).

Input files (tab separated unless noted):

``<x>.inter`` (exactly one, or ``--inter``)
    header ``userID itemID [rating] [timestamp] x_label`` in any order; MMRec's integer ids;
    ``x_label`` 0 = train, 1 = valid, 2 = test. The split is kept exactly as labelled.
``i_id_mapping.csv`` / ``u_id_mapping.csv`` (optional)
    ``asin itemID`` / ``user_id userID``: raw Amazon ids. With them (and ``ids="raw"``, the
    default) the dataset's tokens are the raw ids (ASINs, reviewer ids), the same tokens the
    Amazon-dump source produces; otherwise MMRec's integers.
``image_feat.npy`` / ``text_feat.npy`` (optional)
    row ``i`` = MMRec ``itemID`` ``i``; imported as features ``visual`` / ``text`` (as float32; a
    row that is not finite there is left out and counted: that item has no vector).
``*url*.csv`` (optional, comma separated)
    ``itemID,asin,imUrl``: the image URL of each item, written to the ``image`` column.
``meta`` (optional argument)
    an Amazon 2014 ``meta_<Cat>.json.gz``: adds title, brand, categories, description, price
    (see ``amazon.py``), and image URLs for items the url file lacks. Needs raw ids (asins).

Policies: a repeated (user, item) pair keeps its first line (counted); lines with the wrong field
count, a non-integer id or an ``x_label`` outside 0/1/2 are skipped and reported as ``file:line``;
every value goes through ``values.py`` (a NaN rating, a negative timestamp, a raw id with a control
character... are refused, counted on the card under the shared keys).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recbole_vlm4rec.data.prepare.prepared import ImportedFeature, PrepareError, PreparedDataset
from recbole_vlm4rec.data.prepare.readers import find_column, read_table
from recbole_vlm4rec.data.prepare.values import (
    NON_FINITE,
    Problems,
    Refusals,
    check_id,
    check_mmrec_id,
    check_number,
    check_reference,
    check_timestamp,
    nothing_usable,
)
from recbole_vlm4rec.formats.features import load_array

FEATURE_FILES = {"visual": "image_feat.npy", "text": "text_feat.npy"}
SPLIT_DESCRIPTION = (
    "Predefined: MMRec's x_label column kept exactly (0 -> train, 1 -> valid, 2 -> test), "
    "written as <name>.train/.valid/.test.inter for RecBole's benchmark_filename."
)


def find_inter_file(folder: Path) -> Path:
    candidates = sorted(folder.glob("*.inter"))
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise PrepareError(
            f"{folder}: expected exactly one MMRec *.inter file, found {found}; pass --inter FILE"
        )
    return candidates[0]


def _read_id_mapping(path: Path, raw_names: tuple[str, ...], id_names: tuple[str, ...],
                     encoding: str, problems: Problems) -> dict[int, str]:
    header, rows = read_table(path, encoding, problems, separator="\t")
    raw_col = find_column(header, raw_names, path)
    id_col = find_column(header, id_names, path)
    mapping: dict[int, str] = {}
    for line_no, fields in rows:
        try:
            mapping[check_mmrec_id(fields[id_col], header[id_col])] = check_id(
                fields[raw_col], header[raw_col])
        except ValueError as error:
            problems.refuse(f"{path}:{line_no}", error)
    return mapping


def _read_urls(folder: Path, problems: Problems) -> tuple[dict[int, str], Path | None]:
    candidates = sorted(folder.glob("*url*.csv"))
    if not candidates:
        return {}, None
    path = candidates[0]
    header, rows = read_table(path, "utf-8", problems, separator=",")
    id_col = find_column(header, ("itemID",), path)
    url_col = find_column(header, ("imUrl", "image", "url"), path)
    urls = {}
    for line_no, fields in rows:
        try:
            urls[check_mmrec_id(fields[id_col], header[id_col])] = check_reference(
                fields[url_col], header[url_col])
        except ValueError as error:
            problems.refuse(f"{path}:{line_no}", error)
    return urls, path


def prepare_mmrec_folder(
    folder: str | Path,
    name: str,
    inter_file: str | Path | None = None,
    ids: str = "raw",
    encoding: str = "utf-8",
    meta: str | Path | None = None,
) -> PreparedDataset:
    """Read an MMRec folder into a PreparedDataset (see the module docstring)."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise PrepareError(f"MMRec folder not found: {folder}")
    if ids not in ("raw", "mmrec"):
        raise ValueError(f"ids must be 'raw' or 'mmrec', got {ids!r}")
    inter_path = Path(inter_file).resolve() if inter_file else find_inter_file(folder)
    refusals = Refusals()
    malformed = refusals.counter("malformed_lines", "lines skipped: undecodable, wrong field "
                                 "count, empty or non-integer id, non-numeric rating/timestamp, "
                                 "or x_label not in 0/1/2")
    prepared = PreparedDataset(name=name, inter=pd.DataFrame(), source_kind="MMRec folder",
                               split_description=SPLIT_DESCRIPTION, sources=[inter_path])

    header, rows = read_table(inter_path, encoding, malformed, separator="\t")
    user_col = find_column(header, ("userID", "user_id"), inter_path)
    item_col = find_column(header, ("itemID", "item_id"), inter_path)
    label_col = find_column(header, ("x_label",), inter_path)
    rating_col = find_column(header, ("rating",), inter_path, required=False)
    time_col = find_column(header, ("timestamp",), inter_path, required=False)
    records, seen, duplicates = [], set(), 0
    for line_no, fields in rows:
        try:
            user = check_mmrec_id(fields[user_col], header[user_col])
            item = check_mmrec_id(fields[item_col], header[item_col])
            label = check_mmrec_id(fields[label_col], "x_label")
            rating = check_number(fields[rating_col], "rating") if rating_col is not None else None
            stamp = (check_timestamp(fields[time_col], "timestamp") if time_col is not None
                     else None)
            if label not in (0, 1, 2):
                raise ValueError(f"x_label {label} not in 0/1/2")
        except ValueError as error:
            malformed.refuse(f"{inter_path}:{line_no}", error)
            continue
        if (user, item) in seen:
            duplicates += 1
            continue
        seen.add((user, item))
        records.append((user, item, rating, stamp, label))
    if not records:
        raise nothing_usable(inter_path, "interaction lines", malformed)
    if duplicates:
        prepared.count("duplicate_interactions", duplicates,
                       "repeated (user, item) lines; the first line (and its x_label) is kept")

    inter = pd.DataFrame(records, columns=["user_id", "item_id", "rating", "timestamp", "split"])
    inter = inter.drop(columns=[c for c, col in (("rating", rating_col), ("timestamp", time_col))
                                if col is None])
    item_ids = sorted(set(inter["item_id"]))
    item_tokens = {i: str(i) for i in item_ids}
    user_tokens = {u: str(u) for u in set(inter["user_id"])}
    raw_items: dict[int, str] = {}
    item_map_path, user_map_path = folder / "i_id_mapping.csv", folder / "u_id_mapping.csv"
    if item_map_path.is_file():
        raw_items = _read_id_mapping(item_map_path, ("asin", "item_id"), ("itemID",), encoding,
                                     malformed)
        prepared.sources.append(item_map_path)
    if ids == "raw" and raw_items:
        missing = [i for i in item_ids if i not in raw_items]
        if missing:
            raise PrepareError(f"{item_map_path}: {len(missing)} itemIDs of {inter_path.name} "
                               f"have no asin, e.g. {missing[:5]}; use --ids mmrec"
                               + _refused_lines(refusals, item_map_path))
        item_tokens = {i: raw_items[i] for i in item_ids}
    if ids == "raw" and user_map_path.is_file():
        raw_users = _read_id_mapping(user_map_path, ("user_id",), ("userID",), encoding, malformed)
        prepared.sources.append(user_map_path)
        missing = [u for u in user_tokens if u not in raw_users]
        if missing:
            raise PrepareError(f"{user_map_path}: {len(missing)} userIDs of {inter_path.name} "
                               f"have no raw id, e.g. {sorted(missing)[:5]}; use --ids mmrec"
                               + _refused_lines(refusals, user_map_path))
        user_tokens = {u: raw_users[u] for u in user_tokens}
    _check_unique(item_tokens, item_map_path)
    _check_unique(user_tokens, user_map_path)

    urls, url_path = _read_urls(folder, malformed)
    if url_path is not None:
        prepared.sources.append(url_path)
    items = pd.DataFrame({"item_id": [item_tokens[i] for i in item_ids]})
    item_types = {"item_id": "token"}
    if ids == "mmrec" and raw_items:
        items["asin"] = [raw_items.get(i, "") for i in item_ids]
        item_types["asin"] = "token"
    items["image"] = [urls.get(i, "") for i in item_ids]
    item_types["image"] = "token"
    if meta is not None:
        items = _merge_meta(Path(meta).resolve(), items, encoding, refusals, prepared)
        item_types = {c: item_types.get(c, "float" if c == "price" else "token_seq")
                      for c in items.columns}
    without_image = int((items["image"] == "").sum())
    if (url_path is not None or meta is not None) and without_image:
        prepared.count("items_without_image", without_image,
                       "items with no image URL in the url/meta files: kept, empty image column")

    for feature_name, file_name in FEATURE_FILES.items():
        path = folder / file_name
        if path.is_file():
            prepared.features[feature_name] = _import_feature(
                path, feature_name, item_ids, item_tokens, prepared, refusals)
            prepared.sources.append(path)

    inter["user_id"] = inter["user_id"].map(user_tokens)
    inter["item_id"] = inter["item_id"].map(item_tokens)
    prepared.inter = inter
    prepared.items = items
    prepared.item_types = item_types
    refusals.record(prepared)
    return prepared


def _refused_lines(refusals: Refusals, path: Path) -> str:
    examples = refusals.examples(f"{path}:")
    return f" (lines of it refused: {'; '.join(examples[:3])})" if examples else ""


def _check_unique(tokens: dict[int, str], path: Path) -> None:
    if len(set(tokens.values())) != len(tokens):
        raise PrepareError(f"{path}: two MMRec ids map to the same raw id; use --ids mmrec")


def _import_feature(path: Path, name: str, item_ids: list[int], item_tokens: dict[int, str],
                    prepared: PreparedDataset, refusals: Refusals) -> ImportedFeature:
    """Rows of the dataset's items, as float32; a row with a value that is not finite there
    (NaN, inf, beyond float32) is left out and counted: that item has no vector of the feature."""
    try:
        matrix = load_array(path)
    except (ValueError, OSError, EOFError) as error:
        raise PrepareError(f"{path}: cannot read as a numpy array: {error}") from error
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        raise PrepareError(f"{path}: expected a 2-D float array (items x dim), got "
                           f"{matrix.dtype} {matrix.shape}")
    if matrix.shape[0] <= max(item_ids):
        raise PrepareError(f"{path}: {matrix.shape[0]} rows, but itemID {max(item_ids)} occurs "
                           "in the interactions (row i must be MMRec itemID i)")
    extra = matrix.shape[0] - len(item_ids)
    if extra:
        prepared.count(f"{name}_rows_without_interactions", extra,
                       f"rows of {path.name} whose itemID has no interaction: not imported")
    with np.errstate(over="ignore"):
        rows = matrix[item_ids].astype(np.float32)
    finite = np.isfinite(rows).all(axis=1)
    if not finite.any():
        raise PrepareError(f"{path}: no row of the dataset's items is finite (NaN, inf or beyond "
                           "float32 in every one)")
    non_finite = refusals.counter(NON_FINITE)
    for index in np.flatnonzero(~finite):
        non_finite.add(f"{path}:row {item_ids[index]}", f"{name} vector of item "
                       f"{item_tokens[item_ids[index]]} is not finite in float32 (left out)")
    return ImportedFeature(
        matrix=rows[finite],
        tokens=[item_tokens[i] for i, ok in zip(item_ids, finite) if ok],
        meta={"format_version": 2, "origin": "imported", "kind": "imported", "source": str(path),
              "format": "MMRec (row i = itemID i)", "rows_in_source": int(matrix.shape[0])},
    )


def _merge_meta(path: Path, items: pd.DataFrame, encoding: str, refusals: Refusals,
                prepared: PreparedDataset) -> pd.DataFrame:
    """Join Amazon metadata by asin; the url file's image wins over ``imUrl``."""
    from recbole_vlm4rec.data.prepare.amazon import (duplicate_meta_problems, meta_problems,
                                                     read_meta)

    if not path.is_file():
        raise PrepareError(f"metadata file not found: {path}")
    asins = items["asin"] if "asin" in items.columns else items["item_id"]
    table = read_meta(path, set(asins), encoding, meta_problems(path, refusals),
                      duplicate_meta_problems(path, refusals))
    prepared.sources.append(path)
    missing = len(set(asins) - set(table["item_id"]))
    if missing:
        prepared.count("items_without_metadata", missing,
                       f"items absent from {path.name}: kept with empty text")
    table = table.rename(columns={"item_id": "_asin", "image": "_meta_image"})
    merged = items.assign(_asin=list(asins)).merge(table, on="_asin", how="left")
    merged = merged.fillna({c: "" for c in merged.columns if c != "price"})
    merged["image"] = [own or meta_url for own, meta_url in
                       zip(merged["image"], merged["_meta_image"])]
    columns = [c for c in merged.columns if c not in ("_asin", "_meta_image", "image")]
    return merged[[*columns, "image"]]
