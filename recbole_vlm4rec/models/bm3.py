r"""BM3: bootstrapped latent representations, no negative sampling.

Reference:
    Xin Zhou, Hongyu Zhou, Yong Liu, Zhiwei Zeng, Chunyan Miao, Pengwei Wang, Yuan You, Feijun
    Jiang. "Bootstrap Latent Representations for Multi-modal Recommendation." WWW 2023.

With A the symmetric-normalised user-item adjacency and one modality m per feature in
``content_features`` (features f_i^m):

* Online representations: [E_u; E_i] = mean_{l=0..L} A^l [U; I] (LightGCN, L = ``n_layers``), items
  then add their ID embedding again: h_i = E_i + I_i. Each modality is projected,
  x_i^m = W_m f_i^m + b_m, to ``embedding_size``.
* Targets: the online vectors, detached, through dropout (``dropout``; scaled by 1/(1-p)):
  the paper's contrastive view generation without negatives.
* A shared predictor P (a linear map) turns online vectors into predictions. Loss, over the
  batch's (user, positive item) pairs:
  (1 - cos(P e_u, t_i)) + (1 - cos(P h_i, t_u))                    graph reconstruction
  + ``cl_weight`` * sum_m [(1 - cos(P x_i^m, t_i)) + (1 - cos(P x_i^m, t_i^m))]  inter- and
  intra-modality alignment (each term a batch mean)
  + ``reg_weight`` * (||E_u||_F + ||H_i||_F) / n_items over every user and item (unsquared
  Frobenius norms, as MMRec).
* Score = P e_u . P h_i.

Defaults are the first value of each grid in MMRec's ``BM3.yaml``. With ``content_features:
[visual, text]`` this computes what MMRec's implementation computes; the paper and MMRec have an
image and a text modality, here any number >= 1 (each adds its two alignment terms). Deviations
from MMRec's implementation, and why:

* RecBole samples a negative item for every training pair (its pairwise loader); BM3 never reads
  it. Batches hold the same 2048 (user, positive) pairs as MMRec's loader without negatives.
* RecBole's padding user and item (id 0) are left out of the norm penalty and its divisor is the
  number of real items: MMRec has no padding rows, so this keeps its value.
* Dropout, the predictor and the feature projections are applied to the batch's distinct users
  and items only (MMRec: to every user and item, then it picks the batch's rows): the same values
  and masks (one per user or item), less work.
* ``train_features`` (default True, as MMRec: the raw features are a trainable copy) can be
  set False to keep the dataset's features fixed (cheaper).

Items without a vector for a feature enter that modality with f_i^m = 0 (counted in the log).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn

from recbole_vlm4rec.models._graph import (CachedDotProductScores, FeatureTables, lightgcn_mean,
                                           to_torch_sparse, user_item_adjacency)
from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models import _memory
from recbole_vlm4rec.models.contract import CONTENT_FEATURES_KEY, Features, ModelContract, Setting
from recbole_vlm4rec.models.features import require_content_features


@register_model
class BM3(CachedDotProductScores, GeneralRecommender):
    r"""Bootstrapped multimodal latent representations without negatives (Zhou et al., WWW'23)."""

    input_type = InputType.PAIRWISE
    contract = ModelContract(
        memory_estimate=_memory.bm3,
        settings=(
            Setting("embedding_size", int, "ID embedding size; every feature is projected to it",
                    minimum=1),
            Setting("n_layers", int, "LightGCN layers over the user-item graph", minimum=0),
            Setting("dropout", float, "dropout making the target views of the online vectors",
                    minimum=0, maximum=1),
            Setting("reg_weight", float, "weight of the unsquared Frobenius norms of all user "
                    "and item vectors / number of items", minimum=0),
            Setting("cl_weight", float, "weight of the feature alignment losses", minimum=0),
            Setting("train_features", bool, "fine-tune a copy of the raw feature matrices "
                    "(MMRec); False = fixed, cheaper"),
        ),
        features=Features(CONTENT_FEATURES_KEY, doc="one modality per feature, e.g. [visual, text]"),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = int(config["embedding_size"])
        self.n_layers = int(config["n_layers"])
        self.dropout = float(config["dropout"])
        self.reg_weight = float(config["reg_weight"])
        self.cl_weight = float(config["cl_weight"])
        features = require_content_features(config, dataset)
        self.feature_names = [feature.name for feature in features]
        self.features = FeatureTables(features, trainable=bool(config["train_features"]))

        adjacency = user_item_adjacency(dataset.inter_matrix(form="csr"))
        self.register_buffer("adjacency", to_torch_sparse(adjacency), persistent=False)
        size = self.embedding_size
        self.user_embedding = nn.Embedding(self.n_users, size)
        self.item_embedding = nn.Embedding(self.n_items, size)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.predictor = nn.Linear(size, size)
        nn.init.xavier_normal_(self.predictor.weight)
        self.projections = nn.ModuleList(nn.Linear(f.dim, size) for f in features)
        for projection in self.projections:
            nn.init.xavier_normal_(projection.weight)

    def _online(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user, item) online vectors before the predictor."""
        ids = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        users, items = torch.split(lightgcn_mean(self.adjacency, ids, self.n_layers),
                                   [self.n_users, self.n_items])
        return users, items + self.item_embedding.weight

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self._online()
        return self.predictor(users), self.predictor(items)

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        # MMRec draws one dropout mask per user / item row, then picks the batch's rows: a user or
        # item twice in a batch has one mask. The same here, on the batch's distinct rows only.
        distinct_users, user_rows = torch.unique(interaction[self.USER_ID], return_inverse=True)
        distinct_items, item_rows = torch.unique(interaction[self.ITEM_ID], return_inverse=True)
        users, items = self._online()
        online_users, online_items = users[distinct_users], items[distinct_items]
        user_target = F.dropout(online_users.detach(), self.dropout)[user_rows]
        item_target = F.dropout(online_items.detach(), self.dropout)[item_rows]
        loss = (_distance(self.predictor(online_users)[user_rows], item_target)
                + _distance(self.predictor(online_items)[item_rows], user_target))
        alignment = 0.0
        for index, projection in enumerate(self.projections):
            projected = projection(self.features.rows(index, distinct_items))
            prediction = self.predictor(projected)[item_rows]
            feature_target = F.dropout(projected.detach(), self.dropout)[item_rows]
            alignment = (alignment + _distance(prediction, item_target)
                         + _distance(prediction, feature_target))
        # Padding rows (id 0) are not in MMRec's matrices: left out of the norms and the divisor.
        norms = users[1:].norm() + items[1:].norm()
        return loss + self.cl_weight * alignment + self.reg_weight * norms / (self.n_items - 1)


def _distance(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity of matching rows."""
    return 1.0 - F.cosine_similarity(prediction, target, dim=-1).mean()
