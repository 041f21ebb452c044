"""Per-user test metrics, taken from the very top-k matrix RecBole's evaluator averages.

RecBole's top-k metrics (Recall, NDCG, Hit, MRR, Precision, MAP) compute a per-user matrix with
``metric_info`` and report its column means. :func:`record_per_user` keeps those per-user values
for one evaluation, so their means are RecBole's numbers (before its rounding) by construction,
and paired significance tests can compare two models user by user.

The same wrapping also keeps, for a few *watched* test users, the top-k items of their score rows
(history already masked, as RecBole ranks them) and their test items: the report's qualitative
examples (:func:`choose_example_users`, :func:`examples_json`).

Only the trainer *instance* is touched (its ``eval_collector`` and ``evaluator`` attributes are
wrapped for the duration of the ``with`` block and restored after); RecBole's classes are not.
"""

from __future__ import annotations

import hashlib
import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import torch

EXAMPLE_USERS = 12  # test users per run whose top-k is kept (the report shows a few of them)
EXAMPLE_TOPK = 10
EXAMPLE_TRAIN_ITEMS = 20  # most recent training items kept per example user
_EXAMPLE_SALT = "vlm4rec-examples"  # fixes the pseudo-random order of users, the same in every run


@dataclass
class PerUserMetrics:
    """``values[metric@k][row]`` belongs to user ``user_ids[row]`` (RecBole internal ids)."""

    user_ids: list[int] = field(default_factory=list)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    # watched user -> (top-k internal item ids, test item ids): see record_per_user's watch_users
    ranked: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)
    full_ranking: bool = True  # False for sampled evaluation: rows are not users

    def to_json(self, user_tokens: Any = None, decimals: int = 6,
                train_counts: np.ndarray | None = None) -> dict[str, Any]:
        """``{"users": [...], "metrics": {"recall@20": [...]}}``; raw tokens when a map is given;
        ``"train_interactions"`` (one count per user) when ``train_counts`` (by internal id) is."""
        users: list[Any] = list(self.user_ids)
        if user_tokens is not None:
            users = [str(user_tokens[u]) for u in self.user_ids]
        recorded = {
            "users": users,
            "metrics": {k: np.round(v, decimals).tolist() for k, v in self.values.items()},
        }
        if train_counts is not None and self.full_ranking:
            recorded["train_interactions"] = [int(train_counts[u]) for u in self.user_ids]
        return recorded


class _CollectorRecordingUsers:
    """Stands in for a trainer's Collector; remembers which user each score row belongs to."""

    def __init__(self, collector: Any, uid_field: str, sink: list[torch.Tensor],
                 watched: set[int], ranked: dict[int, tuple[list[int], list[int]]]) -> None:
        self._collector, self._uid_field, self._sink = collector, uid_field, sink
        self._watched, self._ranked = watched, ranked

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collector, name)

    def eval_batch_collect(self, scores: Any, interaction: Any, positive_u: Any,
                           positive_i: Any) -> None:
        users = interaction[self._uid_field]
        if len(users) == scores.shape[0]:  # full ranking: one score row per user
            self._sink.append(users.detach().cpu())
            if self._watched:
                self._keep_ranked(scores, users.tolist(), positive_u, positive_i)
        self._collector.eval_batch_collect(scores, interaction, positive_u, positive_i)


    def _keep_ranked(self, scores: Any, users: list[int], positive_u: Any, positive_i: Any) -> None:
        rows = [row for row, user in enumerate(users) if user in self._watched]
        if not rows:
            return
        top = torch.topk(scores[rows], min(EXAMPLE_TOPK, scores.shape[1]), dim=-1)
        positives = list(zip(positive_u.tolist(), positive_i.tolist()))
        for row, values, items in zip(rows, top.values.tolist(), top.indices.tolist()):
            ranked = [i for v, i in zip(values, items) if v != float("-inf")]  # masked: not ranked
            self._ranked[users[row]] = (ranked, [i for r, i in positives if r == row])


class _EvaluatorKeepingPerUser:
    """Stands in for a trainer's Evaluator; also keeps each top-k metric's per-user values."""

    def __init__(self, evaluator: Any, topk: list[int], sink: dict[str, np.ndarray]) -> None:
        self._evaluator, self._topk, self._sink = evaluator, topk, sink

    def __getattr__(self, name: str) -> Any:
        return getattr(self._evaluator, name)

    def evaluate(self, dataobject: Any) -> Any:
        result = self._evaluator.evaluate(dataobject)
        self._sink.update(per_user_values(self._evaluator, dataobject, self._topk))
        return result


