r"""EASE restricted to each item's top-k neighbours: memory linear in the catalogue.

Dense EASE (Steck 2019) solves, for every item j, the ridge regression of column j of X on all
other columns: B_{-j,j} = (G_{-j,-j} + lambda I)^-1 G_{-j,j}, G = X^T X (+ alpha F F^T, the
semantic prior), which is what ``I - P diag(1/diag P)`` with ``P = (G + lambda I)^-1`` computes
at once, at |I|^2 memory and |I|^3 time. Here column j regresses on its ``k`` neighbours N(j) only
(the items with the largest G_{ij}, j excluded):

    B_{N(j),j} = (G_{N(j),N(j)} + lambda I)^-1 G_{N(j),j},  every other B_{ij} = 0,

so B has k entries per column and costs |I| k^3 / 3 multiplications. G is never held whole: its
columns are computed in blocks (a sparse product), each column's top k are kept, and the entries
between neighbours are read from that sparse top-k Gram (symmetrised; a pair of neighbours that is
in neither one's top k counts as 0: the approximation beyond the restriction, see
docs/performance.md for its measured effect). With k >= |I| - 1 every item is a neighbour and the
result is dense EASE's.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

GRAM_BLOCK = 512  # Gram columns computed at once: |I| x GRAM_BLOCK floats
SOLVE_BYTES = 2**26  # the k x k systems solved in one batched call take at most this (float64)


def topk_ease(history: sp.csr_matrix, reg_weight: float, k: int,
              content: torch.Tensor | None = None, semantic_weight: float = 0.0) -> sp.csr_matrix:
    """The ``(n_items, n_items)`` sparse B of top-``k`` EASE (see the module docstring); item 0
    (RecBole's padding) has no interactions and gets no weights. ``content``: the unit feature
    rows F of the semantic prior alpha F F^T (alpha = ``semantic_weight``)."""
    n_items = history.shape[1]
    k = max(min(k, n_items - 1), 1)
    semantic = content.double() if semantic_weight and content is not None else None
    binary = history.astype(np.float64)
    item_rows, user_columns = binary.T.tocsr(), binary.tocsc()
    neighbours = np.empty((n_items, k), dtype=np.int64)
    gram_rows, gram_cols, gram_vals = [], [], []
    diagonal = np.asarray(binary.multiply(binary).sum(axis=0)).ravel()
    if semantic is not None:
        diagonal = diagonal + semantic_weight * (semantic ** 2).sum(dim=1).numpy()
    for start in range(0, n_items, GRAM_BLOCK):
        block = np.arange(start, min(start + GRAM_BLOCK, n_items))
        # (block, n_items), each row contiguous: the selection below runs along rows
        gram = (item_rows[block] @ user_columns).toarray()
        if semantic is not None:
            gram += semantic_weight * (semantic[block] @ semantic.T).numpy()
        gram[np.arange(len(block)), block] = -np.inf  # j is not its own neighbour
        # sorted ids: the lookups below then search in increasing order (~3x faster)
        top = np.sort(np.argpartition(-gram, k - 1, axis=1)[:, :k], axis=1)  # (block, k)
        neighbours[block] = top
        gram_rows.append(np.repeat(block, k))
        gram_cols.append(top.ravel())
        gram_vals.append(np.take_along_axis(gram, top, axis=1).ravel())
    # the symmetric top-k Gram as sorted (row * n + col) keys for vectorised lookups
    keys = np.concatenate([np.concatenate(gram_rows) * n_items + np.concatenate(gram_cols),
                           np.concatenate(gram_cols) * n_items + np.concatenate(gram_rows)])
    values = np.concatenate([np.concatenate(gram_vals)] * 2)
    keys, first = np.unique(keys, return_index=True)
    values = values[first]
    del gram_rows, gram_cols, gram_vals

    weights = np.empty((n_items, k), dtype=np.float64)
    solve_block = max(SOLVE_BYTES // (k * k * 8), 1)
    for start in range(0, n_items, solve_block):
        block = np.arange(start, min(start + solve_block, n_items))
        near = neighbours[block]  # (b, k)
        pairs = near[:, :, None] * n_items + near[:, None, :]  # (b, k, k)
        systems, found = _lookup(keys, values, pairs)
        if semantic is not None:  # a pair absent from the top-k Gram still has its exact content part
            rows = semantic[torch.from_numpy(near)]
            exact = semantic_weight * torch.bmm(rows, rows.transpose(1, 2)).numpy()
            systems = np.where(found, systems, exact)
        index = np.arange(k)
        systems[:, index, index] = diagonal[near] + reg_weight
        targets = _lookup(keys, values, near * n_items + block[:, None])[0]
        solved = torch.linalg.solve(torch.from_numpy(systems), torch.from_numpy(targets)[..., None])
        weights[block] = solved[..., 0].numpy()
    weights[diagonal[neighbours] == 0] = 0.0  # padding / items nobody has: no evidence
    return sp.csr_matrix((weights.ravel(), (neighbours.ravel(), np.repeat(np.arange(n_items), k))),
                         shape=(n_items, n_items))


def _lookup(keys: np.ndarray, values: np.ndarray,
            wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values at ``wanted`` keys (0 where a key is absent) and where they were found."""
    flat = wanted.ravel()
    position = np.minimum(np.searchsorted(keys, flat), len(keys) - 1)
    found = keys[position] == flat
    return (np.where(found, values[position], 0.0).reshape(wanted.shape),
            found.reshape(wanted.shape))
