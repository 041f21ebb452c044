"""Where a model wins or loses, from the run records alone: per-user-activity buckets and
cold-start vs warm pairs.

Activity buckets split the test users of a dataset by their number of training interactions
(``per_user_test.train_interactions``, recorded by the runner) at the tertiles over every ok run:
*few*, *medium*, *many*. A model's value in a bucket is the mean of its per-user metric over the
bucket's users, per seed, then mean ± std over seeds.

Cold vs warm pairs two labels on one dataset that run the same model with the same settings except
the cold-start keys (``cold_start_items``, ``cold_start_targets``, ``cold_start_seed``), one under
the cold-start protocol (its records carry ``cold_start``) and one not.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from recbole_vlm4rec.benchmark.report_data import ModelSummary

COLD_START_KEYS = {"cold_start_items", "cold_start_targets", "cold_start_seed", "seed"}


@dataclass
class Buckets:
    metric: str
    names: list[str]  # "few (1-23)", ...
    edges: list[tuple[int, int]]  # inclusive training-count range per bucket
    users: list[int]  # test users per bucket (over all runs, a user counted once per seed)
    # label -> (mean, std over seeds; NaN from one seed) per bucket
    values: dict[str, list[tuple[float, float]]]


def bucket_metric(metrics: list[str], available: set[str]) -> str | None:
    """Recall@20 when recorded per user, else the first table metric that is."""
    for name in ["recall@20", *metrics]:
        if name in available:
            return name
    return None


def _runs_with_counts(summary: "ModelSummary", metric: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(values, train counts)`` per ok run that recorded both."""
    runs = []
    for record in summary.ok:
        per_user = record["result"].get("per_user_test") or {}
        values = (per_user.get("metrics") or {}).get(metric)
        counts = per_user.get("train_interactions")
        if values is not None and counts is not None and len(values) == len(counts):
            runs.append((np.asarray(values, float), np.asarray(counts, int)))
    return runs


def activity_buckets(summaries: dict[str, "ModelSummary"], metrics: list[str]) -> Buckets | None:
    """Buckets for one dataset, or None when no ok run recorded training counts."""
    available: set[str] = set()
    for summary in summaries.values():
        for record in summary.ok:
            available |= set((record["result"].get("per_user_test") or {}).get("metrics") or {})
    metric = bucket_metric(metrics, available)
    if metric is None:
        return None
    warm = {label: s for label, s in summaries.items() if not s.cold_start}
    # Cold-start runs have other test users and training sets: buckets of one protocol only.
    runs = {label: _runs_with_counts(s, metric) for label, s in (warm or summaries).items()}
    runs = {label: r for label, r in runs.items() if r}
    if not runs:
        return None
    # Edges from the users of one model's runs (all models share the split of a seed).
    counts = np.concatenate([c for _, c in next(iter(runs.values()))])
    low, high = (int(q) for q in np.quantile(counts, [1 / 3, 2 / 3], method="lower"))
    edges = [(int(counts.min()), low), (low + 1, high), (high + 1, int(counts.max()))]
    edges = [(a, b) for a, b in edges if a <= b]
    names = [f"{word} ({a}-{b})" if a != b else f"{word} ({a})"
             for word, (a, b) in zip(_bucket_words(len(edges)), edges)]
    users = [int(((counts >= a) & (counts <= b)).sum()) for a, b in edges]
    values = {}
    for label, label_runs in runs.items():
        per_bucket = []
        for a, b in edges:
            means = [float(v[(c >= a) & (c <= b)].mean()) for v, c in label_runs
                     if ((c >= a) & (c <= b)).any()]
            per_bucket.append((float(np.mean(means)) if means else math.nan,
                               float(np.std(means, ddof=1)) if len(means) > 1 else math.nan))
        values[label] = per_bucket
    return Buckets(metric, names, edges, users, values)


def _bucket_words(n: int) -> list[str]:
    return {3: ["few", "medium", "many"], 2: ["fewer", "more"], 1: ["all"]}[n]


@dataclass
class ColdWarmPair:
    label: str  # the warm label
    cold_label: str
    warm: tuple[float, float]  # mean, std over seeds of the metric
    cold: tuple[float, float]


def _variant(record: dict[str, Any]) -> str:
    cell = record["cell"]
    overrides = {k: v for k, v in cell["overrides"].items() if k not in COLD_START_KEYS}
    return json.dumps([cell["model"], overrides], sort_keys=True, default=str)


def _spread(summary: "ModelSummary", metric: str) -> tuple[float, float]:
    mean, std = summary.metric(metric)
    return mean, std if len(summary.ok) > 1 else math.nan  # one run has no spread


def cold_warm_pairs(summaries: dict[str, "ModelSummary"], metric: str) -> list[ColdWarmPair]:
    """Warm/cold label pairs of one dataset (see the module docstring), in table order."""
    by_variant: dict[str, dict[str, str]] = {}
    for label, summary in summaries.items():
        if summary.ok:
            side = "cold" if summary.cold_start else "warm"
            by_variant.setdefault(_variant(summary.ok[0]), {}).setdefault(side, label)
    pairs = []
    for sides in by_variant.values():
        if "cold" in sides and "warm" in sides:
            warm, cold = summaries[sides["warm"]], summaries[sides["cold"]]
            pairs.append(ColdWarmPair(sides["warm"], sides["cold"], _spread(warm, metric),
                                      _spread(cold, metric)))
    return pairs


def cold_start_note(summaries: dict[str, "ModelSummary"]) -> str | None:
    """A line saying which labels ran the cold-start protocol, or None when none did."""
    cold = [(label, s) for label, s in summaries.items() if s.ok and s.cold_start]
    if not cold:
        return None
    setting = cold[0][1].ok[0]["result"]["cold_start"]
    return (f"{len(cold)} of {sum(1 for s in summaries.values() if s.ok)} models with results ran "
            f"the item cold-start protocol ({setting.get('n_cold_items')} of "
            f"{setting.get('n_items')} items cold, targets: {setting.get('targets')})")
