"""Source: Amazon 2014 review dumps (jmcauley.ucsd.edu/data/amazon), e.g. Baby.

``reviews_<Cat>_5.json.gz``
    one JSON object per line: ``reviewerID``, ``asin``, ``overall`` (rating),
    ``unixReviewTime`` (timestamp); other keys are ignored.
``meta_<Cat>.json.gz``
    one **Python literal** dict per line (single quotes, not JSON): ``asin``, ``title``,
    ``brand``, ``categories`` (list of lists), ``description``, ``price``, ``imUrl``. Parsed with
    ``json.loads`` when the line is JSON, else ``ast.literal_eval`` (literals only, never ``eval``).

Both may be gzipped or plain. Item text columns: title, brand, categories (unique, in order,
joined by ``" | "``), description, price; ``image`` = ``imUrl``, or ``images/<file>`` after
``--download-images``. Policies, each counted on the dataset card with ``file:line`` examples:
a user reviewing an item twice keeps the earliest review; broken lines (undecodable, not JSON nor
a literal, nested too deeply, missing a key) are skipped, counted per file
(``malformed_review_lines``, ``malformed_meta_lines``); every value goes through ``values.py``: a
review with a refused id, rating or timestamp (an object/list/boolean id, ``NaN``, ``Infinity``,
a 400-digit integer, a timestamp before 1970...) is skipped, a refused metadata value (a title
that is an object, a price that is not a number...) is left empty, both counted under the shared
keys (``wrong_json_types``, ``non_finite_values``...); a second metadata line for an item is
ignored (``duplicate_meta_lines``: the first wins); items without a metadata line or without
``imUrl`` are kept and counted.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
from tqdm import tqdm

from recbole_vlm4rec.data.prepare.catalogue import attach_items
from recbole_vlm4rec.data.prepare.prepared import PrepareError, PreparedDataset
from recbole_vlm4rec.data.prepare.readers import iter_lines
from recbole_vlm4rec.data.prepare.splits import apply_split, drop_duplicate_interactions, k_core
from recbole_vlm4rec.data.prepare.values import (
    OUT_OF_RANGE,
    WRONG_TYPE,
    BadValue,
    Problems,
    Refusals,
    check_id,
    check_number,
    check_reference,
    check_timestamp,
    json_text,
    json_type,
    nothing_usable,
    show,
)

META_TEXT_COLUMNS = ("title", "brand", "categories", "description")
# (column, metadata key, reader): every value of a metadata line goes through values.py
_META_FIELDS = (
    *((column, column, json_text) for column in ("title", "brand")),
    ("categories", "categories", lambda value, _: _categories(value or [])),
    ("description", "description", json_text),
    ("price", "price", lambda value, _: _price(value)),
    ("image", "imUrl", check_reference),
)


def parse_record(text: str) -> dict[str, Any]:
    """A JSON object, or a Python literal dict (the 2014 metadata format). Never ``eval``."""
    try:
        record = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError:
        try:
            record = ast.literal_eval(text)
        except RecursionError:
            raise ValueError("nested too deeply") from None
        except (ValueError, SyntaxError, MemoryError) as error:
            raise ValueError(f"neither JSON nor a Python literal ({type(error).__name__})") \
                from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a dict, got {type(record).__name__}")
    return record


def iter_records(path: Path, encoding: str, problems: Problems) -> Iterator[tuple[int, dict]]:
    for line_no, text in iter_lines(path, encoding, problems):
        try:
            yield line_no, parse_record(text)
        except ValueError as error:
            problems.add(f"{path}:{line_no}", str(error))


def _field(record: dict[str, Any], key: str) -> Any:
    """``record[key]``; a missing key is a ValueError naming it."""
    if key not in record:
        raise ValueError(f"no {key}")
    return record[key]


def read_reviews(path: Path, encoding: str, problems: Problems) -> pd.DataFrame:
    """``user_id, item_id, rating, timestamp`` per review line, in file order."""
    records = []
    for line_no, record in tqdm(iter_records(path, encoding, problems), desc=f"reading {path.name}",
                                unit=" lines", mininterval=2.0, leave=False, disable=None):
        try:
            user = check_id(_field(record, "reviewerID"), "reviewerID")
            item = check_id(_field(record, "asin"), "asin")
            rating = check_number(_field(record, "overall"), "overall")
            stamp = check_timestamp(_field(record, "unixReviewTime"), "unixReviewTime")
        except ValueError as error:
            problems.refuse(f"{path}:{line_no}", error)
            continue
        records.append((user, item, rating, stamp))
    if not records:
        raise nothing_usable(path, "review lines", problems)
    return pd.DataFrame(records, columns=["user_id", "item_id", "rating", "timestamp"])


def _categories(value: Any) -> str:
    """``[["Baby", "Nursery"], ...]`` (or a flat list, or one string) -> unique names joined by
    `` | ``; any other shape is refused."""
    flat: list[str] = []
    for entry in value if isinstance(value, list) else [value]:
        for name in entry if isinstance(entry, list) else [entry]:
            if not isinstance(name, str):
                raise BadValue(WRONG_TYPE, f"categories hold {json_type(name)} ({show(name)}), "
                               "expected lists of strings")
            name = json_text(name, "categories")
            if name and name not in flat:
                flat.append(name)
    return " | ".join(flat)


def _price(value: Any) -> float | None:
    """A non-negative number; ``"$1,299.00"`` strings of the later dumps are read too."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = value.strip().lstrip("$").replace(",", "")
    price = check_number(value, "price")
    if price < 0:
        raise BadValue(OUT_OF_RANGE, f"price {price:g} is negative")
    return price


