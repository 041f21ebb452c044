"""Per-user test metrics, taken from the very top-k matrix RecBole's evaluator averages.

RecBole's top-k metrics (Recall, NDCG, Hit, MRR, Precision, MAP) compute a per-user matrix with
``metric_info`` and report its column means. :func:`record_per_user` keeps those per-user values
for one evaluation, so their means are RecBole's numbers (before its rounding) by construction,
and paired significance tests can compare two models user by user.

Only the trainer *instance* is touched (its ``eval_collector`` and ``evaluator`` attributes are
wrapped for the duration of the ``with`` block and restored after); RecBole's classes are not.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch


@dataclass
class PerUserMetrics:
    """``values[metric@k][row]`` belongs to user ``user_ids[row]`` (RecBole internal ids)."""

    user_ids: list[int] = field(default_factory=list)
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self, user_tokens: Any = None, decimals: int = 6) -> dict[str, Any]:
        """``{"users": [...], "metrics": {"recall@20": [...]}}``; raw tokens when a map is given."""
        users: list[Any] = list(self.user_ids)
        if user_tokens is not None:
            users = [str(user_tokens[u]) for u in self.user_ids]
        return {
            "users": users,
            "metrics": {k: np.round(v, decimals).tolist() for k, v in self.values.items()},
        }


class _CollectorRecordingUsers:
    """Stands in for a trainer's Collector; remembers which user each score row belongs to."""

    def __init__(self, collector: Any, uid_field: str, sink: list[torch.Tensor]) -> None:
        self._collector, self._uid_field, self._sink = collector, uid_field, sink

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collector, name)

    def eval_batch_collect(self, scores: Any, interaction: Any, positive_u: Any,
                           positive_i: Any) -> None:
        users = interaction[self._uid_field]
        if len(users) == scores.shape[0]:  # full ranking: one score row per user
            self._sink.append(users.detach().cpu())
        self._collector.eval_batch_collect(scores, interaction, positive_u, positive_i)


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
def record_per_user(trainer: Any, uid_field: str, topk: list[int]) -> Iterator[PerUserMetrics]:
    """Within the block, the trainer's evaluations also fill the yielded PerUserMetrics."""
    recorded = PerUserMetrics()
    users: list[torch.Tensor] = []
    collector, evaluator = trainer.eval_collector, trainer.evaluator
    trainer.eval_collector = _CollectorRecordingUsers(collector, uid_field, users)
    trainer.evaluator = _EvaluatorKeepingPerUser(evaluator, list(topk), recorded.values)
    try:
        yield recorded
    finally:
        trainer.eval_collector, trainer.evaluator = collector, evaluator
        rows = next(iter(recorded.values.values()), np.empty(0))
        all_users = torch.cat(users).tolist() if users else []
        # Sampled (uni100) evaluation has no one-row-per-user batches: keep positions only.
        recorded.user_ids = all_users if len(all_users) == len(rows) else list(range(len(rows)))
