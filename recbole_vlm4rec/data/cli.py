"""``vlm4rec datasets``: which datasets can run now and which need preparing."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    datasets = subparsers.add_parser(
        "datasets", help="list datasets that can run now and named ones that need preparing"
    )
    datasets.set_defaults(func=_datasets)


def _datasets(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.data.feature_status import count_items_with_image
    from recbole_vlm4rec.data.registry import NAMED_DATASETS, available_datasets
    from recbole_vlm4rec.formats.paths import dataset_root

    available = available_datasets()
    print("available now:")
    for name in available:
        info = NAMED_DATASETS.get(name)
        item_file = dataset_root() / name / f"{name}.item"
        local, urls = count_items_with_image(item_file) if item_file.is_file() else (0, 0)
        # what `vlm4rec ground` can describe: it refuses a dataset without item images
        note = (f" [{local:,} items with an image]" if local
                else f" [{urls:,} image URLs, not downloaded]" if urls else " [no item images]")
        print(f"  {name:<20} {info.description if info else 'prepared folder under dataset/'}"
              f"{note}")
    missing = [info for name, info in NAMED_DATASETS.items() if name not in available]
    if missing:
        print("named, need preparing:")
        for info in missing:
            print(f"  {info.name:<20} {info.how_to_prepare}")
    return 0