def duplicate_meta_problems(path: Path, refusals: Refusals) -> Problems:
    return refusals.counter("duplicate_meta_lines", f"{path.name} lines ignored: a second line for "
                            "an item of the dataset (the first line wins)")


def meta_problems(path: Path, refusals: Refusals) -> Problems:
    return refusals.counter("malformed_meta_lines", f"{path.name} lines skipped: undecodable, not "
                            "JSON nor a Python literal dict, nested too deeply, or no asin; values "
                            "that are not usable (e.g. a price that is not a number) left empty")


def read_meta(path: Path, wanted: set[str], encoding: str, problems: Problems,
              duplicates: Problems) -> pd.DataFrame:
    """Item text and image URL for the ``wanted`` asins (first line of each asin wins)."""
    rows: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    for line_no, record in tqdm(iter_records(path, encoding, problems), desc=f"reading {path.name}",
                                unit=" lines", mininterval=2.0, leave=False, disable=None):
        where = f"{path}:{line_no}"
        try:
            asin = check_id(_field(record, "asin"), "asin")
        except ValueError as error:
            problems.refuse(where, error)
            continue
        if asin not in wanted:
            continue
        if asin in rows:
            duplicates.add(where, f"asin {asin} already on line {first_line[asin]}")
            continue
        first_line[asin] = line_no
        rows[asin] = {"item_id": asin}
        for column, key, read in _META_FIELDS:
            try:
                rows[asin][column] = read(record.get(key), key)
            except ValueError as error:  # one bad value: that value only is left empty
                problems.refuse(where, error, note=" (left empty)")
                rows[asin][column] = None if column == "price" else ""
    columns = ["item_id", *META_TEXT_COLUMNS, "price", "image"]
    return pd.DataFrame([rows[a] for a in sorted(rows)], columns=columns)


def prepare_amazon(
    reviews: str | Path, meta: str | Path | None, name: str, k: int = 0, split: str = "mmrec",
    seed: int = 2024, encoding: str = "utf-8",
) -> PreparedDataset:
    """Reviews (+ metadata) dumps -> PreparedDataset (see the module docstring)."""
    reviews_path = Path(reviews).resolve()
    meta_path = Path(meta).resolve() if meta else None
    for path in (reviews_path, meta_path):
        if path is not None and not path.is_file():
            raise PrepareError(f"file not found: {path}")
    prepared = PreparedDataset(name=name, inter=pd.DataFrame(), source_kind="Amazon 2014 dumps",
                               sources=[p for p in (reviews_path, meta_path) if p])
    refusals = Refusals()
    problems = refusals.counter(
        "malformed_review_lines", f"{reviews_path.name} lines skipped: undecodable, not JSON nor "
        "a Python literal dict, nested too deeply, or missing or empty reviewerID/asin/overall/"
        "unixReviewTime, or a rating/time that is not a number")
    inter = read_reviews(reviews_path, encoding, problems)
    # Earliest review of a (user, item) pair wins; ties keep file order.
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable")
    inter = drop_duplicate_interactions(inter, prepared, "the earliest review")
    inter = k_core(inter, k, prepared)
    prepared.inter = apply_split(inter, split, seed, prepared)
    items = None
    if meta_path is not None:
        items = read_meta(meta_path, set(inter["item_id"]), encoding,
                          meta_problems(meta_path, refusals),
                          duplicate_meta_problems(meta_path, refusals))
    attach_items(prepared, items, None, None, meta_path.name if meta_path else "metadata")
    if items is not None:
        prepared.item_types["price"] = "float"
    refusals.record(prepared)
    return prepared
