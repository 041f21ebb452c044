"""Tie-safe full-ranking evaluation: RecBole's collector ranks with formats/ranking.tie_safe_topk.

RecBole's ``Collector.eval_batch_collect`` feeds every ranking metric from ``torch.topk`` of the
score rows: "rec.items" (ItemCoverage, AveragePopularity, GiniIndex, ShannonEntropy,
TailPercentage) and "rec.topk" (Recall, NDCG, Hit, MRR, Precision, MAP). Both come from one
tie-safe top-k here (ties ordered by a permutation seeded from the run's ``seed``, never by item
index); "rec.topk" hit flags come from the sparse positives (speedups.topk_hits, same values as
RecBole's dense matrix). "rec.meanrank" (GAUC) already averages the ranks of tied items and
"rec.score" (AUC, LogLoss...) keeps the raw scores: RecBole's own code computes those.

``compat.install()`` puts this collector in RecBole's place (compat.py holds every patch);
:func:`count_ties` reads how many evaluated users had all-equal scores, or a tie at the cut-off.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator


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


@contextmanager
def count_ties(trainer: Any) -> Iterator[TieCounts]:
    """Within the block, the trainer's evaluations count tied users into the yielded TieCounts
    (the tie-safe collector that compat.install() puts in RecBole adds to it)."""
    collector = trainer.eval_collector
    collector._vlm4rec_ties = counts = TieCounts()
    try:
        yield counts
    finally:
        collector.__dict__.pop("_vlm4rec_ties", None)
