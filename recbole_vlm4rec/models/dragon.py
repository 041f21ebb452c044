r"""DRAGON: dual representations from a user co-occurrence graph and an item similarity graph on
top of per-modality user-item graph convolutions.

Reference:
    Hongyu Zhou, Xin Zhou, Lingzi Zhang, Zhiqi Shen. "Enhancing Dyadic Relations with
    Homogeneous Graphs for Multimodal Recommendation." ECAI 2023.

With one modality m per feature in ``content_features`` (features f_i^m), A the normalised
user-item graph (``aggr_mode``: ``add`` = D^-1/2 A D^-1/2, ``mean`` = D^-1 A):

* Heterogeneous graph, per modality: items t_i^m = W2_m LeakyReLU(W1_m f_i^m) (hidden size
  4 x ``embedding_size``), users a learned preference p_u^m; x^m = L2-normalise([p^m; t^m]) row
  by row; r^m = x^m + sum_{l=1..L} A^l x^m (L = ``n_layers``).
* Modalities combined by concatenation: items r_i = [r_i^1, ..., r_i^M]; users
  r_u = [w_u1 r_u^1, ..., w_uM r_u^M] with learned per-user weights w_u (initialised near 1/M).
* Item-item graph S (built once): the sum over features of their symmetric-normalised kNN graphs
  (``knn_k`` neighbours, unweighted) weighted by ``item_graph_weights``; items
  e_i = r_i + (S^K r)_i (K = ``n_mm_layers``).
* User-user graph: each user's ``user_knn_k`` users sharing the most training items, weighted by a
  softmax over the shared counts; users with fewer such users are padded by re-drawing from their
  list (each draw uniform over the list as it grows), once per training epoch; users sharing no
  item have none. e_u = r_u + sum_v s_uv r_v.
* Score = e_u . e_i. Loss = -mean log2 sigmoid(s_up - s_un) + ``reg_weight`` * (sum_m
  mean((p_u^m)^2) over the batch's users + mean(w^2) over all users).

Defaults are the first value of each grid in MMRec's ``DRAGON.yaml`` (``learning_rate`` 0.1,
``reg_weight`` 0.1; its grids: both 0.1 ... 1e-5). MMRec's setting: ``--content_features=[visual,
text] --item_graph_weights=[0.1,0.9]`` (its ``mm_image_weight`` 0.1). The paper and MMRec have an
image and a text modality, here any number >= 1. Deviations from MMRec's implementation, and
why:

* Scores come from a fresh forward pass (MMRec ranks with the representations of the last
  training batch, computed before that batch's update step).
* The user-user graph is computed here from the training interactions (MMRec reads a file made
  by its ``dualgnn-gen-u-u-matrix.py``: the same counts); among users sharing equally many items
  the lower id comes first (MMRec: ``torch.topk``'s order). The padding draws use torch's RNG.
* MMRec's ``n_layers`` key is read by nothing (its GCN always runs 2 convolutions, its yaml says
  2): here ``n_layers`` sets them. Its fixed 40 neighbours per user are ``user_knn_k``.
* MMRec builds edge-dropped graphs and several layers (``MLP_v``, ``MLP_t``, ``MLP_user``,
  ``weight_i``, feature projections) that its forward pass never uses; they are not ported. Its
  raw features are never fine-tuned (the GCN reads the fixed matrices): here neither.
* ``aggr_mode`` ``max`` (a PyG option outside MMRec's grid) is not ported.

Items without a vector for a feature enter that modality with f_i^m = 0 and have no neighbours in
its kNN graph (counted in the log).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn

from recbole_vlm4rec.models._graph import (CachedDotProductScores, knn_item_graph,
                                           register_feature_buffers, sparse_matmul,
                                           to_torch_sparse, user_item_adjacency)
from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models import _memory
from recbole_vlm4rec.models._user_graph import top_co_occurring_users
from recbole_vlm4rec.models.contract import (CONTENT_FEATURES_KEY, Features, ModelContract, Setting,
                                             positive_weights)
from recbole_vlm4rec.models.features import feature_weights, require_content_features

AGGREGATIONS = {"add": "symmetric", "mean": "mean"}


@register_model
class DRAGON(CachedDotProductScores, GeneralRecommender):
    r"""Heterogeneous + homogeneous (user-user, item-item) graphs (Zhou et al., ECAI'23)."""

    input_type = InputType.PAIRWISE
    contract = ModelContract(
        memory_estimate=_memory.dragon,
        settings=(
            Setting("embedding_size", int, "size of each modality's user and item "
                    "representation (the final ones: x number of features)", minimum=1),
            Setting("n_layers", int, "user-item graph convolutions per modality", minimum=0),
            Setting("n_mm_layers", int, "propagations over the item-item graph", minimum=0),
            Setting("knn_k", int, "neighbours per item in each feature's item-item graph",
                    minimum=1),
            Setting("item_graph_weights", float, "one weight per feature for summing the item "
                    "graphs; ~ = equal (MMRec: mm_image_weight 0.1, text 0.9)", minimum=0,
                    optional=True, per_feature=True),
            Setting("user_knn_k", int, "co-occurring users per user in the user-user graph "
                    "(MMRec: 40)", minimum=1),
            Setting("aggr_mode", str, "user-item aggregation: add (symmetric normalised sum) or "
                    "mean", choices=tuple(AGGREGATIONS)),
            Setting("reg_weight", float, "weight of the squared user preferences and user "
                    "modality weights", minimum=0),
        ),
        features=Features(CONTENT_FEATURES_KEY, doc="one modality per feature, e.g. [visual, text]"),
        checks=(positive_weights("item_graph_weights"),),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = size = int(config["embedding_size"])
        self.n_layers = int(config["n_layers"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.user_knn_k = int(config["user_knn_k"])
        self.reg_weight = float(config["reg_weight"])
        features = require_content_features(config, dataset)
        self.feature_names = [feature.name for feature in features]
        register_feature_buffers(self, features)
        n_features = len(features)

        interactions = (dataset.inter_matrix(form="csr") > 0).astype(np.float32)
        adjacency = user_item_adjacency(interactions, AGGREGATIONS[str(config["aggr_mode"])])
        self.register_buffer("adjacency", to_torch_sparse(adjacency), persistent=False)
        self.register_buffer("adjacency_t", to_torch_sparse(adjacency.T), persistent=False)
        weights = feature_weights(config["item_graph_weights"], n_features, "item_graph_weights")
        item_graph = sp.csr_matrix((self.n_items, self.n_items), dtype=np.float32)
        for feature, weight in zip(features, weights):
            item_graph = item_graph + weight * knn_item_graph(
                feature.matrix, feature.has_vector, int(config["knn_k"]))
        self.register_buffer("item_graph", to_torch_sparse(item_graph), persistent=False)
        self.register_buffer("item_graph_t", to_torch_sparse(item_graph.T), persistent=False)
        neighbours, counts, sizes = (torch.from_numpy(array) for array in
                                     top_co_occurring_users(interactions, self.user_knn_k))
        self.register_buffer("user_neighbours", neighbours, persistent=False)
        self.register_buffer("user_counts", counts, persistent=False)
        self.register_buffer("user_list_sizes", sizes, persistent=False)
        # The epoch's sampled user graph is part of the state: a checkpoint scores as trained.
        self.register_buffer("epoch_neighbours", torch.zeros_like(neighbours))
        self.register_buffer("epoch_weights", torch.zeros_like(counts))
        self._user_graph: tuple[torch.Tensor, torch.Tensor] | None = None
        self.register_load_state_dict_post_hook(_forget_user_graph)
        self._sample_user_graph()

        std = math.sqrt(2.0 / (self.n_users + size))  # Xavier-normal for an (n_users, size) matrix
        self.preferences = nn.ParameterList(
            nn.Parameter(torch.randn(self.n_users, size) * std) for _ in features)
        self.item_encoders = nn.ModuleList(
            nn.Sequential(nn.Linear(f.dim, 4 * size), nn.LeakyReLU(), nn.Linear(4 * size, size))
            for f in features)
        std = math.sqrt(2.0 / (self.n_users + n_features))
        self.user_modality_weights = nn.Parameter(
            torch.softmax(torch.randn(self.n_users, n_features) * std, dim=1))

    def train(self, mode: bool = True) -> "DRAGON":
        # RecBole calls train() at the start of every epoch: MMRec re-draws the padding then.
        if mode:
            self._sample_user_graph()
        return super().train(mode)

    def _sample_user_graph(self) -> None:
        """The epoch's ``user_knn_k`` neighbours per user and their softmax weights."""
        neighbours, counts = self.user_neighbours.clone(), self.user_counts.clone()
        sizes = self.user_list_sizes
        for slot in range(int(sizes[sizes > 0].min()) if (sizes > 0).any() else self.user_knn_k,
                          self.user_knn_k):
            # users whose list is shorter than `slot + 1`: draw from the slot items they have
            drawing = torch.nonzero((sizes > 0) & (sizes <= slot)).squeeze(1)
            if len(drawing) == 0:
                continue
            picks = (torch.rand(len(drawing), device=sizes.device) * slot).long()
            neighbours[drawing, slot] = neighbours[drawing, picks]
            counts[drawing, slot] = counts[drawing, picks]
        weights = torch.softmax(counts, dim=1) * (sizes > 0).unsqueeze(1)
        self.epoch_neighbours.copy_(neighbours)
        self.epoch_weights.copy_(weights)
        self._user_graph = None

    def _user_graph_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._user_graph is None:
            rows = np.repeat(np.arange(self.n_users), self.user_knn_k)
            graph = sp.csr_matrix((self.epoch_weights.cpu().numpy().ravel(),
                                   (rows, self.epoch_neighbours.cpu().numpy().ravel())),
                                  shape=(self.n_users, self.n_users))
            self._user_graph = (to_torch_sparse(graph).to(self.device),
                                to_torch_sparse(graph.T).to(self.device))
        return self._user_graph

    def _representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-user and per-item concatenated modality representations r_u, r_i."""
        users, items = [], []
        for index, (preference, encoder) in enumerate(zip(self.preferences, self.item_encoders)):
            nodes = F.normalize(torch.cat([preference, encoder(getattr(self, f"feature_{index}"))]))
            layer, total = nodes, nodes
            for _ in range(self.n_layers):
                layer = sparse_matmul(self.adjacency, layer, self.adjacency_t)
                total = total + layer
            modality_users, modality_items = torch.split(total, [self.n_users, self.n_items])
            users.append(self.user_modality_weights[:, index:index + 1] * modality_users)
            items.append(modality_items)
        return torch.cat(users, dim=1), torch.cat(items, dim=1)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self._representations()
        similar_items = items
        for _ in range(self.n_mm_layers):
            similar_items = sparse_matmul(self.item_graph, similar_items, self.item_graph_t)
        user_graph, user_graph_t = self._user_graph_matrices()
        return users + sparse_matmul(user_graph, users, user_graph_t), items + similar_items

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        user, pos, neg = (interaction[self.USER_ID], interaction[self.ITEM_ID],
                          interaction[self.NEG_ITEM_ID])
        users, items = self.forward()
        batch_users = users[user]
        difference = (batch_users * items[pos]).sum(dim=1) - (batch_users * items[neg]).sum(dim=1)
        loss = -F.logsigmoid(difference).mean() / math.log(2.0)  # MMRec: log2 sigmoid
        penalty = sum(preference[user].square().mean() for preference in self.preferences)
        # Row 0 (RecBole's padding user) is not in MMRec's weight matrix.
        penalty = penalty + self.user_modality_weights[1:].square().mean()
        return loss + self.reg_weight * penalty


def _forget_user_graph(module: nn.Module, _keys: Any) -> None:
    module._user_graph = None  # rebuilt from the loaded epoch_* buffers
