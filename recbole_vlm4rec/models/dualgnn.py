r"""DualGNN: per-modality graph convolutions fused per user, plus a user co-occurrence graph.

Reference:
    Qifan Wang, Yinwei Wei, Jianhua Yin, Jianlong Wu, Xuemeng Song, Liqiang Nie. "DualGNN: Dual
    Graph Neural Network for Multimedia Recommendation." IEEE Transactions on Multimedia 2021.

One modality m per feature in ``content_features`` (features f_i^m), A the user-item graph
(``aggr_mode`` ``add``: D^-1/2 A D^-1/2; ``mean``: D^-1 A):

* **Single-modal representation.** Items t_i^m = W2 leaky_relu(W1 f_i^m) (hidden 4 x
  ``embedding_size``), users a learned preference p_u^m; x^m = normalize([p^m; t^m]) and
  r^m = x^m + A x^m + A^2 x^m (``n_layers`` propagations, 2 in MMRec).
* **Multi-modal fusion.** Items r_i = sum_m r_i^m; users r_u = sum_m w_{u,m} r_u^m with learned
  per-user modality weights (initialised to a softmax over modalities).
* **User co-occurrence graph.** Each user's ``user_knn_k`` users sharing the most training items
  (ties by id); weights softmax(co-occurrence counts). h_u = r_u + sum_k a_{u,k} r_{u_k}.
* **Score** h_u . r_i. Loss = BPR in bits (-log2 sigmoid, as MMRec) + ``reg_weight`` *
  (sum_m mean over the batch's users of p_u^m^2 + mean of w^2).

A user with fewer than ``user_knn_k`` co-occurring users gets its list padded to
``user_knn_k`` entries by repeated draws from its own list, each draw choosing one of the entries
so far uniformly (MMRec's sampler, redrawn every training epoch); each neighbour's weight is its
softmax weight times how often it appears. Here the draws are one Dirichlet-multinomial sample
(the same distribution as that Polya urn), made with torch's seeded generator; the weights are a
buffer saved with the model, so a checkpoint ranks as the trained model did.

Defaults are the first value of each MMRec grid (``DualGNN.yaml``: aggr_mode add, reg_weight 0.1,
learning rate 0.1). Any number of modalities (the paper has three, MMRec two).

Deviations from MMRec's ``models/dualgnn.py``, and why:

* **User fusion.** MMRec adds the text representation into the visual one in place
  (``representation += t_rep`` on the tensor it also uses as the visual one), so its users are
  w_v (r^v + r^t) + w_t r^t: a reparametrisation of the same family of weighted sums with an
  extra share of text at initialisation. Here r_u = sum_m w_{u,m} r_u^m, as in the paper, for any
  number of modalities.
* **Trained preferences.** MMRec builds each preference as ``nn.Parameter(...).to(device)``: on a
  GPU that is a plain tensor, never trained (on a CPU it is a parameter). Here it is always a
  parameter.
* **Not ported, no effect in MMRec:** item modality weights (only penalised, never used), the
  modality-specific edge dropping (its dropped edge lists are built, the full graph is used),
  unused layers (``MLP_v``, ``MLP_t``, ``MLP_user``).
* **Ranking.** MMRec ranks with the representation of the last training batch's forward pass;
  here one forward pass after training (with the last epoch's user-graph weights).
* **Co-occurrence graph.** Computed from the training split when the model is built (MMRec reads
  a ``user_graph_dict.npy`` made beforehand by its preprocessing script from the same split);
  MMRec keeps the top 200 per user (``torch.topk``) and uses its first ``k``. Same rule and the
  same co-occurrence counts (so the same softmax weights) for every user, but users tied at the
  k-th count make the cut in ``torch.topk``'s unspecified order there and by lower id here: on
  ``posters`` (943 users, k = 40) all 943 users get the same counts and 713 a different choice
  among the tied users.

Items without a vector for a modality enter it as the projection of a zero vector (counted in the
log).
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

from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models import _memory
from recbole_vlm4rec.models._graph import (CachedDotProductScores, register_feature_buffers,
                                           sparse_matmul, to_torch_sparse, user_item_adjacency)
from recbole_vlm4rec.models._user_graph import top_co_occurring_users
from recbole_vlm4rec.models.contract import CONTENT_FEATURES_KEY, Features, ModelContract, Setting
from recbole_vlm4rec.models.features import require_content_features

AGGREGATIONS = {"add": "symmetric", "mean": "mean"}


@register_model
class DualGNN(CachedDotProductScores, GeneralRecommender):
    r"""Modality graphs fused per user plus a user co-occurrence graph (Wang et al., TMM'21)."""

    input_type = InputType.PAIRWISE
    contract = ModelContract(
        memory_estimate=_memory.dualgnn,
        settings=(
            Setting("embedding_size", int, "size of every representation (features go through a "
                    "hidden layer of 4x this)", minimum=1),
            Setting("n_layers", int, "propagations of each modality over the user-item graph "
                    "(MMRec: 2, fixed)", minimum=0),
            Setting("aggr_mode", str, "user-item aggregation: add = symmetric-normalised sum, "
                    "mean = mean of the neighbours", choices=tuple(AGGREGATIONS)),
            Setting("user_knn_k", int, "co-occurring users each user aggregates (MMRec: 40, "
                    "fixed)", minimum=1),
            Setting("reg_weight", float, "weight of the squared batch preferences and user "
                    "modality weights", minimum=0),
        ),
        features=Features(CONTENT_FEATURES_KEY, doc="one modality per feature, e.g. [visual, text]"),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = int(config["embedding_size"])
        self.n_layers = int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        features = require_content_features(config, dataset)
        self.feature_names = [feature.name for feature in features]
        register_feature_buffers(self, features)
        interactions = dataset.inter_matrix(form="csr")
        adjacency = user_item_adjacency(interactions, AGGREGATIONS[str(config["aggr_mode"])])
        self.register_buffer("adjacency", to_torch_sparse(adjacency), persistent=False)
        self.register_buffer("adjacency_t", to_torch_sparse(adjacency.T), persistent=False)

        size, n_modalities = self.embedding_size, len(features)
        self.preferences = nn.ParameterList(
            nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, size)))
            for _ in features)
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(f.dim, 4 * size), nn.LeakyReLU(), nn.Linear(4 * size, size))
            for f in features)
        start = nn.init.xavier_normal_(torch.empty(self.n_users, n_modalities, 1))
        self.modality_weights = nn.Parameter(torch.softmax(start, dim=1).squeeze(2))

        neighbours, counts, _ = top_co_occurring_users(interactions, int(config["user_knn_k"]))
        self.register_buffer("neighbours", torch.from_numpy(neighbours), persistent=False)
        self.register_buffer("neighbour_counts", torch.from_numpy(counts), persistent=False)
        # this epoch's weight of each neighbour slot; saved, as it is drawn at random
        self.register_buffer("neighbour_weights", self._draw_neighbour_weights())
        self._user_graph: tuple[torch.Tensor, torch.Tensor] | None = None
        self.register_load_state_dict_post_hook(_forget_user_graph)

    def train(self, mode: bool = True) -> "DualGNN":
        # RecBole calls train() when each epoch starts: MMRec redraws the padding per epoch.
        if mode:
            self.neighbour_weights = self._draw_neighbour_weights()
        self._user_graph = None  # eval() follows loading a checkpoint: rebuild from its weights
        return super().train(mode)

    def _draw_neighbour_weights(self) -> torch.Tensor:
        """Softmax of the counts over each user's ``k`` slots, short lists padded by a Polya urn
        (a Dirichlet-multinomial draw of how often each real neighbour is repeated)."""
        counts = self.neighbour_counts
        real = counts > 0
        n_real = real.sum(dim=1)
        k, device = counts.shape[1], counts.device
        copies = real.to(counts.dtype)
        short = torch.nonzero((n_real > 0) & (n_real < k)).squeeze(1)
        if len(short) and k > 1:
            shares = -torch.log(torch.rand(len(short), k, dtype=counts.dtype, device=device).clamp_min(1e-12))
            shares = shares * real[short]
            draws = torch.multinomial(shares / shares.sum(dim=1, keepdim=True), k - 1,
                                      replacement=True)
            used = (torch.arange(k - 1, device=device).unsqueeze(0) < (k - n_real[short]).unsqueeze(1))
            extra = torch.zeros_like(shares).scatter_add_(1, draws, used.to(shares.dtype))
            copies[short] = copies[short] + extra
        logits = torch.where(real, counts, torch.full_like(counts, -math.inf))
        shifted = (logits - logits.amax(dim=1, keepdim=True).clamp_min(0)).exp() * copies
        total = shifted.sum(dim=1, keepdim=True)
        return torch.where(total > 0, shifted / total.clamp_min(1e-30), torch.zeros_like(total))

    def _user_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._user_graph is None:
            rows = np.repeat(np.arange(self.n_users), self.neighbours.shape[1])
            graph = sp.csr_matrix((self.neighbour_weights.cpu().numpy().ravel(),
                                   (rows, self.neighbours.cpu().numpy().ravel())),
                                  shape=(self.n_users, self.n_users))
            self._user_graph = (to_torch_sparse(graph).to(self.device),
                                to_torch_sparse(graph.T).to(self.device))
        return self._user_graph

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        users = items = None
        for index, (preference, projection) in enumerate(zip(self.preferences, self.projections)):
            nodes = F.normalize(torch.cat(
                [preference, projection(getattr(self, f"feature_{index}"))]), dim=1)
            total, layer = nodes, nodes
            for _ in range(self.n_layers):
                layer = sparse_matmul(self.adjacency, layer, self.adjacency_t)
                total = total + layer
            modality_users, modality_items = torch.split(total, [self.n_users, self.n_items])
            weighted = modality_users * self.modality_weights[:, index:index + 1]
            users = weighted if users is None else users + weighted
            items = modality_items if items is None else items + modality_items
        graph, graph_t = self._user_matrices()
        return users + sparse_matmul(graph, users, graph_t), items

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        user, pos, neg = (interaction[self.USER_ID], interaction[self.ITEM_ID],
                          interaction[self.NEG_ITEM_ID])
        users, items = self.forward()
        difference = (users[user] * (items[pos] - items[neg])).sum(dim=1)
        loss = -F.logsigmoid(difference).mean() / math.log(2)
        reg = sum((preference[user] ** 2).mean() for preference in self.preferences)
        reg = reg + (self.modality_weights ** 2).mean()
        return loss + self.reg_weight * reg


def _forget_user_graph(module: nn.Module, _keys: Any) -> None:
    # built from the loaded weights when next needed (and so is the cached evaluation pass)
    module._user_graph = None
    module._cached = None
