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

Regularisation: the paper penalises every parameter, the item bias beta_i and the visual bias
beta' included. In MMRec's form (penalty on the batch's representations, as the BPRMF baseline)
the penalty is

    reg_weight * (||U_b||_F + ||I_b^+||_F + ||I_b^-||_F) / batch_size

with U_b the rows [gamma_u, theta_u] and I_b the rows [gamma_i, E f_i, beta' . f_i, beta_i] of
the batch, so both bias terms shrink with the rest.

``use_bias: False`` is MMRec's VBPR exactly: no item bias beta_i and no visual bias beta'; the
item rows are [gamma_i, E f_i + b] with b the projection's shared offset (MMRec's ``nn.Linear``
has one: it cancels in every BPR difference and in the ranking, but it enters the penalty, which
pulls it towards minus the mean projected feature); the ID factors gamma, theta start
Xavier-uniform as MMRec's (the paper's form: Xavier-normal, RecBole's default; same variance).

``True`` (the default) is the paper's model: where the factors train both forms rank alike,
while at a penalty large enough to collapse the factors (MMRec's first grid value, 2.0, on the
ml-100k-posters export) the paper's biases survive and keep a popularity-like ranking instead of
one near chance. The paper's form is the default because it is the model the paper defines and
degrades gracefully; ``use_bias: False`` is there to reproduce MMRec's VBPR (side-by-side numbers
in docs/models.md).
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
from recbole_vlm4rec.models import _memory
from recbole_vlm4rec.models.contract import (CONTENT_FEATURES_KEY, Capabilities, Features,
                                             ModelContract, Setting)
from recbole_vlm4rec.models.features import require_content_features


@register_model
class VBPR(EvaluationCache, GeneralRecommender):
    r"""BPR-MF with a content-based item factor (He & McAuley, AAAI'16)."""

    input_type = InputType.PAIRWISE
    contract = ModelContract(
        memory_estimate=_memory.vbpr,
        settings=(
            Setting("embedding_size", int, "size of gamma and of the projected content E f_i "
                    "(user vector: 2x)", minimum=1),
            Setting("reg_weight", float, "weight of (sum of unsquared Frobenius norms of the "
                    "batch's user / item rows, both biases included) / batch size", minimum=0),
            Setting("use_bias", bool, "the paper's item bias beta_i and visual bias beta' . f_i; "
                    "False = MMRec's VBPR (no biases, a shared offset on E f_i, Xavier-uniform "
                    "ID factors)"),
        ),
        features=Features(CONTENT_FEATURES_KEY, doc="features concatenated into f_i"),
        capabilities=Capabilities(scores_new_items=True),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = int(config["embedding_size"])
        self.reg_weight = float(config["reg_weight"])
        self.use_bias = bool(config["use_bias"])
        # item rows: [gamma_i, E f_i (+ b)] then, with biases, [beta' . f_i, beta_i]
        self.n_bias_columns = 2 if self.use_bias else 0
        features = require_content_features(config, dataset)
        self.feature_names = [feature.name for feature in features]
        content = np.concatenate([feature.matrix for feature in features], axis=1)
        # A buffer: moves with .to(device), stays out of checkpoints (the dataset owns the data).
        self.register_buffer("content", torch.from_numpy(content), persistent=False)

        self.user_embedding = nn.Embedding(self.n_users, 2 * self.embedding_size)
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size)
        if self.use_bias:
            self.item_bias = nn.Embedding(self.n_items, 1)
            # E (first embedding_size outputs) and beta' (last output) in one map: f_i is read once.
            self.content_projection = nn.Linear(content.shape[1], self.embedding_size + 1,
                                                bias=False)
        else:
            self.content_projection = nn.Linear(content.shape[1], self.embedding_size)
        self.bpr_loss = BPRLoss()
        self.reg_loss = EmbLoss()
        self.apply(xavier_normal_initialization)  # a Linear's offset starts at 0
        if not self.use_bias:
            # MMRec's VBPR draws its ID factors Xavier-uniform (same variance; on the posters
            # export its collapse at reg_weight 2.0 is closer to MMRec's with this, see the docs)
            nn.init.xavier_uniform_(self.user_embedding.weight)
            nn.init.xavier_uniform_(self.item_embedding.weight)
        if self.use_bias:
            nn.init.zeros_(self.item_bias.weight)
            with torch.no_grad():
                self.content_projection.weight[-1].zero_()

    def _item_rows(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """``[gamma_i, E f_i, beta' . f_i, beta_i]`` of ``items`` (all items when None); without
        biases ``[gamma_i, E f_i + b]``."""
        if items is None:
            parts = [self.item_embedding.weight, self.content_projection(self.content)]
        else:
            parts = [self.item_embedding(items), self.content_projection(self.content[items])]
        if self.use_bias:
            parts.append(self.item_bias.weight if items is None else self.item_bias(items))
        return torch.cat(parts, dim=1)

    def _scores(self, users: torch.Tensor, item_rows: torch.Tensor) -> torch.Tensor:
        """Row-wise score of user vectors against item rows of the same length."""
        factors, biases = item_rows.split([2 * self.embedding_size, self.n_bias_columns], dim=1)
        return (users * factors).sum(dim=1) + biases.sum(dim=1)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All items' factors ``[gamma_i, E f_i]`` and total bias ``beta_i + beta' . f_i`` (zeros
        without biases)."""
        factors, biases = self._item_rows().split(
            [2 * self.embedding_size, self.n_bias_columns], dim=1)
        return factors, biases.sum(dim=1)

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        users = self.user_embedding(interaction[self.USER_ID])
        pos_ids, neg_ids = interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        # Each distinct item of the batch is projected once (not once per row); when they are
        # most of the catalogue, projecting all items is cheaper than gathering their features.
        distinct, index = torch.unique(torch.cat([pos_ids, neg_ids]), return_inverse=True)
        if 2 * len(distinct) > self.n_items:
            rows, index = self._item_rows(), torch.cat([pos_ids, neg_ids])
        else:
            rows = self._item_rows(distinct)
        pos, neg = rows[index[:len(pos_ids)]], rows[index[len(pos_ids):]]
        loss = self.bpr_loss(self._scores(users, pos), self._scores(users, neg))
        return loss + self.reg_weight * self.reg_loss(users, pos, neg).squeeze()

    def predict(self, interaction: Any) -> torch.Tensor:
        rows = self._item_rows(interaction[self.ITEM_ID])
        return self._scores(self.user_embedding(interaction[self.USER_ID]), rows)

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        factors, bias = self.cached_forward()
        users = self.user_embedding(interaction[self.USER_ID])
        return (users @ factors.T + bias).reshape(-1)
