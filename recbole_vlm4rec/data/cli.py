"""``vlm4rec datasets`` and ``vlm4rec features``: what data exists and how well features cover it."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    datasets = subparsers.add_parser(
        "datasets", help="list datasets that can run now and named ones that need preparing"
    )
    datasets.set_defaults(func=_datasets)

    features = subparsers.add_parser(
        "features",
        help="load a dataset's declared item features and report coverage per feature",
        description="Loads (and, for item-text features, builds) every feature declared under "
        "`item_features` in configs/dataset/<dataset>.yaml, aligned to RecBole's item ids, and "
        "prints how many items have each. Example: vlm4rec features ml-100k",
    )
    features.add_argument("dataset", help="dataset name, e.g. ml-100k")
    features.set_defaults(func=_features)


def _datasets(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.data.registry import NAMED_DATASETS, available_datasets

    available = available_datasets()
    print("available now:")
    for name in available:
        info = NAMED_DATASETS.get(name)
        print(f"  {name:<20} {info.description if info else 'prepared folder under dataset/'}")
    missing = [info for name, info in NAMED_DATASETS.items() if name not in available]
    if missing:
        print("named, need preparing:")
        for info in missing:
            print(f"  {info.name:<20} {info.how_to_prepare}")
    return 0


def _features(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.runner import build_config, create_dataset

    config = build_config("VLM4Rec", args.dataset, overrides={"state": "WARNING"})
    dataset = create_dataset(config)
    declared = dataset.declared_item_features()
    if not declared:
        print(f"dataset '{args.dataset}' declares no item features")
        return 1
    for name in declared:
        print(dataset.item_feature(name).report())
    return 0
