"""Tie-safe top-k: equal scores are ordered by a seeded random permutation, never by item index.

``torch.topk`` returns tied items lowest index first. RecBole numbers items by first appearance in
the interaction file, which is often popular-first, so a model that scores many items equally (an
item without a feature vector scores 0; a user without a profile scores 0 everywhere) would be
credited with a popularity ranking it never made. Here ties are broken by a per-user priority:

    priority(user, item) = (permutation[item] + offset(user)) mod n_items

``permutation`` is a random permutation of the items drawn from ``seed``; ``offset(user)`` a hash
of the user id and the seed, so each user sees the tied items in a different random order (a model
that knows nothing then ranks at random level for every user, not one shared random list). The
same function orders the evaluation's top-k (run/ranking.py) and serving's top-n (serving/), so
a bundle serves what the run evaluated.

Rows whose top k + 1 scores are all distinct (nearly every row of a trained model) keep
``torch.topk``'s answer, which is then exact (the (k+1)-th score is one max over the row with the
top-k masked, so the common case costs a top-k and a max). In a row with ties only two groups need the priority:
the items above the k-th score (fewer than k, sorted on (score, priority)) and the items *equal* to
the k-th score, of which the highest-priority ones fill the remaining places. A small tie group is
ranked directly; a large one (a user without a profile: every item ties) is walked in priority
order, a few times k items at a time, so it costs about as much as the top-k itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

_USER_HASH = 0x9E3779B1  # Knuth's multiplicative hash constant (2^32 / golden ratio)
_SEED_HASH = 0x85EBCA77


@dataclass
class TopK:
    """Indices of the best ``k`` items per row, best first, plus how ties affected the rows."""

    indices: Any  # torch.LongTensor (n_rows, k)
    all_equal: int  # rows whose unmasked scores are all equal (nothing ranked them)
    tied_at_cutoff: int  # rows whose k-th and (k+1)-th scores tie: the tie-break chose members


@lru_cache(maxsize=8)
def item_permutation(n_items: int, seed: int) -> np.ndarray:
    """``permutation[item]``: a random rank in ``[0, n_items)`` per item, fixed by ``seed``."""
    return np.random.default_rng(int(seed) % 2**63).permutation(n_items).astype(np.int64)


def user_offsets(users: Any, n_items: int, seed: int) -> Any:
    """Per-user rotation of the permutation (same device as ``users``, int64)."""
    mix = (int(seed) % 2**31) * _SEED_HASH
    return ((users.long() + 1) * _USER_HASH + mix) % n_items


def priorities(users: Any, n_items: int, seed: int) -> Any:
    """``(len(users), n_items)`` int64 tie priorities (higher wins)."""
    import torch

    permutation = torch.from_numpy(item_permutation(n_items, seed)).to(users.device)
    return (permutation[None, :] + user_offsets(users, n_items, seed)[:, None]) % n_items


def user_priorities(user: int, n_items: int, seed: int) -> np.ndarray:
    """One user's row of :func:`priorities`, in numpy (serving ranks one query without torch)."""
    mix = (int(seed) % 2**31) * _SEED_HASH
    offset = ((int(user) + 1) * _USER_HASH + mix) % n_items
    return (item_permutation(n_items, seed) + offset) % n_items


