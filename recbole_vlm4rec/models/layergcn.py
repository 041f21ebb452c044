r"""LayerGCN: LightGCN whose layers are each rescaled by their similarity to the input embeddings,
trained on a pruned user-item graph.

Reference:
    Xin Zhou, Donghui Lin, Yong Liu, Chunyan Miao. "Layer-refined Graph Convolutional Networks
    for Recommendation." ICDE 2023.

Collaborative filtering only (no item features). With A the symmetric-normalised user-item graph
and E^0 = [E_u; E_i] learned embeddings (``embedding_size``):

* **Layer refinement.** For l = 1..``n_layers``: E^l = A E^{l-1}, then each node's row is scaled
  by the cosine similarity between it and the node's E^0 row (layers drifting from the node's own
  embedding count less, which keeps deep propagation from over-smoothing). Final embedding =
  sum_{l >= 1} E^l (the input layer itself is not added); score = dot product.
* **Edge pruning while training.** With ``dropout`` > 0, each epoch keeps (1 - ``dropout``) of the
  user-item edges and renormalises; epochs alternate between a degree-sensitive sample (edges
  drawn with probability proportional to 1/sqrt(d_u d_i), without replacement) and a uniform one,
  the degree-sensitive one first. Scoring uses the full graph.
* **Loss.** BPR summed over the batch (not averaged) + ``reg_weight`` * 1/2 (||e_u||^2 + ||e_i+||^2
  + ||e_i-||^2) of the batch's input embeddings, both as in MMRec.

Defaults are the first value of each MMRec grid (``LayerGCN.yaml``: 4 layers, reg_weight 1e-2,
dropout 0). Deviations from MMRec's ``models/layergcn.py``: none in the maths (MMRec's module
imports ``models.common...``, which does not exist in MMRec; it runs once that path is fixed).
"""

from __future__ import annotations

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
from recbole_vlm4rec.models._graph import (CachedDotProductScores, degree_sensitive_edge_sample,
                                           sparse_matmul, to_torch_sparse, user_item_adjacency)
from recbole_vlm4rec.models.contract import ModelContract, Setting


@register_model
class LayerGCN(CachedDotProductScores, GeneralRecommender):
    r"""Layer-refined LightGCN with alternating edge pruning (Zhou et al., ICDE'23)."""

    input_type = InputType.PAIRWISE
    contract = ModelContract(
        memory_estimate=_memory.layergcn,
        settings=(
            Setting("embedding_size", int, "user / item embedding size", minimum=1),
            Setting("n_layers", int, "refined propagation layers", minimum=1),
            Setting("reg_weight", float, "weight of the squared batch input embeddings",
                    minimum=0),
            Setting("dropout", float, "share of user-item edges pruned each training epoch",
                    minimum=0, maximum=0.99),
        ),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        size = int(config["embedding_size"])
        self.n_layers = int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.dropout = float(config["dropout"])
        self.interactions = dataset.inter_matrix(form="csr")
        full = to_torch_sparse(user_item_adjacency(self.interactions))
        self.register_buffer("full_adjacency", full, persistent=False)
        self.train_adjacency: torch.Tensor | None = None
        self.epochs_pruned = 0
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, size)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, size)))

    def train(self, mode: bool = True) -> "LayerGCN":
        # RecBole calls train() at the start of every epoch: a fresh pruned graph per epoch.
        if mode:
            self.train_adjacency = None
        return super().train(mode)

    def _adjacency(self) -> torch.Tensor:
        if not self.training or self.dropout <= 0:
            return self.full_adjacency
        if self.train_adjacency is None:
            keep = 1.0 - self.dropout
            if self.epochs_pruned % 2 == 0:
                pruned = degree_sensitive_edge_sample(self.interactions, keep)
            else:
                pruned = uniform_edge_sample(self.interactions, keep)
            self.epochs_pruned += 1
            self.train_adjacency = to_torch_sparse(pruned).to(self.device)
        return self.train_adjacency

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        adjacency = self._adjacency()
        ego = torch.cat([self.user_embedding, self.item_embedding])
        layer, total = ego, None
        for _ in range(self.n_layers):
            layer = sparse_matmul(adjacency, layer)
            layer = layer * F.cosine_similarity(layer, ego, dim=1).unsqueeze(1)
            total = layer if total is None else total + layer
        return torch.split(total, [self.n_users, self.n_items])

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        user, pos, neg = (interaction[self.USER_ID], interaction[self.ITEM_ID],
                          interaction[self.NEG_ITEM_ID])
        users, items = self.forward()
        difference = (users[user] * (items[pos] - items[neg])).sum(dim=1)
        bpr = -F.logsigmoid(difference).sum()
        reg = 0.5 * ((self.user_embedding[user] ** 2).sum() + (self.item_embedding[pos] ** 2).sum()
                     + (self.item_embedding[neg] ** 2).sum())
        return bpr + self.reg_weight * reg


def uniform_edge_sample(interactions: sp.spmatrix, keep_ratio: float) -> sp.csr_matrix:
    """Keep ``keep_ratio`` of the user-item edges drawn uniformly without replacement (torch's
    global RNG); the symmetric-normalised adjacency of the kept edges."""
    coo = (interactions.tocoo() > 0).tocoo()
    n_keep = max(int(coo.nnz * keep_ratio), 1)
    kept = torch.randperm(coo.nnz)[:n_keep].numpy()
    edges = sp.csr_matrix((np.ones(n_keep, dtype=np.float32), (coo.row[kept], coo.col[kept])),
                          shape=coo.shape)
    return user_item_adjacency(edges, normalization="symmetric")
