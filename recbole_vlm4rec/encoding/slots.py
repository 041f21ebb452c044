"""``vlm4rec encode --modality slots``: structured description slots -> item attribute tokens.

A structured prompt (``configs/prompts/structured.yaml``) makes ``vlm4rec ground`` store validated
slots per item in the descriptions file's ``fields`` (``{"genre": ["noir", "thriller"],
"mood": "dark, tense", ...}``). Each slot value becomes tokens ``<slot>=<phrase>``: list values one
token per element, text values split on ``,`` ``;`` ``/`` and `` and ``; phrases lower-cased,
whitespace collapsed, outer punctuation stripped; "unknown"-like values (the prompts' list) dropped.

Output: a feature whose row is the item's multi-hot vector over the vocabulary (float32, 0/1;
*not* normalised: the attribute-kNN model weights tokens itself). The vocabulary keeps tokens
found in at least ``min_count`` items (a token of one item links it to nothing), the
``max_tokens`` most frequent; the ``.json`` lists it in column order (``vocabulary``). Items whose
row is failed, has no ``fields``, or keeps no token are skipped with that reason.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from recbole_vlm4rec.encoding.encode import (EncodeInputError, EncodeReport, Skipped,
                                             write_encoded_feature)
from recbole_vlm4rec.formats import descriptions
from recbole_vlm4rec.grounding.prompts import UNKNOWN_VALUES

_SPLIT = re.compile(r"[,;/]|\band\b", re.IGNORECASE)


def slot_tokens(fields: dict[str, Any]) -> list[str]:
    """``<slot>=<phrase>`` tokens of one item's slots, sorted, without repeats."""
    tokens = set()
    for slot, value in fields.items():
        parts = value if isinstance(value, list) else _SPLIT.split(str(value or ""))
        for part in parts:
            phrase = " ".join(str(part).lower().split()).strip(" .!?:\"'()[]")
            if phrase and phrase not in UNKNOWN_VALUES:
                tokens.add(f"{str(slot).strip().lower()}={phrase}")
    return sorted(tokens)


def encode_slot_feature(path: str | Path, out_dir: str | Path, feature: str = "slots",
                        min_count: int = 2, max_tokens: int = 4096,
                        extra_meta: dict[str, Any] | None = None) -> EncodeReport:
    """Write feature ``feature`` from the slots of descriptions file ``path``."""
    started = time.perf_counter()
    if min_count < 1 or max_tokens < 1:
        raise ValueError("--min-count and --max-tokens must be >= 1")
    try:
        parsed = descriptions.read_descriptions(path)
    except descriptions.DescriptionsFileError as error:
        raise EncodeInputError(str(error)) from error
    skipped = [Skipped(f"{parsed.path.name}:{line}", "malformed_line", why)
               for line, why in parsed.malformed]
    tokens_of: dict[str, list[str]] = {}
    for item_id, row in parsed.rows.items():
        if row["status"] != "ok":
            skipped.append(Skipped(item_id, "failed", str(row.get("reason") or row["status"])))
        elif not isinstance(row.get("fields"), dict):
            skipped.append(Skipped(item_id, "no_fields", parsed.where(item_id)))
        else:
            tokens_of[item_id] = slot_tokens(row["fields"])
    if not tokens_of:
        raise EncodeInputError(
            f"{parsed.path}: no ok row has structured `fields` (write them with a json prompt: "
            "vlm4rec ground <dataset> --prompt structured)")
    counts = Counter(token for tokens in tokens_of.values() for token in tokens)
    frequent = sorted((t for t, n in counts.items() if n >= min_count),
                      key=lambda t: (-counts[t], t))[:max_tokens]
    vocabulary = sorted(frequent)
    column = {token: index for index, token in enumerate(vocabulary)}
    items, rows = [], []
    for item_id, tokens in tokens_of.items():
        kept = [column[t] for t in tokens if t in column]
        if not kept:
            skipped.append(Skipped(item_id, "no_slot_tokens",
                                   f"none of {len(tokens)} tokens is in {min_count}+ items"))
            continue
        row = np.zeros(len(vocabulary), dtype=np.float32)
        row[kept] = 1.0
        items.append(item_id)
        rows.append(row)
    matrix = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
    meta = {"descriptions": str(parsed.path), "min_count": min_count, "max_tokens": max_tokens,
            "n_tokens_seen": len(counts), "vocabulary": vocabulary, **(extra_meta or {})}
    return write_encoded_feature(out_dir, feature, items, matrix, skipped, 0, len(items),
                                 started, "slot tokens (multi-hot)", "slots-v1", str(parsed.path),
                                 kind="slots", n_superseded=parsed.superseded, extra_meta=meta)
