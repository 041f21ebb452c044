r"""MGCN: multi-view graph convolution with behaviour-guided purification of modality features.

Reference:
    Penghang Yu, Zhiyi Tan, Guanming Lu, Bing-Kun Bao. "Multi-View Graph Convolutional Network
    for Multimedia Recommendation." ACM MM 2023.

With one modality m per feature in ``content_features`` (features f_i^m), e_i the item ID
embedding, A the symmetric-normalised user-item adjacency and A_ui its user-item block:

* Behaviour-guided purifier: x_i^m = W_m f_i^m + b_m; item view h_i^m = e_i * sigmoid(G_m x_i^m
  + g_m).
* User-item view: E^c = mean_{l=0..L} A^l [E_u; E_i] (LightGCN, L = ``n_ui_layers``).
* Item-item view: S_m = kNN graph of f^m (``knn_k`` neighbours, cosine-weighted, symmetric
  normalised); h^m is propagated ``n_layers`` times over S_m; users get A_ui h^m, giving
  H^m = [A_ui h^m; h^m].
* Behaviour-aware fuser: attention a_m = softmax_m(q(H^m)) with q = Linear-Tanh-Linear(-> 1);
  common C = sum_m a_m H^m; specific parts P_m = sigmoid(W'_m E^c + b'_m) * (H^m - C);
  side S = (sum_m P_m + C) / (M + 1); final E = E^c + S; score = dot product.
* Loss = BPR + ``reg_weight`` * 1/2 (||e_u||^2 + ||e_p||^2 + ||e_n||^2) / batch + ``cl_weight`` *
  (InfoNCE(S_pos, E^c_pos) + InfoNCE(S_u, E^c_u)), in-batch InfoNCE at ``temperature``.

Defaults are MMRec's ``MGCN.yaml`` with its grid's first ``cl_loss`` (0.001). With
``content_features: [visual, text]`` this computes what MMRec's implementation computes; the paper
and MMRec have an image and a text modality, here any number >= 1 (the attention runs over M
modalities, the side embedding averages M + 1 parts). Deviations from MMRec's implementation, and
why:

* No learning-rate decay (MMRec: lr x 0.96^(epoch/50)); RecBole's trainer has no scheduler. Before
  epoch 100 the learning rate differs by less than 8%.
* The L2 term divides by the batch's length (MMRec: by ``train_batch_size``: the same except in
  an epoch's last, shorter batch).
* MMRec's ``cl_loss`` is ``cl_weight``; its fixed InfoNCE temperature 0.2 is ``temperature``.
* ``train_features`` (default True, as MMRec: a trainable copy of the raw features) can be set
  False to keep the dataset's features fixed (cheaper). The kNN graphs are built once from the
  raw features either way.

Items without a vector for a feature have no neighbours in its graph and start from a zero
feature (counted in the log).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn

from recbole_vlm4rec.models._graph import (CachedDotProductScores, FeatureTables,
                                           in_batch_info_nce, knn_item_graph, lightgcn_mean,
                                           sigmoid_gate, sparse_matmul, to_torch_sparse,
                                           user_item_adjacency)
from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models import _memory
from recbole_vlm4rec.models.contract import CONTENT_FEATURES_KEY, Features, ModelContract, Setting
from recbole_vlm4rec.models.features import require_content_features


@register_model
class MGCN(CachedDotProductScores, GeneralRecommender):
    r"""Multi-view GCN with behaviour-guided purifier and behaviour-aware fuser (Yu et al., MM'23)."""

    input_type = InputType.PAIRWISE
    contract = ModelContract(
        memory_estimate=_memory.mgcn,
        settings=(
            Setting("embedding_size", int, "ID embedding size; every feature is projected to it",
                    minimum=1),
            Setting("n_ui_layers", int, "LightGCN layers of the user-item view", minimum=0),
            Setting("n_layers", int, "propagations of each item view over its item-item graph",
                    minimum=0),
            Setting("knn_k", int, "neighbours per item in each feature's kNN graph", minimum=1),
            Setting("reg_weight", float, "weight of the squared L2 norms of the batch embeddings",
                    minimum=0),
            Setting("cl_weight", float, "weight of the InfoNCE between side and user-item view "
                    "embeddings (MMRec: cl_loss)", minimum=0),
            Setting("temperature", float, "InfoNCE temperature", above=0),
            Setting("train_features", bool, "fine-tune a copy of the raw feature matrices "
                    "(MMRec); False = fixed, cheaper"),
        ),
        features=Features(CONTENT_FEATURES_KEY, doc="one modality per feature, e.g. [visual, text]"),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = size = int(config["embedding_size"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_layers = int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.cl_weight = float(config["cl_weight"])
        self.temperature = float(config["temperature"])
        features = require_content_features(config, dataset)
        self.feature_names = [feature.name for feature in features]
        self.features = FeatureTables(features, trainable=bool(config["train_features"]))

        adjacency = user_item_adjacency(dataset.inter_matrix(form="csr"))
        self.register_buffer("adjacency", to_torch_sparse(adjacency), persistent=False)
        user_item = adjacency[:self.n_users, self.n_users:]
        self.register_buffer("user_item", to_torch_sparse(user_item), persistent=False)
        self.register_buffer("item_user", to_torch_sparse(user_item.T), persistent=False)
        for index, feature in enumerate(features):
            graph = knn_item_graph(feature.matrix, feature.has_vector, int(config["knn_k"]),
                                   weighted=True)
            self.register_buffer(f"item_graph_{index}", to_torch_sparse(graph), persistent=False)
            # kNN graphs are directed: the backward pass needs the transpose
            self.register_buffer(f"item_graph_t_{index}", to_torch_sparse(graph.T),
                                 persistent=False)

        self.user_embedding = nn.Embedding(self.n_users, size)
        self.item_embedding = nn.Embedding(self.n_items, size)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.projections = nn.ModuleList(nn.Linear(f.dim, size) for f in features)
        self.item_gates = nn.ModuleList(sigmoid_gate(size) for _ in features)
        self.preference_gates = nn.ModuleList(sigmoid_gate(size) for _ in features)
        self.query = nn.Sequential(nn.Linear(size, size), nn.Tanh(),
                                   nn.Linear(size, 1, bias=False))

    def _propagate(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(final embeddings, side embeddings, user-item view embeddings), users then items."""
        item_ids = self.item_embedding.weight
        behaviour = lightgcn_mean(
            self.adjacency, torch.cat([self.user_embedding.weight, item_ids]), self.n_ui_layers)
        views = []
        for index, (projection, gate) in enumerate(zip(self.projections, self.item_gates)):
            items = item_ids * gate(projection(self.features.table(index)))
            graph, transpose = (getattr(self, f"item_graph_{index}"),
                                getattr(self, f"item_graph_t_{index}"))
            for _ in range(self.n_layers):
                items = sparse_matmul(graph, items, transpose)
            views.append(torch.cat([sparse_matmul(self.user_item, items, self.item_user), items]))
        stacked = torch.stack(views)  # (modalities, nodes, size)
        attention = torch.softmax(self.query(stacked), dim=0)
        common = (attention * stacked).sum(dim=0)
        side = common
        for view, preference in zip(views, self.preference_gates):
            side = side + preference(behaviour) * (view - common)
        side = side / (len(views) + 1)
        return behaviour + side, side, behaviour

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        final, _, _ = self._propagate()
        users, items = torch.split(final, [self.n_users, self.n_items])
        return users, items

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        user, pos, neg = (interaction[self.USER_ID], interaction[self.ITEM_ID],
                          interaction[self.NEG_ITEM_ID])
        final, side, behaviour = self._propagate()
        pos_nodes, neg_nodes = pos + self.n_users, neg + self.n_users
        batch_users, batch_pos, batch_neg = final[user], final[pos_nodes], final[neg_nodes]
        pos_scores = (batch_users * batch_pos).sum(dim=1)
        neg_scores = (batch_users * batch_neg).sum(dim=1)
        loss = -F.logsigmoid(pos_scores - neg_scores).mean()
        squares = batch_users.square().sum() + batch_pos.square().sum() + batch_neg.square().sum()
        loss = loss + self.reg_weight * 0.5 * squares / len(user)
        contrast = (in_batch_info_nce(side[pos_nodes], behaviour[pos_nodes], self.temperature)
                    + in_batch_info_nce(side[user], behaviour[user], self.temperature))
        return loss + self.cl_weight * contrast
