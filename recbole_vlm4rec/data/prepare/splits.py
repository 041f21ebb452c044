"""Shared interaction policies: duplicates, k-core filtering, MMRec's per-user split.

All functions are deterministic for given inputs (and seed), so re-preparing is byte-identical.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recbole_vlm4rec.data.prepare.prepared import PreparedDataset

SPLIT_CHOICES = ("recbole", "mmrec")


def drop_duplicate_interactions(inter: pd.DataFrame, prepared: PreparedDataset,
                                keep_note: str) -> pd.DataFrame:
    """Keep the first row of each (user, item) pair in the frame's order; count the rest."""
    duplicated = inter.duplicated(["user_id", "item_id"], keep="first")
    if duplicated.any():
        prepared.count("duplicate_interactions", int(duplicated.sum()),
                       f"repeated (user, item) pairs dropped; {keep_note} is kept")
    return inter[~duplicated].reset_index(drop=True)


def k_core(inter: pd.DataFrame, k: int, prepared: PreparedDataset) -> pd.DataFrame:
    """Iteratively drop users and items with fewer than ``k`` interactions; counts go on the card."""
    if k <= 1:
        return inter
    users_before, items_before, rows_before = (
        inter["user_id"].nunique(), inter["item_id"].nunique(), len(inter))
    while True:
        user_counts = inter["user_id"].map(inter["user_id"].value_counts())
        item_counts = inter["item_id"].map(inter["item_id"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            break
        inter = inter[keep]
    inter = inter.reset_index(drop=True)
    reason = f"removed by {k}-core filtering (users and items with fewer than {k} interactions)"
    prepared.count("k_core_removed_users", users_before - inter["user_id"].nunique(), reason)
    prepared.count("k_core_removed_items", items_before - inter["item_id"].nunique(), reason)
    prepared.count("k_core_removed_interactions", rows_before - len(inter), reason)
    return inter


def mmrec_split(inter: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Add a ``split`` column (0 train / 1 valid / 2 test) by MMRec's rule.

    Per user, interactions (ordered by timestamp then item, when there is a timestamp) are
    shuffled with one ``numpy.random.default_rng(seed)`` walked over users in sorted order; a user
    with n < 10 interactions gets 1 valid + 1 test, otherwise ``n // 10`` valid and
    ``(n + 5) // 10`` test (10% each, the half rounded towards test), the rest train. This
    reproduces the per-user split sizes of MMRec's released Amazon data exactly.
    """
    inter = inter.reset_index(drop=True)
    order_columns = ["user_id", "timestamp", "item_id"] if "timestamp" in inter.columns \
        else ["user_id", "item_id"]
    ordered = inter.sort_values(order_columns, kind="stable")
    positions = ordered.index.to_numpy()
    users = ordered["user_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    rng = np.random.default_rng(seed)
    labels = np.zeros(len(inter), dtype=np.int64)
    for start, end in zip(starts, ends):
        n = end - start
        if n < 3:  # too few to hold out both: keep everything in train
            continue
        n_valid, n_test = (1, 1) if n < 10 else (n // 10, (n + 5) // 10)
        shuffled = positions[start:end][rng.permutation(n)]
        labels[shuffled[n - n_valid - n_test:n - n_test]] = 1
        labels[shuffled[n - n_test:]] = 2
    return inter.assign(split=labels)


def split_description(split: str, seed: int) -> str:
    if split == "mmrec":
        return (f"Predefined, MMRec's rule with seed {seed}: per user shuffled; fewer than 10 "
                "interactions -> 1 valid + 1 test, else n//10 valid and (n+5)//10 test, rest "
                "train; users with fewer than 3 interactions stay in train.")
    return "RecBole splits <name>.inter at load time by eval_args (configs/overall.yaml)."


def apply_split(inter: pd.DataFrame, split: str, seed: int, prepared: PreparedDataset) -> pd.DataFrame:
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, got {split!r}")
    prepared.split_description = split_description(split, seed)
    if split == "recbole":
        return inter
    few = inter["user_id"].value_counts()
    short = int((few < 3).sum())
    if short:
        prepared.count("users_train_only", short,
                       "users with fewer than 3 interactions: all in train (nothing to hold out)")
    return mmrec_split(inter, seed)
