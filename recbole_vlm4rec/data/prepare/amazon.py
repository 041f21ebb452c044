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
(``malformed_review_lines``, ``malformed_meta_lines``); reviews whose rating or timestamp is not
a finite number (``NaN``, ``Infinity``) are skipped (``non_finite_review_values``); a second
metadata line for an item is ignored (``duplicate_meta_lines``: the first wins); items without a
metadata line or without ``imUrl`` are kept and counted.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
from tqdm import tqdm

from recbole_vlm4rec.data.prepare.catalogue import attach_items
from recbole_vlm4rec.data.prepare.output import (
    PrepareError,
    PreparedDataset,
    check_token,
    clean_text,
)
from recbole_vlm4rec.data.prepare.readers import Problems, iter_lines
from recbole_vlm4rec.data.prepare.splits import apply_split, drop_duplicate_interactions, k_core

META_TEXT_COLUMNS = ("title", "brand", "categories", "description")


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


def _number(record: dict[str, Any], key: str) -> float:
    """``record[key]`` as a float; KeyError when absent, ValueError naming the key otherwise."""
    value = record[key]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} {value!r} is not a number") from None


def read_reviews(path: Path, encoding: str, problems: Problems, non_finite: Problems) -> pd.DataFrame:
    """``user_id, item_id, rating, timestamp`` per review line, in file order."""
    records = []
    for line_no, record in tqdm(iter_records(path, encoding, problems), desc=f"reading {path.name}",
                                unit=" lines", mininterval=2.0, leave=False, disable=None):
        where = f"{path}:{line_no}"
        try:
            user = check_token(record["reviewerID"], where, "reviewerID")
            item = check_token(record["asin"], where, "asin")
            rating, stamp = _number(record, "overall"), _number(record, "unixReviewTime")
        except KeyError as error:
            problems.add(where, f"no {error.args[0]}")
            continue
        except (PrepareError, ValueError) as error:
            problems.add(where, str(error).replace(f"{where}: ", ""))
            continue
        if not (math.isfinite(rating) and math.isfinite(stamp)):
            non_finite.add(where, f"overall {rating}, unixReviewTime {stamp}")
            continue
        records.append((user, item, rating, stamp))
    if not records:
        raise PrepareError(f"{path}: no valid review lines"
                           + (f" ({'; '.join(problems.examples)})" if problems.examples else ""))
    return pd.DataFrame(records, columns=["user_id", "item_id", "rating", "timestamp"])


def _categories(value: Any) -> str:
    flat: list[str] = []
    stack = [value] if not isinstance(value, list) else list(value)
    for entry in stack:
        for name in entry if isinstance(entry, list) else [entry]:
            name = clean_text(name)
            if name and name not in flat:
                flat.append(name)
    return " | ".join(flat)


def duplicate_meta_problems(path: Path) -> Problems:
    return Problems("duplicate_meta_lines", f"{path.name} lines ignored: a second line for an item "
                    "of the dataset (the first line wins)")


def read_meta(path: Path, wanted: set[str], encoding: str, problems: Problems,
              duplicates: Problems) -> pd.DataFrame:
    """Item text and image URL for the ``wanted`` asins (first line of each asin wins)."""
    rows: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    for line_no, record in tqdm(iter_records(path, encoding, problems), desc=f"reading {path.name}",
                                unit=" lines", mininterval=2.0, leave=False, disable=None):
        asin = record.get("asin")
        asin = "" if asin is None else str(asin).strip()
        if not asin:
            problems.add(f"{path}:{line_no}", "no asin" if "asin" not in record else "empty asin")
            continue
        if asin not in wanted:
            continue
        if asin in rows:
            duplicates.add(f"{path}:{line_no}", f"asin {asin} already on line {first_line[asin]}")
            continue
        first_line[asin] = line_no
        price = record.get("price")
        try:
            price = float(price) if price not in (None, "") else None
        except (TypeError, ValueError):
            price = None
        rows[asin] = {
            "item_id": asin,
            "title": clean_text(record.get("title")),
            "brand": clean_text(record.get("brand")),
            "categories": _categories(record.get("categories", [])),
            "description": clean_text(record.get("description")),
            "price": price,
            "image": str(record.get("imUrl") or "").strip(),
        }
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
    problems = Problems("malformed_review_lines", f"{reviews_path.name} lines skipped: undecodable, "
                        "not JSON nor a Python literal dict, nested too deeply, or missing or bad "
                        "reviewerID/asin/overall/unixReviewTime")
    non_finite = Problems("non_finite_review_values", f"{reviews_path.name} lines skipped: rating "
                          "(overall) or unixReviewTime is NaN or infinite")
    inter = read_reviews(reviews_path, encoding, problems, non_finite)
    # Earliest review of a (user, item) pair wins; ties keep file order.
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable")
    inter = drop_duplicate_interactions(inter, prepared, "the earliest review")
    inter = k_core(inter, k, prepared)
    prepared.inter = apply_split(inter, split, seed, prepared)
    items = None
    if meta_path is not None:
        meta_problems = Problems("malformed_meta_lines", f"{meta_path.name} lines skipped: undecodable, "
                                 "not JSON nor a Python literal dict, nested too deeply, or no asin")
        duplicates = duplicate_meta_problems(meta_path)
        items = read_meta(meta_path, set(inter["item_id"]), encoding, meta_problems, duplicates)
        meta_problems.record(prepared)
        duplicates.record(prepared)
    attach_items(prepared, items, None, None, meta_path.name if meta_path else "metadata")
    if items is not None:
        prepared.item_types["price"] = "float"
    problems.record(prepared)
    non_finite.record(prepared)
    return prepared
