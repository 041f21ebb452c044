r"""FREEDOM: a frozen item-item graph from content features plus a denoised user-item graph.

Reference:
    Xin Zhou, Zhiqi Shen. "A Tale of Two Graphs: Freezing and Denoising Graph Structures for
    Multimodal Recommendation." ACM MM 2023.

* Item-item graph, built once and frozen: per feature in ``content_features``, each item links to
  its ``knn_k`` most cosine-similar items; the symmetric-normalised graphs are summed with
  ``item_graph_weights`` (MMRec: 0.1 visual, 0.9 text). ``n_mm_layers`` propagations of the item
  ID embeddings over it give h_i.
* User-item graph: LightGCN (``n_ui_layers``, mean of layer outputs). During training, each epoch
  keeps ``1 - dropout`` of the edges, sampled with probability proportional to 1/sqrt(d_u d_i)
  (degree-sensitive pruning); scoring uses the full graph.
* Score = u . (i + h_i). Loss = BPR + ``reg_weight`` * sum over features of BPR between the user
  and the projected (``feat_embed_dim``) features of the positive and negative item.

Defaults are MMRec's. Items without a vector for a feature have no edges in that feature's kNN
graph (no content neighbours) and a zero input to its projection (counted in the log). Unlike
MMRec, the raw features are not fine-tuned (MMRec wraps them in a trainable embedding).
"""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn

from recbole_vlm4rec.models._graph import (CachedDotProductScores, degree_sensitive_edge_sample,
                                           knn_item_graph, register_feature_buffers,
                                           to_torch_sparse, user_item_adjacency)
from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models import _memory
from recbole_vlm4rec.models.contract import (CONTENT_FEATURES_KEY, Features, ModelContract, Setting,
                                             equal_settings, positive_weights)
from recbole_vlm4rec.models.features import feature_weights, require_content_features


@register_model
class FREEDOM(CachedDotProductScores, GeneralRecommender):
    r"""Frozen kNN item graph + degree-sensitively pruned LightGCN (Zhou & Shen, MM'23)."""

    input_type = InputType.PAIRWISE
    contract = ModelContract(
        memory_estimate=_memory.freedom,
        settings=(
            Setting("item_graph_weights", float, "one weight per feature for summing the item "
                    "graphs; ~ = equal (MMRec: 0.1 visual, 0.9 text)", minimum=0, optional=True,
                    per_feature=True),
            Setting("embedding_size", int, "user / item ID embedding size", minimum=1),
            Setting("feat_embed_dim", int, "size features are projected to for the auxiliary "
                    "BPR loss", minimum=1),
            Setting("knn_k", int, "neighbours per item in each feature's item-item graph",
                    minimum=1),
            Setting("n_mm_layers", int, "propagations over the frozen item-item graph", minimum=0),
            Setting("n_ui_layers", int, "LightGCN layers over the user-item graph", minimum=0),
            Setting("dropout", float, "share of user-item edges pruned each training epoch "
                    "(degree-sensitive)", minimum=0, maximum=1),
            Setting("reg_weight", float, "weight of the feature BPR losses", minimum=0),
        ),
        features=Features(CONTENT_FEATURES_KEY, doc="features that each build a kNN item graph"),
        checks=(positive_weights("item_graph_weights"),
                equal_settings("feat_embed_dim", "embedding_size",
                               "FREEDOM scores users against projected features")),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = int(config["embedding_size"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.dropout = float(config["dropout"])
        self.reg_weight = float(config["reg_weight"])
        features = require_content_features(config, dataset)
        self.feature_names = [feature.name for feature in features]
        weights = feature_weights(config["item_graph_weights"], len(features), "item_graph_weights")

        item_graph = sp.csr_matrix((self.n_items, self.n_items), dtype="float32")
        for feature, weight in zip(features, weights):
            item_graph = item_graph + weight * knn_item_graph(
                feature.matrix, feature.has_vector, int(config["knn_k"]))
        self.register_buffer("item_graph", to_torch_sparse(item_graph), persistent=False)
        self.interactions = dataset.inter_matrix(form="csr")
        full_adjacency = to_torch_sparse(user_item_adjacency(self.interactions))
        self.register_buffer("full_adjacency", full_adjacency, persistent=False)
        self.train_adjacency: torch.Tensor | None = None

        register_feature_buffers(self, features)
        self.projections = nn.ModuleList(
            nn.Linear(feature.dim, int(config["feat_embed_dim"])) for feature in features
        )
        self.user_embedding = nn.Embedding(self.n_users, self.embedding_size)
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    def train(self, mode: bool = True) -> "FREEDOM":
        # RecBole calls train() at the start of every epoch: a fresh pruned graph per epoch.
        if mode:
            self.train_adjacency = None
        return super().train(mode)

    def _adjacency(self) -> torch.Tensor:
        if not self.training or self.dropout <= 0:
            return self.full_adjacency
        if self.train_adjacency is None:
            pruned = degree_sensitive_edge_sample(self.interactions, 1.0 - self.dropout)
            self.train_adjacency = to_torch_sparse(pruned).to(self.device)
        return self.train_adjacency

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        content = self.item_embedding.weight
        for _ in range(self.n_mm_layers):
            content = torch.sparse.mm(self.item_graph, content)
        adjacency = self._adjacency()
        layer = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        layers = [layer]
        for _ in range(self.n_ui_layers):
            layer = torch.sparse.mm(adjacency, layer)
            layers.append(layer)
        users, items = torch.split(torch.stack(layers).mean(dim=0), [self.n_users, self.n_items])
        return users, items + content

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        user, pos, neg = (interaction[self.USER_ID], interaction[self.ITEM_ID],
                          interaction[self.NEG_ITEM_ID])
        users, items = self.forward()
        loss = _bpr(users[user], items[pos], items[neg])
        for index, projection in enumerate(self.projections):
            feature = getattr(self, f"feature_{index}")
            # Only the batch's items are projected (MMRec projects the whole catalogue per batch).
            loss = loss + self.reg_weight * _bpr(users[user], projection(feature[pos]),
                                                 projection(feature[neg]))
        return loss


def _bpr(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid((users * pos).sum(dim=1) - (users * neg).sum(dim=1)).mean()
