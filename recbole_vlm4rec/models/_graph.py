"""Building blocks shared by the graph and content models: sparse graphs and an evaluation cache.

Everything here is built once from the training split in a model's ``__init__``; nothing reads
files. Node order of the user-item graph is users ``0..n_users-1`` then items (RecBole's padding
user 0 and item 0 have no edges).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F


def to_torch_sparse(matrix: sp.spmatrix) -> torch.Tensor:
    coo = matrix.tocoo().astype(np.float32)
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data), coo.shape).coalesce()


def user_item_adjacency(interactions: sp.spmatrix, normalization: str = "symmetric") -> sp.csr_matrix:
    """``(n_users + n_items)^2`` bipartite adjacency of a binary ``(n_users, n_items)`` matrix.

    ``symmetric``: D^-1/2 A D^-1/2 (LightGCN / FREEDOM); ``mean``: D^-1 A, i.e. each node averages
    its neighbours (MMGCN's mean aggregation).
    """
    n_users, n_items = interactions.shape
    binary = (interactions.tocsr() > 0).astype(np.float32)
    adjacency = sp.bmat([[None, binary], [binary.T, None]], format="csr",
                        shape=(n_users + n_items, n_users + n_items))
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        if normalization == "symmetric":
            scale = np.where(degree > 0, degree ** -0.5, 0.0)
            return (sp.diags(scale) @ adjacency @ sp.diags(scale)).tocsr()
        if normalization == "mean":
            return (sp.diags(np.where(degree > 0, 1.0 / degree, 0.0)) @ adjacency).tocsr()
    raise ValueError(f"unknown normalization {normalization!r}: symmetric or mean")


def knn_item_graph(features: np.ndarray, has_vector: np.ndarray, k: int,
                   chunk: int = 2048) -> sp.csr_matrix:
    """Symmetrically normalised kNN graph on cosine similarity (FREEDOM / LATTICE's item graph).

    Each item with a vector links to its ``k`` most similar items with a vector (itself included,
    as in MMRec); items without a vector have no edges, so they get no neighbours' signal.
    """
    n_items = features.shape[0]
    covered = np.flatnonzero(has_vector)
    k = min(k, len(covered))
    if k == 0:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    unit = F.normalize(torch.from_numpy(features[covered]), dim=1)
    neighbours = []
    for start in range(0, len(covered), chunk):
        similarity = unit[start:start + chunk] @ unit.T
        neighbours.append(torch.topk(similarity, k, dim=1).indices)
    columns = covered[torch.cat(neighbours).numpy().ravel()]
    rows = np.repeat(covered, k)
    graph = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)),
                          shape=(n_items, n_items))
    degree = np.asarray(graph.sum(axis=1)).ravel()
    scale = np.where(degree > 0, np.power(np.maximum(degree, 1e-12), -0.5), 0.0)
    return (sp.diags(scale) @ graph @ sp.diags(scale)).tocsr()


class EvaluationCache:
    """Mixin: full-ranking evaluation reuses one forward pass until the model trains again.

    The graph models' representations depend on every parameter, so they are computed once per
    evaluation (not once per batch of users); ``train()`` (each epoch's start) drops the cache.
    """

    _cached: Any = None

    def train(self, mode: bool = True) -> Any:
        self._cached = None
        return super().train(mode)  # type: ignore[misc]

    def cached_forward(self) -> Any:
        if self.training:  # type: ignore[attr-defined]
            return self.forward()  # type: ignore[attr-defined]
        if self._cached is None:
            with torch.no_grad():
                self._cached = self.forward()  # type: ignore[attr-defined]
        return self._cached
