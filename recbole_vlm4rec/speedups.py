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
    _sparse_topk_hits_in_evaluator()
    _itemknn_scores_in_csr()
    _installed = True


# --- Full-ranking evaluator speed ----------------------------------------------------------------
# Collector.eval_batch_collect marks hits by allocating a dense int matrix the size of the score
# matrix and summing it, per batch: on a 2-core CPU that costs more than the top-k itself (about a
# third of VLM4Rec's whole evaluation at Amazon-Baby scale). We compute the identical "rec.topk"
# tensor (hit flags of the top-k, then the number of distinct positives per user) from the sparse
# positives instead, and let RecBole's own code handle every other metric input.
def topk_hits(scores: Any, positive_u: Any, positive_i: Any, k: int) -> Any:
    """``(n_users, k + 1)`` int64 (as RecBole makes it): top-k hit flags, then #positives."""
    import torch

    n_users, n_items = scores.shape
    if k > n_items:  # torch's own error ("selected index k out of range") names neither
        raise ValueError(f"top-{k} asked for, but the catalogue has only {n_items - 1} items "
                         f"(+ padding): lower topk to at most {n_items - 1}")
    _, topk_idx = torch.topk(scores, k, dim=-1)
    positive_keys = torch.unique(positive_u.long() * n_items + positive_i.long())
    top_keys = torch.arange(n_users, device=scores.device)[:, None] * n_items + topk_idx
    hits = torch.isin(top_keys, positive_keys).long()
    n_positive = torch.bincount(positive_keys // n_items, minlength=n_users)
    return torch.cat((hits, n_positive[:, None]), dim=1)


class _RegisterWithout:
    """A Collector register that reports one key as not needed (we compute it ourselves)."""

    def __init__(self, register: Any, key: str) -> None:
        self._register, self._key = register, key

    def need(self, key: str) -> bool:
        return key != self._key and self._register.need(key)


def _sparse_topk_hits_in_evaluator() -> None:
    from recbole.evaluator.collector import Collector

    original = Collector.eval_batch_collect
    if getattr(original, "_vlm4rec_shim", False):
        return

    def eval_batch_collect(self: Any, scores_tensor: Any, interaction: Any,
                           positive_u: Any, positive_i: Any) -> None:
        if not self.register.need("rec.topk"):
            return original(self, scores_tensor, interaction, positive_u, positive_i)
        hits = topk_hits(scores_tensor, positive_u, positive_i, max(self.topk))
        self.data_struct.update_tensor("rec.topk", hits)
        register, self.register = self.register, _RegisterWithout(self.register, "rec.topk")
        try:
            original(self, scores_tensor, interaction, positive_u, positive_i)
        finally:
            self.register = register

    eval_batch_collect._vlm4rec_shim = True  # type: ignore[attr-defined]
    eval_batch_collect._original = original  # type: ignore[attr-defined]
    Collector.eval_batch_collect = eval_batch_collect


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
