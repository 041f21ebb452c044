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
