r"""SelfCF (embedding-dropout variant): self-supervised collaborative filtering without negatives.

Reference:
    Xin Zhou, Aixin Sun, Yong Liu, Jie Zhang, Chunyan Miao. "SelfCF: A Simple Framework for
    Self-supervised Collaborative Filtering." ACM Transactions on Recommender Systems 2023.

Collaborative filtering only (no item features); MMRec's ``SELFCFED_LGN``: the SELFCF_ed variant
with a LightGCN encoder. With A the symmetric-normalised user-item graph and learned E_u, E_i
(``embedding_size``):

* **Online encoder.** LightGCN (``n_layers``, mean of layers 0..L). While training, each batch
  drops the entries of A at a rate r drawn uniformly from [0, 1) for that batch and scales the
  kept ones by 1/(1 - r) (edge dropout as in MMRec's encoder: each direction of an edge
  independently).
* **Targets** are the online embeddings, detached, under ``dropout`` (the "ed" perturbation).
* **Loss** over the batch's (user, positive item) pairs, with P a linear predictor:
  -cos(P u, target(i)) / 2 - cos(P i, target(u)) / 2 + ``reg_weight`` * 1/2 (||u||^2 + ||i||^2)
  (u, i the online embeddings of the batch). No negative item is used.
* **Score** (full graph, no dropout) = P(u) . i + u . P(i).

Defaults are the first value of each MMRec grid (``SELFCFED_LGN.yaml``: 1 layer, dropout 0.1,
reg_weight 0.1). Deviations from MMRec's ``models/selfcfed_lgn.py``: none in the maths. The
batches are (user, positive item) pairs with no sampled negative, as MMRec's
(``train_neg_sample_args: ~`` in ``SelfCF.yaml``; sampling negatives that nothing reads took about
a third of each training epoch on posters). Each batch's drop rate comes from torch's generator
(MMRec: numpy's), so the same seed does not draw the same graphs on both sides.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn

from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models import _memory
from recbole_vlm4rec.models._graph import (CachedDotProductScores, lightgcn_mean, to_torch_sparse,
                                           user_item_adjacency)
from recbole_vlm4rec.models.contract import ModelContract, Setting


@register_model
class SelfCF(CachedDotProductScores, GeneralRecommender):
    r"""Self-supervised CF with embedding-dropout targets and a LightGCN encoder (Zhou et al., TORS'23)."""

    # (user, positive item) pairs: SelfCF.yaml turns RecBole's negative sampling off
    # (train_neg_sample_args: ~), as MMRec's SELFCFED_LGN.yaml does (use_neg_sampling: False)
    input_type = InputType.PAIRWISE
    contract = ModelContract(
        memory_estimate=_memory.selfcf,
        settings=(
            Setting("embedding_size", int, "user / item embedding size", minimum=1),
            Setting("n_layers", int, "LightGCN layers of the online encoder", minimum=0),
            Setting("dropout", float, "dropout of the target embeddings (the 'ed' "
                    "perturbation)", minimum=0, maximum=0.99),
            Setting("reg_weight", float, "weight of the squared batch online embeddings",
                    minimum=0),
        ),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        size = int(config["embedding_size"])
        self.n_layers = int(config["n_layers"])
        self.dropout = float(config["dropout"])
        self.reg_weight = float(config["reg_weight"])
        adjacency = user_item_adjacency(dataset.inter_matrix(form="csr"))
        adjacency.sort_indices()
        self.register_buffer("adjacency", to_torch_sparse(adjacency), persistent=False)
        adjacency = adjacency.tocoo()  # row-major, sorted: coalesced
        self.register_buffer("edge_index", torch.from_numpy(
            np.vstack([adjacency.row, adjacency.col]).astype(np.int64)), persistent=False)
        self.register_buffer("edge_values", torch.from_numpy(adjacency.data), persistent=False)
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, size)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, size)))
        self.predictor = nn.Linear(size, size)

    def _dropped_adjacency(self) -> torch.Tensor:
        """A with each entry kept with probability 1 - r (r ~ U[0, 1) per call), kept entries
        scaled by 1 / (1 - r)."""
        rate = float(torch.rand(()))
        kept = torch.rand(len(self.edge_values), device=self.edge_values.device) >= rate
        size = (self.n_users + self.n_items,) * 2
        # kept as COO: converting each batch's graph to CSR cost more than the product saves
        with warnings.catch_warnings():  # "Sparse invariant checks are implicitly disabled"
            warnings.simplefilter("ignore", UserWarning)
            kept = kept.nonzero().squeeze(1)  # once, for both gathers
            return torch.sparse_coo_tensor(self.edge_index.index_select(1, kept),
                                           self.edge_values.index_select(0, kept) / (1.0 - rate),
                                           size, is_coalesced=True)

    def _encode(self, adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nodes = torch.cat([self.user_embedding, self.item_embedding])
        if adjacency is self.adjacency:
            propagated = lightgcn_mean(adjacency, nodes, self.n_layers)
        else:  # not symmetric: torch's own backward of the product
            total, layer = nodes, nodes
            for _ in range(self.n_layers):
                layer = torch.sparse.mm(adjacency, layer)
                total = total + layer
            propagated = total / (self.n_layers + 1)
        return torch.split(propagated, [self.n_users, self.n_items])

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self._encode(self.adjacency)
        return (torch.cat([self.predictor(users), users], dim=1),
                torch.cat([items, self.predictor(items)], dim=1))

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        user, pos = interaction[self.USER_ID], interaction[self.ITEM_ID]
        users, items = self._encode(self._dropped_adjacency())
        online_user, online_item = users[user], items[pos]
        with torch.no_grad():
            target_user = F.dropout(online_user.detach(), self.dropout)
            target_item = F.dropout(online_item.detach(), self.dropout)
        loss = -(F.cosine_similarity(self.predictor(online_user), target_item, dim=-1).mean()
                 + F.cosine_similarity(self.predictor(online_item), target_user, dim=-1).mean()) / 2
        reg = 0.5 * ((online_user ** 2).sum() + (online_item ** 2).sum())
        return loss + self.reg_weight * reg
