r"""VBPR: BPR matrix factorisation plus a learned projection of item content features.

Reference:
    Ruining He, Julian McAuley. "VBPR: Visual Bayesian Personalized Ranking from Implicit
    Feedback." AAAI 2016.

score(u, i) = gamma_u . gamma_i + theta_u . (E f_i) + beta_i + beta' . f_i, trained with the BPR
loss (the global and user biases of the paper cancel in pairwise differences). ``f_i`` is the
concatenation of the features in ``content_features`` (raw visual, text, VLM descriptions...);
``E`` projects it to ``embedding_size`` like MMRec's VBPR, so a user vector is
``[gamma_u, theta_u]`` of size 2 * embedding_size. Items without a vector for a feature have zeros
in its part of ``f_i`` (counted in the log): they are scored by ``gamma_i`` and ``beta_i`` alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_normal_initialization
from recbole.model.loss import BPRLoss, EmbLoss
from recbole.utils import InputType
from torch import nn

from recbole_vlm4rec.models._graph import EvaluationCache
from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models.features import CONTENT_FEATURES_KEY, require_content_features


@register_model
class VBPR(EvaluationCache, GeneralRecommender):
    r"""BPR-MF with a content-based item factor (He & McAuley, AAAI'16)."""

    input_type = InputType.PAIRWISE
    feature_key = CONTENT_FEATURES_KEY  # the config key naming the dataset features it reads

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = int(config["embedding_size"])
        self.reg_weight = float(config["reg_weight"])
        features = require_content_features(config, dataset)
        self.feature_names = [feature.name for feature in features]
        content = np.concatenate([feature.matrix for feature in features], axis=1)
        # A buffer: moves with .to(device), stays out of checkpoints (the dataset owns the data).
        self.register_buffer("content", torch.from_numpy(content), persistent=False)

        self.user_embedding = nn.Embedding(self.n_users, 2 * self.embedding_size)
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size)
        self.item_bias = nn.Embedding(self.n_items, 1)
        self.content_projection = nn.Linear(content.shape[1], self.embedding_size, bias=False)
        self.content_bias = nn.Linear(content.shape[1], 1, bias=False)
        self.bpr_loss = BPRLoss()
        self.reg_loss = EmbLoss()
        self.apply(xavier_normal_initialization)
        nn.init.zeros_(self.item_bias.weight)
        nn.init.zeros_(self.content_bias.weight)

    def _items(self, items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``([gamma_i, E f_i], beta_i + beta' f_i)`` of ``items`` (all items when None)."""
        content = self.content if items is None else self.content[items]
        ids = self.item_embedding.weight if items is None else self.item_embedding(items)
        bias = self.item_bias.weight if items is None else self.item_bias(items)
        vectors = torch.cat([ids, self.content_projection(content)], dim=1)
        return vectors, (bias + self.content_bias(content)).squeeze(1)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._items()

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        users = self.user_embedding(interaction[self.USER_ID])
        # Only the batch's items are projected: the full catalogue's features are large.
        pos, pos_bias = self._items(interaction[self.ITEM_ID])
        neg, neg_bias = self._items(interaction[self.NEG_ITEM_ID])
        pos_scores = (users * pos).sum(dim=1) + pos_bias
        neg_scores = (users * neg).sum(dim=1) + neg_bias
        reg = self.reg_loss(users, pos, neg)
        return self.bpr_loss(pos_scores, neg_scores) + self.reg_weight * reg

    def predict(self, interaction: Any) -> torch.Tensor:
        vectors, bias = self._items(interaction[self.ITEM_ID])
        return (self.user_embedding(interaction[self.USER_ID]) * vectors).sum(dim=1) + bias

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        vectors, bias = self.cached_forward()
        users = self.user_embedding(interaction[self.USER_ID])
        return (users @ vectors.T + bias).reshape(-1)
