r"""AttributeKNN: item-kNN on structured-description attribute tokens, blended with CF item-kNN.

References:
    Badrul Sarwar, George Karypis, Joseph Konstan, John Riedl. "Item-Based Collaborative Filtering
    Recommendation Algorithms." WWW 2001 (item-kNN).
    Do Recommender Systems Really Leverage Multimodal Content? arXiv:2508.04571 (structured LVLM
    descriptions used as item side content).

``item_feature`` names an attribute feature: the multi-hot ``<slot>=<phrase>`` tokens written by
``vlm4rec encode --modality slots`` from a structured descriptions file (any non-negative item x
attribute matrix works). With X the training interactions and A the attribute matrix:

* attribute similarity: tokens weighted by idf_t = log(N / df_t) (``attribute_weighting: tfidf``;
  ``binary`` keeps 0/1), rows L2-normalised: S_attr = cos(A_i, A_j);
* collaborative similarity (RecBole's ItemKNN cosine): S_cf(i, j) = c_ij / (sqrt(n_i n_j) +
  ``shrink``), c_ij the number of users with both items, n_i the item's training count;
* each item keeps its ``knn_k`` most similar items under each similarity, then
  S = (1 - beta) S_cf + beta S_attr (beta = ``attribute_weight``), diagonal excluded;
* score(u, j) = sum_{i in H(u)} S(i, j): a history item votes for its neighbours.

An item nobody has interacted with has no collaborative neighbours but keeps its attribute ones, so
it is still recommended to users who consumed items with the same slots. Items without attribute
tokens have no attribute neighbours (counted in the log). Nothing is trained (one pass).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType

from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models._graph import to_torch_sparse
from recbole_vlm4rec.models import _memory
from recbole_vlm4rec.models.contract import (ITEM_FEATURE_KEY, Capabilities, Features,
                                             ModelContract, Setting)
from recbole_vlm4rec.models.features import require_item_feature

WEIGHTINGS = ("tfidf", "binary")


@register_model
class AttributeKNN(GeneralRecommender):
    r"""Item-kNN over attribute tokens blended with CF item-kNN (see the module docstring)."""

    input_type = InputType.POINTWISE
    type = ModelType.TRADITIONAL
    contract = ModelContract(
        memory_estimate=_memory.attribute_knn,
        settings=(
            Setting("attribute_weight", float, "beta: weight of the attribute similarity (0 = "
                    "RecBole's ItemKNN cosine, 1 = attributes only)", minimum=0, maximum=1),
            Setting("attribute_weighting", str, "tfidf: tokens weighted by log(N / document "
                    "frequency); binary: 0/1", choices=WEIGHTINGS),
            Setting("knn_k", int, "neighbours kept per item under each similarity", minimum=1),
            Setting("shrink", float, "added to the CF cosine's denominator (RecBole ItemKNN's "
                    "shrink)", minimum=0),
        ),
        features=Features(ITEM_FEATURE_KEY, doc="attribute counts: `vlm4rec encode <dataset> "
                          "--modality slots --descriptions <structured tag>`"),
        capabilities=Capabilities(scores_new_items=True),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.knn_k = int(config["knn_k"])
        self.attribute_weight = float(config["attribute_weight"])
        weighting = config["attribute_weighting"]
        feature = require_item_feature(config, dataset, config["item_feature"])
        if (feature.matrix < 0).any():
            raise ValueError(f"AttributeKNN: feature '{feature.name}' has negative values; it "
                             "expects attribute counts (vlm4rec encode --modality slots)")
        self.history = dataset.inter_matrix(form="csr").astype(np.float32)
        attributes = _weighted_rows(feature.matrix, feature.has_vector, weighting)
        attribute_graph = _top_k(attributes @ attributes.T, self.knn_k)
        counts = np.asarray(self.history.sum(axis=0)).ravel()
        binary = (self.history > 0).astype(np.float32)
        norms = np.sqrt(counts)
        co_counts = (binary.T @ binary).toarray()
        denominator = np.outer(norms, norms) + float(config["shrink"])
        collaborative = np.divide(co_counts, denominator, out=np.zeros_like(co_counts),
                                  where=denominator > 0)
        collaborative_graph = _top_k(collaborative, self.knn_k)
        blended = ((1.0 - self.attribute_weight) * collaborative_graph
                   + self.attribute_weight * attribute_graph)
        self.logger.info(
            f"AttributeKNN: '{feature.name}' ({feature.dim} attributes) on {feature.n_covered}/"
            f"{feature.n_items} items; attribute_weight {self.attribute_weight}, knn_k {self.knn_k}")
        self.register_buffer("similarity", to_torch_sparse(blended).to_dense(), persistent=False)
        self.dummy_parameter = torch.nn.Parameter(torch.zeros(1))  # RecBole's optimizer needs one

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        return torch.nn.Parameter(torch.zeros(1))

    def predict(self, interaction: Any) -> torch.Tensor:
        users = interaction[self.USER_ID]
        unique_users, row = torch.unique(users, return_inverse=True)
        return self._scores(unique_users)[row, interaction[self.ITEM_ID]]

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        return self._scores(interaction[self.USER_ID]).reshape(-1)

    def _scores(self, users: torch.Tensor) -> torch.Tensor:
        history = to_torch_sparse(self.history[users.cpu().numpy()]).to(self.device)
        return torch.sparse.mm(history, self.similarity)


def _weighted_rows(matrix: np.ndarray, has_vector: np.ndarray, weighting: str) -> np.ndarray:
    """idf-weighted (or binary) attribute rows, L2-normalised; rows without tokens stay zero."""
    rows = (matrix > 0).astype(np.float64) if weighting == "binary" else matrix.astype(np.float64)
    if weighting == "tfidf":
        document_frequency = (matrix > 0).sum(axis=0)
        covered = max(int(has_vector.sum()), 1)
        rows = rows * np.log(covered / np.maximum(document_frequency, 1))
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def _top_k(similarity: np.ndarray, k: int) -> sp.csr_matrix:
    """Each row's ``k`` largest positive off-diagonal entries, as a sparse matrix."""
    similarity = np.array(similarity, dtype=np.float64)
    np.fill_diagonal(similarity, 0.0)
    k = min(k, similarity.shape[1] - 1)
    columns = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    rows = np.repeat(np.arange(similarity.shape[0]), k)
    values = similarity[rows, columns.ravel()]
    keep = values > 0
    return sp.csr_matrix((values[keep], (rows[keep], columns.ravel()[keep])),
                         shape=similarity.shape)
