"""Speed-ups of RecBole's full-ranking evaluation and training batches that leave every result
identical.

Not compatibility fixes: each replaces a slow step of RecBole 1.2.1 with one that computes the
same values, checked by an equivalence test in tests/test_speedups.py. This module only computes;
``compat.install()`` puts the functions in RecBole's place (compat.py holds every patch), so
importing it changes nothing.
"""

from __future__ import annotations

from typing import Any


# --- Full-ranking evaluator speed ----------------------------------------------------------------
# Collector.eval_batch_collect marks hits by allocating a dense int matrix the size of the score
# matrix and summing it, per batch: on a 2-core CPU that costs more than the top-k itself (about a
# third of VLM4Rec's whole evaluation at Amazon-Baby scale). :func:`topk_hits` computes the
# identical "rec.topk" tensor (hit flags of the top-k, then the number of distinct positives per
# user) from the sparse positives instead. The evaluator's tie-safe collector (installed by
# compat.install()) calls it with its tie-safe top-k indices.
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
# matrix in CSR gives identical scores with fast row slicing (compat.install() calls this at the
# end of ItemKNN's __init__).
def itemknn_scores_in_csr(model: Any) -> None:
    """Store a built ItemKNN's ``pred_mat`` in CSR."""
    model.pred_mat = model.pred_mat.tocsr()


# --- Training batches ----------------------------------------------------------------------------
# Every training batch is ``dataset[index]`` with ``index`` a numpy array of row positions, and
# Interaction.__getitem__ turns it into a Python list before indexing each field's tensor: torch
# then converts the 2,048-element list again per field, ~3 ms a field on one core (with the
# per-element fetch below, 17% of a SelfCF epoch on the posters export). Indexing with the array itself as a tensor selects the same rows.
def interaction_rows(interaction: Any, index: Any) -> Any:
    """The rows ``index`` (a 1-d integer or boolean numpy array or tensor) of ``interaction``;
    None for any other index (the caller falls back to RecBole's own indexing)."""
    import numpy as np
    import torch
    from recbole.data.interaction import Interaction

    if isinstance(index, np.ndarray):
        if index.ndim != 1 or index.dtype.kind not in "iub":
            return None
        index = torch.from_numpy(index if index.dtype.kind == "b" else index.astype(np.int64))
    elif isinstance(index, torch.Tensor):
        if index.ndim != 1 or (index.dtype != torch.bool and index.is_floating_point()):
            return None
        index = index if index.dtype == torch.bool else index.long()
    else:
        return None
    return Interaction({key: values[index.to(values.device)]
                        for key, values in interaction.interaction.items()})


# RecBole's data loaders hand torch's DataLoader ``list(range(n))`` as the dataset, so every batch
# is the sampler's index list copied element by element (``[dataset[i] for i in batch]``, ~4 ms
# a batch of 2,048 on one core). Positions return the batch's list itself: the same values.
class RowPositions(list):
    """``list(range(n))`` that returns a batch of positions at once (torch's ``__getitems__``)."""

    def __getitems__(self, positions: list) -> list:
        return positions
