"""Building blocks shared by the graph and content models: sparse graphs and an evaluation cache.

Everything here is built once from the training split in a model's ``__init__``; nothing reads
files. Node order of the user-item graph is users ``0..n_users-1`` then items (RecBole's padding
user 0 and item 0 have no edges).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F


def to_torch_sparse(matrix: sp.spmatrix) -> torch.Tensor:
    """A torch CSR tensor (on CPU, sparse.mm with CSR is about 2x faster than with COO)."""
    csr = sp.csr_matrix(matrix, dtype=np.float32)
    csr.sort_indices()
    with warnings.catch_warnings():  # "CSR support is in beta": sparse.mm with CSR is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(csr.indptr.astype(np.int64)),
            torch.from_numpy(csr.indices.astype(np.int64)),
            torch.from_numpy(csr.data), size=csr.shape, check_invariants=False,
        )


def user_item_adjacency(interactions: sp.spmatrix, normalization: str = "symmetric",
                        self_loops: bool = False) -> sp.csr_matrix:
    """``(n_users + n_items)^2`` bipartite adjacency of a binary ``(n_users, n_items)`` matrix.

    ``symmetric``: D^-1/2 A D^-1/2 (LightGCN / FREEDOM); ``mean``: D^-1 A, i.e. each node averages
    its neighbours (MMGCN's mean aggregation). ``self_loops``: A + I before normalising (LATTICE's
    D^-1 (A + I)).
    """
    n_users, n_items = interactions.shape
    binary = (interactions.tocsr() > 0).astype(np.float32)
    adjacency = sp.bmat([[None, binary], [binary.T, None]], format="csr")
    if self_loops:
        adjacency = (adjacency + sp.eye(n_users + n_items, dtype=np.float32)).tocsr()
    if normalization == "symmetric":
        return symmetric_normalize(adjacency)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        if normalization == "mean":
            return (sp.diags(np.where(degree > 0, 1.0 / degree, 0.0)) @ adjacency).tocsr()
    raise ValueError(f"unknown normalization {normalization!r}: symmetric or mean")


def knn_item_graph(features: np.ndarray, has_vector: np.ndarray, k: int,
                   chunk: int = 2048, weighted: bool = False) -> sp.csr_matrix:
    """Symmetrically normalised kNN graph on cosine similarity (FREEDOM / LATTICE's item graph).

    Each item with a vector links to its ``k`` most similar items with a vector (itself included,
    as in MMRec); items without a vector have no edges, so they get no neighbours' signal. Edge
    weights are 1, or the cosine similarity with ``weighted`` (SMORE's graphs); rows whose weights
    sum to <= 0 stay empty.
    """
    n_items = features.shape[0]
    covered = np.flatnonzero(has_vector)
    k = min(k, len(covered))
    if k == 0:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    neighbours, similarities = knn_neighbours(torch.from_numpy(features[covered]), k, chunk)
    columns = covered[neighbours.numpy().ravel()]
    rows = np.repeat(covered, k)
    values = (similarities.numpy().ravel() if weighted
              else np.ones(len(rows), dtype=np.float32))
    graph = sp.csr_matrix((values, (rows, columns)), shape=(n_items, n_items))
    return symmetric_normalize(graph)


def knn_neighbours(vectors: torch.Tensor, k: int,
                   chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, k)`` indices of each row's ``k`` most cosine-similar rows (itself included) and
    those cosines; computed ``chunk`` rows at a time, without gradient."""
    with torch.no_grad():
        unit = F.normalize(vectors, dim=1)
        neighbours, similarities = [], []
        for start in range(0, len(unit), chunk):
            top = torch.topk(unit[start:start + chunk] @ unit.T, k, dim=1)
            neighbours.append(top.indices)
            similarities.append(top.values)
    return torch.cat(neighbours), torch.cat(similarities)


def symmetric_normalize(matrix: sp.spmatrix) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 by row degree; rows without edges stay zero."""
    degree = np.asarray(matrix.sum(axis=1)).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(degree > 0, degree ** -0.5, 0.0)
    return (sp.diags(scale) @ matrix @ sp.diags(scale)).tocsr()


def elementwise_max_union(graphs: list[sp.spmatrix]) -> sp.csr_matrix:
    """One graph with the union of the edges; an edge in several graphs keeps its largest weight
    (SMORE's max-pooled fusion graph; an edge absent from a graph is not a 0 there)."""
    coos = [sp.coo_matrix(graph) for graph in graphs]
    n_rows, n_cols = coos[0].shape
    keys = np.concatenate([coo.row.astype(np.int64) * n_cols + coo.col for coo in coos])
    values = np.concatenate([coo.data for coo in coos])
    order = np.lexsort((-values, keys))  # per key, the largest value first
    keys, values = keys[order], values[order]
    first = np.r_[True, keys[1:] != keys[:-1]]
    keys, values = keys[first], values[first]
    return sp.csr_matrix((values.astype(np.float32), (keys // n_cols, keys % n_cols)),
                         shape=(n_rows, n_cols))


class _SparseMatmul(torch.autograd.Function):
    """``matrix @ dense`` whose backward multiplies by a transpose built once.

    torch's own backward of a CSR product re-transposes the matrix (a conversion and a sort) on
    every call; for the fixed graphs here the transpose is known in advance.
    """

    @staticmethod
    def forward(ctx: Any, matrix: torch.Tensor, transpose: torch.Tensor,
                dense: torch.Tensor) -> torch.Tensor:
        ctx.transpose = transpose
        return torch.sparse.mm(matrix, dense)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, torch.sparse.mm(ctx.transpose, grad)


class _FixedFeatureProduct(torch.autograd.Function):
    """``features @ weights`` for a constant (n_items x feature_dim) matrix: the weights' gradient
    ``features^T @ grad`` is taken as ``(grad^T @ features)^T``, the layout in which the matrix
    library streams the tall feature matrix fastest (measured ~25% faster than autograd's
    ``features.T @ grad`` for 7,051 x 4,096 features and 68 columns, one thread)."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(features)
        return features @ weights

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        (features,) = ctx.saved_tensors
        return None, (grad.T @ features).T


def fixed_feature_product(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``features @ weights`` for a feature matrix that is not trained (a buffer)."""
    if features.requires_grad or not weights.requires_grad:
        return features @ weights
    return _FixedFeatureProduct.apply(features, weights)


def sparse_matmul(matrix: torch.Tensor, dense: torch.Tensor,
                  transpose: torch.Tensor | None = None) -> torch.Tensor:
    """``matrix @ dense`` for a constant sparse ``matrix``; ``transpose`` = its transpose, or None
    when it is symmetric (the normalised user-item adjacency)."""
    if not dense.requires_grad:
        return torch.sparse.mm(matrix, dense)
    return _SparseMatmul.apply(matrix, matrix if transpose is None else transpose, dense)


def lightgcn_mean(adjacency: torch.Tensor, embeddings: torch.Tensor, n_layers: int,
                  transpose: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``embeddings`` and its ``n_layers`` propagations over ``adjacency`` (LightGCN);
    ``transpose``: the adjacency's transpose when it is not symmetric."""
    total, layer = embeddings, embeddings
    for _ in range(n_layers):
        layer = sparse_matmul(adjacency, layer, transpose)
        total = total + layer
    return total / (n_layers + 1)


def log_sum_exp_rows(cosines_over_temperature: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-wise log-sum-exp of cosine similarities divided by ``temperature``.

    Cosines are in [-1, 1], so for temperatures >= 0.02 the plain exp cannot overflow float32 and
    the max-shift of ``torch.logsumexp`` (two more passes over a batch x candidates matrix, and
    its backward) is not needed.
    """
    if temperature >= 0.02:
        return cosines_over_temperature.exp().sum(dim=1).log()
    return torch.logsumexp(cosines_over_temperature, dim=1)


def in_batch_info_nce(view: torch.Tensor, other: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Mean over rows of -log softmax of (view_r, other_r) among (view_r, other_s) in the batch
    (cosine / ``temperature``; SMORE's and MGCN's contrast between side and behavioural views)."""
    view, other = F.normalize(view, dim=1) / temperature, F.normalize(other, dim=1)
    positive = (view * other).sum(dim=1)
    return (log_sum_exp_rows(view @ other.T, temperature) - positive).mean()


def repeated_rows_info_nce(view: torch.Tensor, other: torch.Tensor, counts: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """``in_batch_info_nce`` of a batch whose rows repeat, from each distinct row once:
    ``view`` / ``other`` hold the distinct rows, ``counts`` how often each occurs in the batch.

    A repeated row is that many equal columns of every row's softmax and that many equal terms
    of the mean: sum_s exp(v_r . o_s) = sum_u c_u exp(v_r . o_u) = sum_u exp(v_r . o_u + ln c_u),
    i.e. products of [v_r, 1] and [o_u, ln c_u]. The same value and gradients in (distinct
    rows)^2 products instead of batch^2 (SMORE's items: ~1,450 distinct of 2,048), blocked
    (log_sum_exp_of_products) rather than a batch x batch matrix and its gradient.
    """
    view, other = F.normalize(view, dim=1) / temperature, F.normalize(other, dim=1)
    positive = (view * other).sum(dim=1)
    weights = counts.to(view.dtype)
    queries = torch.cat([view, torch.ones_like(positive).unsqueeze(1)], dim=1)
    keys = torch.cat([other, weights.log().unsqueeze(1)], dim=1)
    bound = 1.0 / temperature + float(weights.sum().log())
    log_sums = log_sum_exp_of_products(queries, keys, max_abs_product=bound)
    return (weights * (log_sums - positive)).sum() / weights.sum()


def sigmoid_gate(size: int) -> torch.nn.Module:
    """x -> sigmoid(W x + b), ``size`` -> ``size`` (SMORE's and MGCN's gates)."""
    return torch.nn.Sequential(torch.nn.Linear(size, size), torch.nn.Sigmoid())


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


def degree_sensitive_edge_sample(interactions: sp.spmatrix, keep_ratio: float) -> sp.csr_matrix:
    """FREEDOM's denoising: keep ``keep_ratio`` of the user-item edges, sampled without replacement
    with probability proportional to 1 / sqrt(d_u d_i) (edges between popular nodes go first);
    returns the symmetric-normalised adjacency of the kept edges. Uses torch's global RNG."""
    coo = (interactions.tocoo() > 0).tocoo()
    degree_u = np.asarray(coo.sum(axis=1)).ravel()
    degree_i = np.asarray(coo.sum(axis=0)).ravel()
    weights = 1.0 / np.sqrt(degree_u[coo.row] * degree_i[coo.col])
    n_keep = max(int(len(weights) * keep_ratio), 1)
    kept = torch.multinomial(torch.from_numpy(weights), n_keep, replacement=False).numpy()
    kept_edges = sp.csr_matrix((np.ones(n_keep, dtype=np.float32), (coo.row[kept], coo.col[kept])),
                               shape=coo.shape)
    return user_item_adjacency(kept_edges, normalization="symmetric")


class CachedDotProductScores(EvaluationCache):
    """Mixin for models whose ``forward()`` returns all ``(users, items)`` representations and
    score = their dot product: ``predict`` / ``full_sort_predict`` from one cached forward pass."""

    USER_ID: str
    ITEM_ID: str

    def predict(self, interaction: Any) -> torch.Tensor:
        users, items = self.cached_forward()
        return (users[interaction[self.USER_ID]] * items[interaction[self.ITEM_ID]]).sum(dim=1)

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        users, items = self.cached_forward()
        return (users[interaction[self.USER_ID]] @ items.T).reshape(-1)


def register_feature_buffers(module: torch.nn.Module, features: Any) -> None:
    """``feature_<k>``: each aligned feature matrix as a non-persistent buffer (follows .to(device),
    stays out of checkpoints: the dataset owns the data)."""
    for index, feature in enumerate(features):
        module.register_buffer(f"feature_{index}", torch.from_numpy(feature.matrix),
                               persistent=False)


class FeatureTables(torch.nn.Module):
    """The item feature matrices a model reads, fixed or fine-tuned.

    ``trainable``: each matrix is a parameter initialised from a copy of the dataset's (MMRec's
    ``nn.Embedding.from_pretrained(..., freeze=False)``: Adam updates the features; they are saved
    in checkpoints). Otherwise non-persistent buffers: they follow ``.to(device)`` and stay out of
    checkpoints (the dataset owns the data).
    """

    def __init__(self, features: Any, trainable: bool) -> None:
        super().__init__()
        self.trainable = trainable
        self.count = len(features)
        if trainable:
            self.tables = torch.nn.ParameterList(
                torch.nn.Parameter(torch.from_numpy(feature.matrix.copy())) for feature in features)
        else:
            for index, feature in enumerate(features):
                self.register_buffer(f"table_{index}", torch.from_numpy(feature.matrix),
                                     persistent=False)

    def __len__(self) -> int:
        return self.count

    def table(self, index: int) -> torch.Tensor:
        """Feature ``index``'s whole ``(n_items, dim)`` matrix."""
        return self.tables[index] if self.trainable else getattr(self, f"table_{index}")

    def rows(self, index: int, items: torch.Tensor) -> torch.Tensor:
        """Feature ``index``'s rows of ``items``."""
        return self.table(index)[items]


# Keys per block of log_sum_exp_of_products: a batch of 2048 queries x 64 keys is 512 KB of
# float32, a core's L2 cache on the AMD EPYC development machine, so the block stays there between
# the product, the exp and the sum (measured ~10% faster than 2 MB blocks, which only fit L3).
_PRODUCT_BLOCK_ELEMENTS = 2048 * 64
_LOG2_E = 1.4426950408889634  # exp(x) = 2^(x log2 e): torch's exp2 is ~3x faster than its exp


class _LogSumExpOfProducts(torch.autograd.Function):
    """``log sum_j exp(q_i . k_j)`` per query, in blocks of keys, recomputed in backward
    (keeping the exponentials for backward was measured slower: hundreds of MB written and read
    back, page-faulted every step).

    The direct formula materialises (and autograd keeps) a queries x keys matrix, its exp and their
    gradients: several passes over hundreds of MB per step when the keys are a whole catalogue.
    Here each block of products lives only while it is used; backward recomputes it and turns it
    into the softmax weights in place. Products are taken in base 2 (queries scaled by log2 e), so
    the exps are exp2; the products with few columns are laid out so that the matrix library
    streams the large operand once (``k.T @ w.T``, ``q.T @ w``: several times faster than
    ``w @ k`` and ``w.T @ q`` when keys have a handful of columns).
    """

    @staticmethod
    def forward(ctx: Any, queries: torch.Tensor, keys: torch.Tensor, shifted: bool) -> torch.Tensor:
        block = max(1, _PRODUCT_BLOCK_ELEMENTS // max(len(queries), 1))
        scaled = queries * _LOG2_E
        shift = None
        if shifted:  # products may overflow exp: subtract each row's maximum (an extra pass)
            shift = scaled.new_full((len(queries), 1), -torch.inf)
            for start in range(0, len(keys), block):
                products = scaled @ keys[start:start + block].T
                shift = torch.maximum(shift, products.amax(dim=1, keepdim=True))
            shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        total = scaled.new_zeros(len(queries))
        for start in range(0, len(keys), block):
            products = scaled @ keys[start:start + block].T
            if shift is not None:
                products.sub_(shift)
            total += products.exp2_().sum(dim=1)
        # the shifted sums and the shift: backward's softmax is exp2(p_ij - shift_i) / total_i
        ctx.save_for_backward(scaled, keys, total, shift if shift is not None else total[:0])
        ctx.block = block
        log2_sums = total.log2() if shift is None else total.log2().add_(shift.squeeze(1))
        return log2_sums / _LOG2_E

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        scaled, keys, total, shift = ctx.saved_tensors
        want_queries, want_keys, _ = ctx.needs_input_grad
        # d result_i / d products_ij = softmax_ij = w_ij / total_i with w_ij = exp2(scaled
        # product - shift_i); times the incoming gradient: s_i w_ij with s_i = grad_i / total_i.
        # dq_i = s_i sum_j w_ij k_j and dk_j = sum_i w_ij (s_i q_i): the row scale goes on the
        # few-column operands, not on a pass over the weights.
        row_scale = (grad / total).unsqueeze(1)
        grad_queries_t = scaled.new_zeros(scaled.shape[1], len(scaled)) if want_queries else None
        grad_keys = torch.empty_like(keys) if want_keys else None
        scaled_queries_t = (scaled * (row_scale / _LOG2_E)).T
        for start in range(0, len(keys), ctx.block):
            block_keys = keys[start:start + ctx.block]
            weights = scaled @ block_keys.T
            if shift.numel():
                weights.sub_(shift)
            weights.exp2_()
            if grad_queries_t is not None:
                grad_queries_t.addmm_(block_keys.T, weights.T)
            if grad_keys is not None:
                grad_keys[start:start + ctx.block] = (scaled_queries_t @ weights).T
        grad_queries = grad_queries_t.T * row_scale if grad_queries_t is not None else None
        return grad_queries, grad_keys, None


def log_sum_exp_of_products(queries: torch.Tensor, keys: torch.Tensor,
                            max_abs_product: float | None = None) -> torch.Tensor:
    """``torch.logsumexp(queries @ keys.T, dim=1)`` without the queries x keys matrix (the same
    values and gradients up to float rounding).

    ``max_abs_product``: a known bound on ``|q_i . k_j|`` (1 / temperature for cosines over a
    temperature). Up to 60 the plain exp cannot overflow or underflow float32 and the row
    maximum's extra pass is skipped (as in ``log_sum_exp_rows``); otherwise it is subtracted.
    """
    shifted = max_abs_product is None or max_abs_product > 60
    return _LogSumExpOfProducts.apply(queries, keys, shifted)