def top_k_by_priority(scores: np.ndarray, k: int, priority: np.ndarray) -> np.ndarray:
    """Indices of the ``k`` best scores of one row, best first, equal scores ordered by higher
    ``priority``: :func:`tie_safe_topk`'s answer for that row, in numpy, with masked items
    (``-inf``) left out rather than returned last."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, np.int64)
    cutoff = np.partition(scores, len(scores) - k)[len(scores) - k]
    candidates = np.flatnonzero(scores >= cutoff)
    order = np.lexsort((-priority[candidates], -scores[candidates]))
    chosen = candidates[order[:k]]
    return chosen[scores[chosen] > -np.inf]


def tie_safe_topk(scores: Any, k: int, users: Any, seed: int) -> TopK:
    """Top-``k`` item indices of each row of ``scores`` (``(n_rows, n_items)``, masked items at
    -inf), ties ordered by :func:`priorities` of ``users`` (one id per row)."""
    import torch

    n_rows, n_items = scores.shape
    k = min(k, n_items)
    values, indices = torch.topk(scores, k, dim=-1)
    following = _best_outside(scores, indices, values)  # the (k+1)-th score of each row
    at_cutoff = values[:, -1] == following
    tied = ((values[:, 1:] == values[:, :-1]).any(dim=1) | at_cutoff).nonzero().flatten()
    if not len(tied):
        return TopK(indices, 0, 0)
    users = users.to(scores.device)[tied].long()
    ranked, all_equal = _rank_tied_rows(_rows(scores, tied), values[tied], indices[tied], k,
                                        users, seed)
    indices = indices.clone()
    indices[tied] = ranked
    tied_at_cutoff = int((at_cutoff & (values[:, -1] > -torch.inf)).sum())
    return TopK(indices, all_equal, tied_at_cutoff)


def _best_outside(scores: Any, indices: Any, values: Any) -> Any:
    """Each row's best score outside ``indices``: the top-k's own positions are set to -inf in
    place for one max and restored (cheaper than a top-(k+1), which costs ~40% more than a
    top-k on CPU, or than a masked copy of the matrix)."""
    import torch

    if indices.shape[1] == scores.shape[1]:
        return torch.full_like(values[:, 0], -torch.inf)
    if not scores.is_contiguous() or scores.requires_grad:
        return scores.scatter(1, indices, -torch.inf).amax(dim=1)
    scores.scatter_(1, indices, -torch.inf)
    try:
        return scores.amax(dim=1)
    finally:
        scores.scatter_(1, indices, values)


def _rank_tied_rows(rows: Any, values: Any, top: Any, k: int, users: Any,
                    seed: int) -> tuple[Any, int]:
    """``(n, k)`` indices for rows with a tie; ``(values, top)`` are their plain top-k."""
    import torch

    n_items = rows.shape[1]
    device = rows.device
    permutation = torch.from_numpy(item_permutation(n_items, seed)).to(device)
    offsets = user_offsets(users, n_items, seed)
    cutoff = values[:, k - 1]
    above = values > cutoff[:, None]  # certainly in the top-k, whatever the tie-break
    n_above = above.sum(dim=1)
    # 1. the items above the cut-off: sort on (score, priority), both descending
    priority = (permutation[top] + offsets[:, None]) % n_items
    order = torch.sort(torch.where(above, priority, -1), dim=1, descending=True, stable=True)[1]
    by_score = torch.gather(values, 1, order)
    order = torch.gather(order, 1, torch.sort(by_score, dim=1, descending=True, stable=True)[1])
    ranked = torch.gather(top, 1, order)  # columns < n_above are final
    # 2. the tie group at the cut-off fills columns n_above .. k-1 in priority order. A row whose
    # whole top-k ties (a user without a profile) likely has a group that is a large share of the
    # row: it walks a few times k items deep in priority order, which fills it. Other rows (Pop:
    # a few equal counts at the cut-off) and rows the walk left short have a smaller group,
    # ranked directly (measured: a walk deep enough for a mid-size group costs more than sorting
    # its members)
    needed = k - n_above
    walk = (n_above == 0).nonzero().flatten()
    left, not_flat = _fill_by_priority_walk(ranked, rows, cutoff, walk, n_above, needed,
                                            permutation, offsets, min(n_items, 8 * k + 64))
    left = torch.cat(((n_above > 0).nonzero().flatten(), left)).sort().values
    if len(left):
        _fill_from_groups(ranked, rows, cutoff, left, n_above, needed, permutation, offsets)
    # all-equal rows: the best score is the cut-off and no finite score is below it
    candidate = (values[:, 0] == cutoff) & (cutoff > -torch.inf)  # only walked rows (n_above 0)
    candidate[not_flat] = False
    flat = candidate.nonzero().flatten()
    lowest = torch.nan_to_num(_rows(rows, flat), neginf=torch.inf).amin(dim=1)  # masked: ignored
    all_equal = int((lowest == cutoff[flat]).sum())
    return ranked, all_equal


def _rows(matrix: Any, which: Any) -> Any:
    """``matrix[which]`` without copying the whole matrix when ``which`` is every row in order
    (``which`` holds distinct rows: sorted and as long as the matrix means every row)."""
    if len(which) == len(matrix) and bool((which[1:] > which[:-1]).all()):
        return matrix
    return matrix[which]


def _place(ranked: Any, row: Any, column: Any, item: Any) -> None:
    ranked[row, column] = item


def _fill_from_groups(ranked: Any, rows: Any, cutoff: Any, which: Any, n_above: Any,
                      needed: Any, permutation: Any, offsets: Any) -> None:
    """Rank the tie groups of rows ``which`` directly: their members' priorities, sorted."""
    import torch

    n_items = rows.shape[1]
    local, item = (_rows(rows, which) == cutoff[which, None]).nonzero(as_tuple=True)
    row = which[local]
    priority = (permutation[item] + offsets[row]) % n_items
    order = torch.argsort(row * n_items + (n_items - 1 - priority))
    row, item = row[order], item[order]
    first = torch.searchsorted(row, row, right=False)
    rank = torch.arange(len(row), device=row.device) - first
    keep = rank < needed[row]
    _place(ranked, row[keep], n_above[row[keep]] + rank[keep], item[keep])


def _fill_by_priority_walk(ranked: Any, rows: Any, cutoff: Any, which: Any, n_above: Any,
                           needed: Any, permutation: Any, offsets: Any,
                           width: int) -> tuple[Any, Any]:
    """Walk rows ``which`` in priority order (items ``inverse[(start - t) mod n]``, t < ``width``),
    keeping the first tie-group members met. Returns the rows the window did not fill and the
    rows whose window met a finite score below the cut-off (so not all-equal)."""
    import torch

    n_items = rows.shape[1]
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(n_items, device=permutation.device)
    steps = torch.arange(width, device=rows.device)
    position = (n_items - 1 - offsets[which])[:, None] - steps[None, :]  # in (-n, n)
    items = inverse[torch.where(position < 0, position + n_items, position)]
    met = torch.gather(_rows(rows, which), 1, items)
    member = met == cutoff[which, None]
    count = member.cumsum(dim=1)
    done = count[:, -1] >= needed[which]
    take = member & (count <= needed[which, None]) & done[:, None]
    local, step = take.nonzero(as_tuple=True)
    row = which[local]
    _place(ranked, row, n_above[row] + count[local, step] - 1, items[local, step])
    lower = ((met < cutoff[which, None]) & (met > -torch.inf)).any(dim=1)
    return which[~done], which[lower]