def per_user_values(evaluator: Any, dataobject: Any, topk: list[int]) -> dict[str, np.ndarray]:
    """``metric@k -> (n_users,)`` for every top-k metric of a RecBole Evaluator."""
    values: dict[str, np.ndarray] = {}
    if "rec.topk" not in dataobject:
        return values
    for name, metric in evaluator.metric_class.items():
        if not (hasattr(metric, "used_info") and hasattr(metric, "metric_info")):
            continue
        pos_index, pos_len = metric.used_info(dataobject)
        takes_len = len(inspect.signature(metric.metric_info).parameters) >= 2
        matrix = metric.metric_info(pos_index, pos_len) if takes_len else metric.metric_info(pos_index)
        for k in topk:
            values[f"{name}@{k}"] = np.asarray(matrix[:, k - 1], dtype=np.float64)
    return values


@contextmanager
def record_per_user(trainer: Any, uid_field: str, topk: list[int],
                    watch_users: Iterable[int] = ()) -> Iterator[PerUserMetrics]:
    """Within the block, the trainer's evaluations also fill the yielded PerUserMetrics (and its
    ``ranked`` for the internal user ids in ``watch_users``)."""
    recorded = PerUserMetrics()
    users: list[torch.Tensor] = []
    collector, evaluator = trainer.eval_collector, trainer.evaluator
    trainer.eval_collector = _CollectorRecordingUsers(collector, uid_field, users,
                                                      set(watch_users), recorded.ranked)
    trainer.evaluator = _EvaluatorKeepingPerUser(evaluator, list(topk), recorded.values)
    try:
        yield recorded
    finally:
        trainer.eval_collector, trainer.evaluator = collector, evaluator
        rows = next(iter(recorded.values.values()), np.empty(0))
        all_users = torch.cat(users).tolist() if users else []
        # Sampled (uni100) evaluation has no one-row-per-user batches: keep positions only.
        recorded.full_ranking = len(all_users) == len(rows)
        recorded.user_ids = all_users if recorded.full_ranking else list(range(len(rows)))


def choose_example_users(test_users: Iterable[int], user_tokens: Any,
                         n: int = EXAMPLE_USERS) -> list[int]:
    """``n`` internal ids among ``test_users``, in a fixed pseudo-random order of their tokens:
    every run on a dataset watches the same users (whatever the model, the seed decides only
    which users are in test), so the report can set their lists side by side."""
    def order(user: int) -> str:
        return hashlib.sha256(f"{_EXAMPLE_SALT}:{user_tokens[user]}".encode()).hexdigest()

    return sorted({int(u) for u in test_users}, key=order)[:n]


def training_counts(train_dataset: Any, uid_field: str, n_users: int) -> np.ndarray:
    """Training interactions per internal user id."""
    users = train_dataset.inter_feat[uid_field].numpy()
    return np.bincount(users, minlength=n_users)


def examples_json(recorded: PerUserMetrics, train_dataset: Any, config: Any,
                  user_tokens: Any, item_tokens: Any) -> dict[str, Any]:
    """The watched users' lists as raw tokens: ``{"k", "users": [{"user", "n_train",
    "train_items" (the most recent EXAMPLE_TRAIN_ITEMS, oldest first), "test_items",
    "top_items"}]}``."""
    uid_field, iid_field, time_field = (config["USER_ID_FIELD"], config["ITEM_ID_FIELD"],
                                        config["TIME_FIELD"])
    inter = train_dataset.inter_feat
    users, items = inter[uid_field].numpy(), inter[iid_field].numpy()
    times = inter[time_field].numpy() if time_field in inter.columns else np.arange(len(users))
    shown = []
    for user, (top, test) in recorded.ranked.items():
        rows = np.flatnonzero(users == user)
        rows = rows[np.argsort(times[rows], kind="stable")]
        shown.append({
            "user": str(user_tokens[user]), "n_train": int(len(rows)),
            "train_items": [str(item_tokens[i]) for i in items[rows[-EXAMPLE_TRAIN_ITEMS:]]],
            "test_items": [str(item_tokens[i]) for i in test],
            "top_items": [str(item_tokens[i]) for i in top],
        })
    return {"k": EXAMPLE_TOPK, "users": shown}
