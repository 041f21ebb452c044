"""The queries behind the explorer page (service.py answers the rest): items looked up by
title, an item's neighbours under every feature of its dataset beside its co-interaction
neighbours, and a user's history, held-out items and every bundle's top-k side by side."""

from __future__ import annotations

from typing import Any

import numpy as np

from recbole_vlm4rec.serving.recommend import (EmptyHistoryError, ServingError, UnknownItemError,
                                               UnknownUserError, check_counts)
from recbole_vlm4rec.serving.service import CO_INTERACTION, Served, Service, Snapshot, card


class UnknownFeatureError(ServingError):
    """A feature name the dataset's bundles do not have."""


def find_items(service: Service, snapshot: Snapshot, dataset: str | None, text: str,
               k: int) -> dict[str, Any]:
    """Items whose token or title contains ``text`` (case-insensitive): the explorer's
    lookup by name, for bundles that cannot embed text."""
    check_counts(k)
    name, bundles = service.dataset(snapshot, dataset)
    needle = text.strip().lower()
    tokens = bundles[0].recommender.bundle.item_tokens
    titles = {t: s for b in bundles for t, s in b.recommender.bundle.titles.items()}
    found = [t for t in tokens if needle and (needle == t.lower()
                                               or needle in titles.get(t, "").lower())]
    exact = [t for t in found if t.lower() == needle]
    found = exact + [t for t in found if t not in exact]
    return {"dataset": name, "query": {"text": text},
            "items": [card(bundles, t, name) for t in found[:k]]}


def similar(service: Service, snapshot: Snapshot, dataset: str | None, item: str, k: int,
            feature: str | None = None) -> dict[str, Any]:
    """The item's k nearest items under each feature of its dataset's bundles (and its
    co-interaction neighbours), each neighbour marked with the training users it shares
    with the item and whether it is among the item's top-k co-interaction neighbours."""
    check_counts(k)
    name, bundles = service.dataset(snapshot, dataset)
    columns: dict[str, Served] = {}
    for served in bundles:  # one column per feature: the first bundle of each
        if served.meta["kind"] == "profile":
            columns.setdefault(served.feature, served)
    features = list(columns) + [CO_INTERACTION]
    if feature is not None and feature not in features:
        raise UnknownFeatureError(f"unknown feature {feature!r} for dataset {name!r}; it has "
                                  f"{', '.join(features)}")
    if not any(item in b.recommender.item_row for b in bundles):
        tokens = bundles[0].recommender.bundle.item_tokens
        raise UnknownItemError(f"unknown item {item!r} in dataset {name!r} (e.g. "
                               f"{', '.join(tokens[:3])})")
    co = _CoColumn(bundles, item, k)
    out = []
    for feature_name in features:
        if feature is not None and feature_name != feature:
            continue
        if feature_name == CO_INTERACTION:
            out.append({"feature": CO_INTERACTION, "bundle": co.source_name,
                        "note": co.note, "neighbours": [
                            {**card(bundles, t, name), "score": float(c),
                             "co_count": int(c), "in_co_top": True} for t, c in co.top]})
            continue
        served, note, found = columns[feature_name], None, []
        row = served.recommender.item_row.get(item)
        if row is None:
            note = f"item {item!r} is not in bundle {served.name!r}"
        elif not served.recommender.bundle.has_vector[row]:
            note = f"item {item!r} has no '{feature_name}' vector (e.g. no image)"
        else:
            found = served.recommender.for_items([item], k, 0)
        out.append({"feature": feature_name, "bundle": served.name, "note": note,
                    "neighbours": [{**card(bundles, r.item, name), "score": r.score,
                                    "co_count": co.count(r.item),
                                    "in_co_top": r.item in co.top_tokens} for r in found]})
    descriptions = {b.feature: b.recommender.bundle.descriptions[item] for b in bundles
                    if item in b.recommender.bundle.descriptions}
    return {"dataset": name, "k": k,
            "item": {**card(bundles, item, name), "descriptions": descriptions},
            "features": out}


def user_page(service: Service, snapshot: Snapshot, dataset: str | None, user: str,
              k: int) -> dict[str, Any]:
    """A known user's training history, held-out test items (where a bundle knows them) and
    every dataset bundle's top-k side by side, held-out items marked."""
    check_counts(k)
    name, bundles = service.dataset(snapshot, dataset)
    if not any(user in b.recommender.user_row for b in bundles):
        raise UnknownUserError(f"unknown user {user!r} in dataset {name!r} (e.g. "
                               f"{', '.join(bundles[0].recommender.bundle.user_tokens[:3])})")
    history = held_out = None
    for served in bundles:
        bundle, row = served.recommender.bundle, served.recommender.user_row.get(user)
        if row is None:
            continue
        if history is None and bundle.train is not None:
            history = [bundle.item_tokens[r] for r in bundle.train_rows(row)]
        if held_out is None and bundle.test is not None:
            held_out = [bundle.item_tokens[r] for r in bundle.test_rows(row)]
    held = set(held_out or [])
    columns = []
    for served in bundles:
        column: dict[str, Any] = {"bundle": served.name, "model": served.meta.get("model"),
                                  "feature": served.feature, "items": [], "note": None,
                                  "hits": None}
        try:
            found = served.recommender.for_user(user, k, 0)
            column["items"] = [{**card(bundles, r.item, name), "score": r.score,
                                "held_out": r.item in held} for r in found]
            column["hits"] = sum(i["held_out"] for i in column["items"]) if held_out \
                is not None else None
        except (EmptyHistoryError, UnknownUserError, ServingError) as error:
            column["note"] = str(error)
        columns.append(column)
    return {"dataset": name, "user": user, "k": k,
            "history": None if history is None else [card(bundles, t, name)
                                                     for t in history],
            "held_out": None if held_out is None else [card(bundles, t, name)
                                                       for t in held_out],
            "recommendations": columns}


class _CoColumn:
    """One item's co-interaction counts, from the first dataset bundle with training data."""

    def __init__(self, bundles: list[Served], item: str, k: int) -> None:
        source = next((b for b in bundles if b.co_interactions() is not None), None)
        self.source_name = source.name if source else None
        self.top: list[tuple[str, int]] = []
        self.top_tokens: set[str] = set()
        self._counts: np.ndarray | None = None
        self.note = ("no training interactions in these bundles (exported before train.npz)"
                     if source is None else None)
        if source is None:
            return
        recommender = source.recommender
        if item not in recommender.item_row:
            self.note = "item not in this bundle's catalogue"
            return
        self._rows = recommender.item_row
        co, row = source.co_interactions(), recommender.item_row[item]
        self._counts = co.counts(row)
        rows, counts = co.top(row, k, recommender.tie_priorities(None))
        self.top = [(recommender.bundle.item_tokens[r], int(c)) for r, c in zip(rows, counts)]
        self.top_tokens = {t for t, _ in self.top}
        if not self.top:
            self.note = "no training user interacted with this item and another"

    def count(self, token: str) -> int | None:
        """Training users the item shares with ``token`` (None without training data)."""
        if self._counts is None or token not in self._rows:
            return None
        return int(self._counts[self._rows[token]])
