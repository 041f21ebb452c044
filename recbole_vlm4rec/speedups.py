"""Speed-ups of RecBole's full-ranking evaluation that leave every result identical.

Not compatibility fixes (those are in compat.py): each replaces a slow step of RecBole 1.2.1 with
one that computes the same values, checked by an equivalence test in tests/test_speedups.py. The
run layer installs them with :func:`install`; importing this module changes nothing.
"""

from __future__ import annotations

from typing import Any

_installed = False


def install() -> None:
    """Install the speed-ups (safe to call many times)."""
    global _installed
    if _installed:
        return
    _itemknn_scores_in_csr()
    _installed = True


# --- Full-ranking evaluator speed ----------------------------------------------------------------
# Collector.eval_batch_collect marks hits by allocating a dense int matrix the size of the score
# matrix and summing it, per batch: on a 2-core CPU that costs more than the top-k itself (about a
# third of VLM4Rec's whole evaluation at Amazon-Baby scale). :func:`topk_hits` computes the
# identical "rec.topk" tensor (hit flags of the top-k, then the number of distinct positives per
# user) from the sparse positives instead. The evaluator's replacement collector (run/ranking.py,
# which also orders ties) calls it with its tie-safe top-k indices.
def topk_hits(scores: Any, positive_u: Any, positive_i: Any, k: int,
              topk_idx: Any = None) -> Any:
    """``(n_users, k + 1)`` int64 (as RecBole makes it): top-k hit flags, then #positives.

    ``topk_idx`` (``(n_users, k)``) is the ranking to score; None: ``torch.topk`` of ``scores``.
    """
    import torch

    n_users, n_items = scores.shape
    if k > n_items:  # torch's own error ("selected index k out of range") names neither
        raise ValueError(f"top-{k} asked for, but the catalogue has only {n_items - 1} items "
                         f"(+ padding): lower topk to at most {n_items - 1}")
    if topk_idx is None:
        _, topk_idx = torch.topk(scores, k, dim=-1)
    positive_keys = torch.unique(positive_u.long() * n_items + positive_i.long())
    top_keys = torch.arange(n_users, device=scores.device)[:, None] * n_items + topk_idx
    hits = torch.isin(top_keys, positive_keys).long()
    n_positive = torch.bincount(positive_keys // n_items, minlength=n_users)
    return torch.cat((hits, n_positive[:, None]), dim=1)


# --- ItemKNN full ranking ------------------------------------------------------------------------
# ItemKNN keeps its user x item score matrix in LIL format and slices rows of it for every
# evaluation batch; LIL row slicing made its Amazon-Baby full ranking ~4.5x LightGCN's. The same
# matrix in CSR gives identical scores with fast row slicing.
def _itemknn_scores_in_csr() -> None:
    from recbole.model.general_recommender.itemknn import ItemKNN

    original_init = ItemKNN.__init__
    if getattr(original_init, "_vlm4rec_shim", False):
        return

    def __init__(self: Any, config: Any, dataset: Any) -> None:
        original_init(self, config, dataset)
        self.pred_mat = self.pred_mat.tocsr()

    __init__._vlm4rec_shim = True  # type: ignore[attr-defined]
    ItemKNN.__init__ = __init__
