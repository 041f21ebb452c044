"""Users' top co-occurring users (DRAGON's and DualGNN's user-user graphs), block by block.

The user x user co-occurrence matrix R R^T holds a pair for every two users who share an item:
about sum_i deg(i)^2 pairs, which grows far faster than the interactions (146M pairs, 1.2 GB as
scipy CSR, on the 10k-item synthetic catalogue of benchmarks/bench_scale.py with 0.73M training
interactions). Only each user's ``k`` best are kept, so the matrix is
built for a block of users at a time, each block holding at most ``PAIR_BUDGET`` pairs (a user
whose own pairs exceed it forms a block alone): memory is bounded by the budget and the
``n_users x k`` result, whatever the popularity skew. The time stays ~sum_i deg(i)^2.
``python benchmarks/bench_user_graph.py`` (that catalogue, k = 40): 22 s and +0.57 GB block by
block, 44 s and +9.7 GB as one block, the same lists.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

PAIR_BUDGET = 2**24  # co-occurring pairs per block
BYTES_PER_PAIR = 48  # the block's product, its rows, columns, counts and sort keys (measured ~35)
_SORT_KEY_LIMIT = 2**62  # (rows, count, column) fit one int64 sort key below this


def pair_bounds(binary: sp.csr_matrix) -> np.ndarray:
    """Per user, an upper bound on its co-occurring pairs: the summed degree of its items."""
    item_degree = np.asarray(binary.sum(axis=0), dtype=np.float64).ravel()
    return np.asarray(binary @ item_degree).ravel()


def top_co_occurring_users(interactions: sp.spmatrix, k: int, pair_budget: int = PAIR_BUDGET
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user (rows of the users x items ``interactions``; any nonzero is an interaction), the
    ``k`` other users sharing the most items (ties: lower id first): ``(n_users, k)`` int64 neighbour ids and float32 shared
    counts, zero in the slots past each user's list, and each list's length (int64).

    The same lists as ranking each row of the whole R R^T at once, built a block of users at a
    time (at most ``pair_budget`` pairs per block).
    """
    binary = (sp.csr_matrix(interactions) > 0).astype(np.float32)
    n_users = binary.shape[0]
    item_users = binary.T.tocsr()
    neighbours = np.zeros((n_users, k), dtype=np.int64)
    counts = np.zeros((n_users, k), dtype=np.float32)
    sizes = np.zeros(n_users, dtype=np.int64)
    bounds = np.cumsum(pair_bounds(binary))
    start = 0
    while start < n_users:
        taken = bounds[start - 1] if start else 0.0
        end = max(start + 1, int(np.searchsorted(bounds, taken + pair_budget, side="right")))
        end = min(end, n_users)
        shared = (binary[start:end] @ item_users).tocsr()
        _keep_top(shared, start, k, neighbours[start:end], counts[start:end], sizes[start:end])
        start = end
    return neighbours, counts, sizes


def _keep_top(shared: sp.csr_matrix, first_user: int, k: int, neighbours: np.ndarray,
              counts: np.ndarray, sizes: np.ndarray) -> None:
    """Write each row's top ``k`` other users (count descending, column ascending) into the
    given rows; row r of ``shared`` is user ``first_user + r``."""
    n_columns = shared.shape[1]
    rows = np.repeat(np.arange(shared.shape[0], dtype=np.int64), np.diff(shared.indptr))
    others = shared.indices != rows + first_user  # a user does not neighbour itself
    rows, columns = rows[others], shared.indices[others].astype(np.int64)
    values = shared.data[others].astype(np.int64)  # shared-item counts: whole numbers
    del shared, others
    # one int64 key per pair in the order wanted (row, count descending, column): sorting the
    # keys alone is several times faster than lexsort over three arrays
    top_count = int(values.max(initial=0))
    if len(sizes) * (top_count + 1) * n_columns < _SORT_KEY_LIMIT:
        keys = np.sort((rows * (top_count + 1) + (top_count - values)) * n_columns + columns)
        columns, rest = keys % n_columns, keys // n_columns
        rows, values = rest // (top_count + 1), top_count - rest % (top_count + 1)
        del keys, rest
    else:
        order = np.lexsort((columns, -values, rows))
        rows, columns, values = rows[order], columns[order], values[order]
        del order
    row_sizes = np.bincount(rows, minlength=len(sizes))
    rank = np.arange(len(rows)) - (np.cumsum(row_sizes) - row_sizes)[rows]
    top = rank < k
    neighbours[rows[top], rank[top]] = columns[top]
    counts[rows[top], rank[top]] = values[top]
    sizes[:] = np.minimum(row_sizes, k)
