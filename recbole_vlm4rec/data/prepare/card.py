"""The dataset card: ``card.json`` (machine-readable) and ``CARD.md`` (the same facts, readable).

``card.json`` keys: ``name``, ``format_version``, ``source_kind``, ``command`` (the exact command
that rebuilds the folder), ``counts`` (users, items, interactions, sparsity), ``split`` (kind,
description, train/valid/test sizes for a predefined split), ``items`` (rows of the ``.item`` file,
with / without an image reference), ``features`` (per feature: rows, dim, dataset items covered),
``sources`` (path, bytes, sha256 of every input file), ``counters`` (what was dropped, fixed or
missing, each with its reason) and ``files`` (sha256 of every file prepare wrote). It holds no
times, so re-preparing identical inputs gives an identical card; a benchmark can record its
checksum as the dataset's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from recbole_vlm4rec.data.prepare.prepared import SPLIT_NAMES, PreparedDataset

FORMAT_VERSION = 1


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_card(prepared: PreparedDataset, folder: Path) -> dict[str, Any]:
    inter = prepared.inter
    n_users = int(inter["user_id"].nunique())
    n_items = int(inter["item_id"].nunique())
    n_inter = len(inter)
    density = n_inter / max(n_users * n_items, 1)
    description = prepared.split_description.replace("<name>", prepared.name)
    split: dict[str, Any] = {"description": description}
    if prepared.predefined_split:
        sizes = inter["split"].value_counts()
        split["kind"] = "predefined"
        split.update({part: int(sizes.get(label, 0)) for label, part in enumerate(SPLIT_NAMES)})
    else:
        split["kind"] = "recbole"
    items_section: dict[str, Any] = {"rows": 0, "with_image": 0, "without_image": 0}
    if prepared.items is not None:
        has_image = prepared.items["image"].astype(str).str.len() > 0 \
            if "image" in prepared.items.columns else np.zeros(len(prepared.items), dtype=bool)
        items_section = {
            "rows": len(prepared.items),
            "with_image": int(has_image.sum()),
            "without_image": int((~has_image).sum()),
            "columns": list(prepared.items.columns),
        }
    dataset_items = set(inter["item_id"])
    features = {}
    for name, feature in sorted(prepared.features.items()):
        nonzero = np.abs(feature.matrix).sum(axis=1) > 0
        covered = sum(1 for t, ok in zip(feature.tokens, nonzero) if ok and t in dataset_items)
        features[name] = {
            "rows": int(feature.matrix.shape[0]),
            "dim": int(feature.matrix.shape[1]),
            "items_covered": covered,
            "coverage": round(covered / max(n_items, 1), 6),
        }
    files = {
        str(path.relative_to(folder)): sha256_of(path)
        for path in sorted(folder.rglob("*")) if path.is_file()
    }
    return {
        "name": prepared.name,
        "format_version": FORMAT_VERSION,
        "source_kind": prepared.source_kind,
        "command": prepared.command,
        "counts": {
            "users": n_users,
            "items": n_items,
            "interactions": n_inter,
            "density": round(density, 8),
            "sparsity": round(1.0 - density, 8),
        },
        "split": split,
        "items": items_section,
        "features": features,
        "sources": [
            {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_of(path)}
            for path in prepared.sources
        ],
        "counters": {
            key: {"count": prepared.counters[key], "reason": prepared.reasons.get(key, "")}
            for key in sorted(prepared.counters)
        },
        "files": files,
    }


def render_card_markdown(card: dict[str, Any]) -> str:
    counts, split, items = card["counts"], card["split"], card["items"]
    lines = [
        f"# Dataset card: {card['name']}",
        "",
        f"Source: {card['source_kind']}. Built by:",
        "",
        "```bash",
        card["command"],
        "```",
        "",
        "## Counts",
        "",
        "| users | items | interactions | sparsity |",
        "|---:|---:|---:|---:|",
        f"| {counts['users']:,} | {counts['items']:,} | {counts['interactions']:,} "
        f"| {100 * counts['sparsity']:.4f}% |",
        "",
        "## Split",
        "",
    ]
    if split["kind"] == "predefined":
        lines += [
            "| train | valid | test |",
            "|---:|---:|---:|",
            f"| {split['train']:,} | {split['valid']:,} | {split['test']:,} |",
            "",
        ]
    lines += [split["description"] or "RecBole splits at load time (configs).", ""]
    lines += [
        "## Items and images",
        "",
        f"{items['rows']:,} rows in the `.item` file; {items['with_image']:,} with an image "
        f"reference, {items['without_image']:,} without (kept, with an empty `image`).",
        "",
        "## Features",
        "",
    ]
    if card["features"]:
        lines += ["| feature | rows | dim | items covered |", "|---|---:|---:|---:|"]
        for name, info in card["features"].items():
            lines.append(f"| {name} | {info['rows']:,} | {info['dim']} | {info['items_covered']:,} "
                         f"({100 * info['coverage']:.1f}%) |")
    else:
        lines.append("None imported by prepare.")
    lines += ["", "## What was dropped, fixed or missing", ""]
    if card["counters"]:
        lines += ["| what | count | why |", "|---|---:|---|"]
        for key, info in card["counters"].items():
            lines.append(f"| {key} | {info['count']:,} | {info['reason']} |")
    else:
        lines.append("Nothing.")
    lines += ["", "## Sources", "", "| file | bytes | sha256 |", "|---|---:|---|"]
    for source in card["sources"]:
        lines.append(f"| `{source['path']}` | {source['bytes']:,} | `{source['sha256']}` |")
    lines += ["", "`card.json` holds the same facts plus the sha256 of every file written.", ""]
    return "\n".join(lines)


def write_card(prepared: PreparedDataset, folder: Path) -> dict[str, Any]:
    card = build_card(prepared, folder)
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (folder / "CARD.md").write_text(render_card_markdown(card), encoding="utf-8")
    return card


def read_card(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(folder) / "card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
