"""A dataset's size before loading and a model's memory estimate for it: the two types the
contract's ``memory_estimate`` speaks (apart from contract.py so that models/_memory.py, which the
contract reads for RecBole's own models, can use them without an import cycle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class DataSize:
    """A dataset's size as known before loading (card.json or the atomic files' line counts)."""

    n_users: int
    n_items: int
    n_interactions: int  # training interactions are at most this many
    feature_dims: Mapping[str, int] = field(default_factory=dict)  # features the model reads


@dataclass(frozen=True)
class MemoryEstimate:
    """What a model holds at once at its peak, in bytes, part by part.

    ``per_scored_cell``: bytes per (user, item) score of a full-ranking evaluation batch (the run
    layer sizes ``eval_batch_size`` with it); ``fix``: the setting that lowers the estimate, with
    what it comes to (``--profile_scoring=profiles (about 1.2 GB)``), or '' when none does.
    """

    parts: Mapping[str, float]
    per_scored_cell: float = 16.0
    fix: str = ""

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))
