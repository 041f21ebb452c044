#!/usr/bin/env python
"""Export a prepared dataset to MMRec's data layout: MMRec and this project run on identical data.

    python benchmarks/export_mmrec.py dataset/ml-100k-posters OUT/posters \\
        --image-feature visual --text-feature text --missing drop-items --seed 999

Reads ``<dataset>/<name>.inter`` (RecBole atomic file: user_id, item_id[, rating][, timestamp])
and ``<dataset>/features/<feature>.npy/.tokens``; writes into OUT (the folder name is MMRec's
dataset name, ``posters`` above):

``<name>.inter``
    tab separated, header ``userID itemID [rating] [timestamp] x_label``; dense ids from 0 (users
    and items in sorted token order, numerically when every token is an integer); ``x_label``
    0/1/2 = train/valid/test by MMRec's per-user rule (``prepare/splits.py: mmrec_split``, seeded
    with ``--seed``: per user shuffled, fewer than 10 interactions -> 1 valid + 1 test, else n//10
    valid and (n+5)//10 test).
``image_feat.npy`` / ``text_feat.npy``
    float32, row i = itemID i (only the features asked for); ``--image-scale`` multiplies the
    image feature by a constant (unit-norm features at a larger magnitude: a regime where a
    model with an unsquared-norm penalty, VBPR at reg_weight 2.0, trains instead of collapsing).
``i_id_mapping.csv`` / ``u_id_mapping.csv``
    tab separated ``asin itemID`` / ``user_id userID``: the original tokens, so
    ``vlm4rec prepare mmrec OUT --name X`` restores them (and the features import by token).
``export.json``
    provenance: source files and their sha256, seed, counts, items dropped.

Items without a vector for an exported feature (absent from its ``.tokens`` or an all-zero row):
``--missing error`` (default) stops naming the feature and a few items; ``--missing drop-items``
removes those items and their interactions before splitting (counted in ``export.json`` and
printed). MMRec has no notion of a missing vector: a zero row makes its cosine kNN graphs NaN.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MMREC_FEATURE_FILES = {"image": "image_feat.npy", "text": "text_feat.npy"}


class ExportError(ValueError):
    """Input that cannot be exported; names the file at fault."""


def read_interactions(dataset_dir: Path) -> pd.DataFrame:
    """``<name>.inter`` as a frame with columns user_id, item_id[, rating][, timestamp]."""
    path = dataset_dir / f"{dataset_dir.name}.inter"
    if not path.is_file():
        raise ExportError(f"{path}: not found (the exporter re-splits one <name>.inter file)")
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [column.split(":")[0] for column in frame.columns]
    for required in ("user_id", "item_id"):
        if required not in frame.columns:
            raise ExportError(f"{path}:1: header has no {required} column: {list(frame.columns)}")
    keep = [c for c in ("user_id", "item_id", "rating", "timestamp") if c in frame.columns]
    frame = frame[keep]
    for column in ("rating", "timestamp"):
        if column in frame.columns:
            values = pd.to_numeric(frame[column], errors="coerce")
            if values.isna().any():
                line = int(np.flatnonzero(values.isna().to_numpy())[0]) + 2
                raise ExportError(f"{path}:{line}: {column} is not a number")
            frame[column] = values
    duplicated = frame.duplicated(["user_id", "item_id"])
    if duplicated.any():
        line = int(np.flatnonzero(duplicated.to_numpy())[0]) + 2
        raise ExportError(f"{path}:{line}: repeated (user, item) pair; MMRec expects one line each")
    return frame


def covered_items(dataset_dir: Path, feature: str) -> dict[str, np.ndarray]:
    """Item token -> vector for the items the feature covers (all-zero rows do not count)."""
    from recbole_vlm4rec.formats.features import load_feature

    loaded = load_feature(dataset_dir / "features", feature)
    nonzero = np.abs(loaded.matrix).sum(axis=1) > 0
    return {token: row for token, row, keep in zip(loaded.tokens, loaded.matrix, nonzero) if keep}


def dense_ids(tokens: pd.Series) -> dict[str, int]:
    unique = sorted(set(tokens))
    if all(token.lstrip("-").isdigit() for token in unique):
        unique = sorted(unique, key=int)
    return {token: index for index, token in enumerate(unique)}


def export(dataset_dir: Path, out_dir: Path, features: dict[str, str], seed: int,
           missing: str = "error", image_scale: float = 1.0) -> dict:
    """Write MMRec's layout for ``dataset_dir`` into ``out_dir``; returns the provenance record.

    ``features`` maps MMRec's modality ("image", "text") to a feature name of the dataset.
    """
    from recbole_vlm4rec.data.prepare.card import sha256_of
    from recbole_vlm4rec.data.prepare.splits import mmrec_split

    if not np.isfinite(image_scale) or image_scale <= 0:
        raise ValueError(f"image_scale must be a positive number, got {image_scale!r}")
    if missing not in ("error", "drop-items"):
        raise ValueError(f"missing must be 'error' or 'drop-items', got {missing!r}")
    inter = read_interactions(dataset_dir)
    vectors = {modality: covered_items(dataset_dir, name) for modality, name in features.items()}
    items = set(inter["item_id"])
    lacking = {modality: sorted(items - set(found)) for modality, found in vectors.items()}
    dropped = sorted(set().union(*lacking.values())) if lacking else []
    if dropped and missing == "error":
        detail = "; ".join(f"'{features[m]}' lacks {len(t)} (e.g. {', '.join(t[:5])})"
                           for m, t in lacking.items() if t)
        raise ExportError(f"{dataset_dir}: items without a vector: {detail}; MMRec needs a vector "
                          "for every item: pass --missing drop-items to drop them")
    n_before = len(inter)
    inter = inter[~inter["item_id"].isin(dropped)].reset_index(drop=True)
    labelled = mmrec_split(inter, seed)
    user_ids, item_ids = dense_ids(labelled["user_id"]), dense_ids(labelled["item_id"])

    out_dir.mkdir(parents=True, exist_ok=True)
    name = out_dir.name
    table = pd.DataFrame({"userID": labelled["user_id"].map(user_ids),
                          "itemID": labelled["item_id"].map(item_ids)})
    for column in ("rating", "timestamp"):
        if column in labelled.columns:
            table[column] = labelled[column]
    table["x_label"] = labelled["split"]
    table.to_csv(out_dir / f"{name}.inter", sep="\t", index=False)
    item_order = sorted(item_ids, key=item_ids.get)
    for modality, found in vectors.items():
        matrix = np.stack([found[token] for token in item_order]).astype(np.float32)
        if modality == "image" and image_scale != 1.0:
            matrix = matrix * np.float32(image_scale)
        np.save(out_dir / MMREC_FEATURE_FILES[modality], matrix)
    pd.DataFrame({"asin": item_order, "itemID": range(len(item_order))}).to_csv(
        out_dir / "i_id_mapping.csv", sep="\t", index=False)
    pd.DataFrame({"user_id": sorted(user_ids, key=user_ids.get), "userID": range(len(user_ids))}
                 ).to_csv(out_dir / "u_id_mapping.csv", sep="\t", index=False)

    sources = [dataset_dir / f"{dataset_dir.name}.inter"] + [
        dataset_dir / "features" / f"{feature}.npy" for feature in features.values()]
    record = {
        "source": str(dataset_dir), "sha256": {str(p): sha256_of(p) for p in sources},
        "features": {MMREC_FEATURE_FILES[m]: f for m, f in features.items()},
        "image_scale": image_scale,
        "split": f"MMRec's per-user rule, numpy default_rng({seed})", "seed": seed,
        "users": len(user_ids), "items": len(item_ids), "interactions": len(table),
        "per_split": {part: int((table["x_label"] == label).sum())
                      for label, part in enumerate(("train", "valid", "test"))},
        "items_dropped_without_vector": len(dropped),
        "interactions_dropped_with_them": n_before - len(inter),
    }
    (out_dir / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", type=Path, help="a prepared dataset folder (dataset/<name>)")
    parser.add_argument("out_dir", type=Path, help="output folder (its name = MMRec's dataset name)")
    parser.add_argument("--image-feature", default="visual",
                        help="feature written as image_feat.npy ('' = none; default visual)")
    parser.add_argument("--text-feature", default="text",
                        help="feature written as text_feat.npy ('' = none; default text)")
    parser.add_argument("--seed", type=int, default=999, help="seed of the split (default 999)")
    parser.add_argument("--missing", choices=["error", "drop-items"], default="error",
                        help="items without a vector for an exported feature (default error)")
    parser.add_argument("--image-scale", type=float, default=1.0,
                        help="multiply image_feat.npy by this constant (default 1)")
    args = parser.parse_args()
    features = {m: f for m, f in (("image", args.image_feature), ("text", args.text_feature)) if f}
    try:
        record = export(args.dataset_dir.resolve(), args.out_dir.resolve(), features, args.seed,
                        args.missing, args.image_scale)
    except (ExportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
