"""What a source builds before anything is written: :class:`PreparedDataset` and its parts.

A leaf of ``data/prepare``: the sources, the value checks (``values.py``), the card and the writer
(``output.py``) all import it and it imports none of them, so the package's import graph has no
cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SPLIT_NAMES = ("train", "valid", "test")


class PrepareError(ValueError):
    """Input that cannot become a dataset; the message names the file (and line) at fault."""


@dataclass
class ImportedFeature:
    matrix: np.ndarray
    tokens: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedDataset:
    """Everything a source produces, before it is written.

    ``inter`` has columns ``user_id``, ``item_id``, optionally ``rating`` and ``timestamp``, and
    ``split`` (0 train / 1 valid / 2 test) when the split is predefined; rows are written in order.
    ``items`` has ``item_id``, text columns and ``image`` (path relative to the dataset folder,
    absolute path, URL, or empty). ``item_types`` gives each item column's RecBole type.
    ``counters`` are named counts of what was dropped, fixed or found missing, each explained in
    ``reasons``; both go to the dataset card.
    """

    name: str
    inter: pd.DataFrame
    items: pd.DataFrame | None = None
    item_types: dict[str, str] = field(default_factory=dict)
    features: dict[str, ImportedFeature] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)
    command: str = ""
    source_kind: str = ""
    split_description: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    extra_files: dict[str, str] = field(default_factory=dict)  # relative path -> text content

    def count(self, key: str, n: int, reason: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + int(n)
        self.reasons[key] = reason

    @property
    def predefined_split(self) -> bool:
        return "split" in self.inter.columns
