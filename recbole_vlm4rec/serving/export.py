"""``vlm4rec export``: a dataset's item feature + its interactions -> a serving bundle (bundle.py).

The bundle serves VLM4Rec (profile matching on a feature, nothing trained): the item embeddings
are the dataset's feature rows, aligned by token exactly as training sees them; users' histories
are all their interactions in the dataset (serving knows everything the logs know).

Descriptions shown in explanations come from ``--descriptions`` (a TSV with a header naming an
item column and a description column, or JSON lines with ``item_id``/``item`` and
``description``/``text``; rows of ``vlm4rec ground`` output whose ``status`` is not ``ok`` are
left out), else, for a feature built from item text, the rendered item texts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from recbole_vlm4rec.serving.bundle import write_bundle

ITEM_KEYS = ("item_id", "item", "token", "asin")
TEXT_KEYS = ("description", "text", "desc")


def read_descriptions(path: str | Path) -> dict[str, str]:
    """``item token -> description`` from a TSV (with header) or a JSON-lines file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"descriptions file not found: {path}")
    found: dict[str, str] = {}
    if path.suffix in (".jsonl", ".json"):
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{path}:{line_no}: not JSON: {error}") from error
            item = next((row[k] for k in ITEM_KEYS if k in row), None)
            has_text_key = any(k in row for k in TEXT_KEYS)
            if item is None or not has_text_key:
                raise ValueError(f"{path}:{line_no}: needs one of {ITEM_KEYS} and of {TEXT_KEYS}")
            if row.get("status", "ok") != "ok":
                continue  # `vlm4rec ground` failed for this item: nothing to explain with
            text = next(row[k] for k in TEXT_KEYS if k in row)
            if text:
                found[str(item)] = str(text)
        return found
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        columns = {c.split(":")[0]: c for c in reader.fieldnames or []}
        item_col = next((columns[k] for k in ITEM_KEYS if k in columns), None)
        text_col = next((columns[k] for k in TEXT_KEYS if k in columns), None)
        if item_col is None or text_col is None:
            raise ValueError(f"{path}: header needs an item column {ITEM_KEYS} and a description "
                             f"column {TEXT_KEYS}; got {reader.fieldnames}")
        for row in reader:
            found[str(row[item_col])] = str(row[text_col] or "")
    return found


def _item_text_descriptions(meta: dict[str, Any], item_field: str) -> dict[str, str]:
    from recbole_vlm4rec.encoding.item_text import read_atomic_item_file, render_item_texts

    if meta.get("kind") != "item_text" or not meta.get("source") or not meta.get("template"):
        return {}
    items = read_atomic_item_file(meta["source"])
    tokens, texts, _ = render_item_texts(items, meta["template"], item_field, meta["source"])
    return dict(zip(tokens, texts))


def export_dataset_bundle(
    dataset: str,
    out: str | Path,
    item_feature: str | None = None,
    profile_aggregation: str = "mean",
    descriptions_file: str | Path | None = None,
    index_kind: str = "flat",
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle of VLM4Rec on ``dataset``'s feature ``item_feature`` (default feature)."""
    from recbole_vlm4rec.models.features import resolve_feature_name
    from recbole_vlm4rec.runner import build_config, create_dataset

    config = build_config("VLM4Rec", dataset, overrides={"state": "WARNING", **(overrides or {})})
    name = resolve_feature_name(config, item_feature or config["item_feature"])
    data = create_dataset(config)
    feature = data.item_feature(name)
    item_ids = np.flatnonzero(feature.has_vector)
    id_tokens = data.field2id_token[data.iid_field]
    row_of_item = np.full(len(id_tokens), -1, dtype=np.int64)
    row_of_item[item_ids] = np.arange(len(item_ids))

    users = np.asarray(data.inter_feat[data.uid_field])
    items = row_of_item[np.asarray(data.inter_feat[data.iid_field])]
    keep = items >= 0  # interactions with items that have no vector cannot enter a profile
    order = np.argsort(users[keep], kind="stable")
    users_kept, items_kept = users[keep][order], items[keep][order]
    user_tokens = data.field2id_token[data.uid_field]
    bounds = np.searchsorted(users_kept, np.arange(len(user_tokens) + 1))
    histories = [np.unique(items_kept[bounds[u]:bounds[u + 1]]) for u in range(len(user_tokens))]
    if descriptions_file:
        descriptions = read_descriptions(descriptions_file)
    else:
        descriptions = _item_text_descriptions(feature.meta, data.iid_field)
    item_tokens = [str(id_tokens[i]) for i in item_ids]
    descriptions = {t: descriptions[t] for t in item_tokens if t in descriptions}
    meta = {
        "model": "VLM4Rec", "dataset": dataset, "item_feature": name,
        "profile_aggregation": profile_aggregation,
        "encoder": {"name": feature.meta.get("encoder"),
                    "fingerprint": feature.meta.get("encoder_fingerprint")},
        "feature": {"path": str(feature.path), "meta": feature.meta,
                    "items_without_vector": feature.n_items - feature.n_covered,
                    # so recommend can tell "no vector" from "not in the catalogue"
                    "items_without_vector_tokens": sorted(
                        str(id_tokens[i]) for i in np.flatnonzero(~feature.has_vector)[1:])},
        "interactions": int(keep.sum()), "interactions_without_vector": int((~keep).sum()),
    }
    # row 0 of RecBole's token lists is [PAD]: no user, no item.
    return write_bundle(out, item_tokens, feature.matrix[item_ids],
                        [str(t) for t in user_tokens[1:]], histories[1:], meta, descriptions,
                        index_kind)
