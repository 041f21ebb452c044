"""Paired significance on per-user metrics: t-test and Wilcoxon signed-rank, Holm-corrected.

Two models are paired user by user. A cell's split depends on its seed, so pairs are built only
from seeds both models ran; each user's value is averaged over those seeds first (users must be
in the test set of every such seed). The family for Holm's correction is all models compared to
the reference on one dataset and one metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats


@dataclass
class PairedTest:
    n_users: int
    mean_difference: float  # model - reference, averaged over users
    t_p: float
    wilcoxon_p: float
    t_p_holm: float = math.nan
    wilcoxon_p_holm: float = math.nan


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN."""
    indexed = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    indexed.sort()
    m = len(indexed)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def paired_test(model: np.ndarray, reference: np.ndarray) -> PairedTest:
    """Two-sided paired t-test and Wilcoxon test of ``model`` vs ``reference`` (same users)."""
    model, reference = np.asarray(model, float), np.asarray(reference, float)
    if model.shape != reference.shape:
        raise ValueError(f"paired samples differ in length: {model.shape} vs {reference.shape}")
    difference = model - reference
    n = len(difference)
    if n < 2:
        return PairedTest(n, float(difference.mean()) if n else math.nan, math.nan, math.nan)
    if not np.any(difference):
        # identical per-user values: no evidence of a difference (scipy would return NaN)
        return PairedTest(n, 0.0, 1.0, 1.0)
    t_p = float(stats.ttest_rel(model, reference).pvalue)
    if math.isnan(t_p):  # constant non-zero difference: the t statistic is infinite
        t_p = 0.0
    wilcoxon_p = float(stats.wilcoxon(model, reference, zero_method="wilcox").pvalue)
    return PairedTest(n, float(difference.mean()), t_p, wilcoxon_p)


def average_per_user(runs: dict[int, dict[str, float]], seeds: Sequence[int]) -> dict[str, float]:
    """``seed -> {user: value}`` -> ``{user: mean over seeds}`` for users present in every seed."""
    users = set.intersection(*(set(runs[s]) for s in seeds)) if seeds else set()
    return {u: float(np.mean([runs[s][u] for s in seeds])) for u in users}


def compare_to_reference(
    per_model: dict[str, dict[int, dict[str, float]]], reference: str
) -> dict[str, PairedTest]:
    """``label -> seed -> {user: value}`` for one metric -> Holm-corrected tests vs ``reference``."""
    results: dict[str, PairedTest] = {}
    for label, runs in per_model.items():
        if label == reference:
            continue
        seeds = sorted(set(runs) & set(per_model[reference]))
        model_values = average_per_user(runs, seeds)
        reference_values = average_per_user(per_model[reference], seeds)
        users = sorted(set(model_values) & set(reference_values))
        results[label] = paired_test(np.array([model_values[u] for u in users]),
                                     np.array([reference_values[u] for u in users]))
    labels = list(results)
    for field_name in ("t_p", "wilcoxon_p"):
        adjusted = holm([getattr(results[label], field_name) for label in labels])
        for label, value in zip(labels, adjusted):
            setattr(results[label], f"{field_name}_holm", value)
    return results
