"""Tie-safe full-ranking evaluation: RecBole's collector ranks with formats/ranking.tie_safe_topk.

RecBole's ``Collector.eval_batch_collect`` feeds every ranking metric from ``torch.topk`` of the
score rows: "rec.items" (ItemCoverage, AveragePopularity, GiniIndex, ShannonEntropy,
TailPercentage) and "rec.topk" (Recall, NDCG, Hit, MRR, Precision, MAP). Both come from one
tie-safe top-k here (ties ordered by a permutation seeded from the run's ``seed``, never by item
index); "rec.topk" hit flags come from the sparse positives (speedups.topk_hits, same values as
RecBole's dense matrix). "rec.meanrank" (GAUC) already averages the ranks of tied items and
"rec.score" (AUC, LogLoss...) keeps the raw scores: RecBole's own code computes those.

:func:`install` replaces the class method once (the run layer calls it with the other shims);
:func:`count_ties` reads how many evaluated users had all-equal scores, or a tie at the cut-off.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from recbole_vlm4rec.formats.ranking import tie_safe_topk
from recbole_vlm4rec.speedups import topk_hits

RANKED_KEYS = ("rec.items", "rec.topk")


@dataclass
class TieCounts:
    """Over the rows (users) one evaluation ranked."""

    users: int = 0
    users_all_equal: int = 0  # every unmasked item scored the same: ranked by the tie-break alone
    users_tied_at_cutoff: int = 0  # the k-th and (k+1)-th scores tie: the tie-break chose members

    def to_json(self, seed: int | None = None) -> dict[str, Any]:
        return {"tie_break": "seeded random permutation per user", "seed": seed, **asdict(self)}

    def line(self) -> str:
        return (f"ranking: {self.users_all_equal}/{self.users} users had all-equal scores "
                f"(ranked at random), {self.users_tied_at_cutoff} had a tie at the top-k cut-off")


class _RegisterWithout:
    """A Collector register that reports some keys as not needed (computed here instead)."""

    def __init__(self, register: Any, keys: tuple[str, ...]) -> None:
        self._register, self._keys = register, keys

    def need(self, key: str) -> bool:
        return key not in self._keys and self._register.need(key)


def _row_users(collector: Any, interaction: Any, n_rows: int) -> Any:
    """The user id of each score row (full ranking: one row per user); else row positions."""
    import torch

    field = collector.config["USER_ID_FIELD"]
    try:
        users = interaction[field]
    except (KeyError, TypeError, IndexError):
        users = None
    if users is None or len(users) != n_rows:
        return torch.arange(n_rows)
    return users


def install() -> None:
    """Make RecBole's collector rank tie-safe (safe to call many times)."""
    from recbole.evaluator.collector import Collector

    original = Collector.eval_batch_collect
    if getattr(original, "_vlm4rec_shim", False):
        return

    def eval_batch_collect(self: Any, scores_tensor: Any, interaction: Any,
                           positive_u: Any, positive_i: Any) -> None:
        needed = [key for key in RANKED_KEYS if self.register.need(key)]
        if not needed:
            return original(self, scores_tensor, interaction, positive_u, positive_i)
        users = _row_users(self, interaction, scores_tensor.shape[0])
        k = max(self.topk)
        if k > scores_tensor.shape[1]:  # speedups.topk_hits names the problem
            topk_hits(scores_tensor, positive_u, positive_i, k)
        top = tie_safe_topk(scores_tensor, k, users, int(self.config["seed"]))
        counts = self.__dict__.setdefault("_vlm4rec_ties", TieCounts())
        counts.users += scores_tensor.shape[0]
        counts.users_all_equal += top.all_equal
        counts.users_tied_at_cutoff += top.tied_at_cutoff
        if "rec.items" in needed:
            self.data_struct.update_tensor("rec.items", top.indices)
        if "rec.topk" in needed:
            hits = topk_hits(scores_tensor, positive_u, positive_i, top.indices.shape[1],
                             topk_idx=top.indices)
            self.data_struct.update_tensor("rec.topk", hits)
        register, self.register = self.register, _RegisterWithout(self.register, RANKED_KEYS)
        try:
            original(self, scores_tensor, interaction, positive_u, positive_i)
        finally:
            self.register = register

    eval_batch_collect._vlm4rec_shim = True  # type: ignore[attr-defined]
    eval_batch_collect._original = original  # type: ignore[attr-defined]
    Collector.eval_batch_collect = eval_batch_collect


@contextmanager
def count_ties(trainer: Any) -> Iterator[TieCounts]:
    """Within the block, the trainer's evaluations count tied users into the yielded TieCounts."""
    collector = trainer.eval_collector
    collector._vlm4rec_ties = counts = TieCounts()
    try:
        yield counts
    finally:
        collector.__dict__.pop("_vlm4rec_ties", None)
