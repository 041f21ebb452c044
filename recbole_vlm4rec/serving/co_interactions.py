"""Collaborative neighbours: the items most often interacted with by the same training users.

The behavioural reference the explorer and the audit compare feature neighbourhoods with. For an
item ``i``, ``counts(i)[j]`` is the number of training users who interacted with both ``i`` and
``j`` (``i`` itself counts 0); its top-k, ties ordered by the evaluation's seeded priority, are
the item's co-interaction neighbours.
"""

from __future__ import annotations

import numpy as np

from recbole_vlm4rec.formats.ranking import top_k_by_priority


def _gather(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``indices`` of the CSR rows ``rows``, concatenated (no Python loop over rows)."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    if not lengths.sum():
        return np.zeros(0, np.int64)
    offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return indices[offsets + np.arange(lengths.sum())]


class CoInteractions:
    """Item-item co-interaction counts from a user -> training items CSR."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, n_items: int) -> None:
        self.indptr, self.indices, self.n_items = indptr, indices, n_items
        users = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        order = np.argsort(indices, kind="stable")  # item -> its users (the transpose)
        self.item_users = users[order]
        self.item_indptr = np.zeros(n_items + 1, np.int64)
        np.cumsum(np.bincount(indices, minlength=n_items), out=self.item_indptr[1:])

    def users_of(self, row: int) -> np.ndarray:
        return self.item_users[self.item_indptr[row]:self.item_indptr[row + 1]]

    def counts(self, row: int) -> np.ndarray:
        """``(n_items,)`` users in common with item ``row`` (0 for the item itself)."""
        counts = np.bincount(_gather(self.indptr, self.indices, self.users_of(row)),
                             minlength=self.n_items)
        counts[row] = 0
        return counts

    def top(self, row: int, k: int, priority: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, counts)`` of the ``k`` items most co-interacted with ``row`` (count > 0)."""
        counts = self.counts(row)
        partners = np.flatnonzero(counts)  # usually a few hundred of the catalogue
        best = partners[top_k_by_priority(counts[partners].astype(np.float64), k,
                                          priority[partners])]
        return best, counts[best]
