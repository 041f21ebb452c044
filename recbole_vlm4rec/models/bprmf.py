r"""BPRMF: matrix factorisation trained with the BPR loss and a penalty on the batch's embeddings.

Reference:
    Steffen Rendle, Christoph Freudenthaler, Zeno Gantner, Lars Schmidt-Thieme. "BPR: Bayesian
    Personalized Ranking from Implicit Feedback." UAI 2009.

score(u, i) = gamma_u . gamma_i. The loss is the one MMRec's BPR baseline (and the papers that
report it) trains with:

    -mean(log(1e-10 + sigmoid(s_ui - s_uj)))
        + reg_weight * (||U_b||_F + ||P_b||_F + ||N_b||_F) / batch_size

with U_b, P_b, N_b the batch's user, positive-item and negative-item embedding matrices and
||.||_F the (unsquared) Frobenius norm. RecBole's own ``BPR`` has no penalty and ignores
``reg_weight``; this class keeps that name free so ``--model=BPR`` still means RecBole's model.
"""

from __future__ import annotations

from typing import Any

import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_normal_initialization
from recbole.model.loss import BPRLoss, EmbLoss
from recbole.utils import InputType
from torch import nn

from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models import _memory
from recbole_vlm4rec.models.contract import ModelContract, Setting


@register_model
class BPRMF(GeneralRecommender):
    r"""BPR matrix factorisation with MMRec's embedding penalty (Rendle et al., UAI'09)."""

    input_type = InputType.PAIRWISE
    contract = ModelContract(memory_estimate=_memory.bprmf, settings=(
        Setting("embedding_size", int, "size of the user and item embeddings", minimum=1),
        Setting("reg_weight", float, "weight of (||U_b||_F + ||P_b||_F + ||N_b||_F) / batch size",
                minimum=0),
    ))

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = int(config["embedding_size"])
        self.reg_weight = float(config["reg_weight"])
        self.user_embedding = nn.Embedding(self.n_users, self.embedding_size)
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size)
        self.bpr_loss = BPRLoss()
        # RecBole's EmbLoss without require_pow: sum of unsquared Frobenius norms / batch size.
        self.reg_loss = EmbLoss()
        self.apply(xavier_normal_initialization)

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        users = self.user_embedding(interaction[self.USER_ID])
        pos = self.item_embedding(interaction[self.ITEM_ID])
        neg = self.item_embedding(interaction[self.NEG_ITEM_ID])
        pos_scores = (users * pos).sum(dim=1)
        neg_scores = (users * neg).sum(dim=1)
        reg = self.reg_loss(users, pos, neg)
        return self.bpr_loss(pos_scores, neg_scores) + self.reg_weight * reg.squeeze()

    def predict(self, interaction: Any) -> torch.Tensor:
        users = self.user_embedding(interaction[self.USER_ID])
        return (users * self.item_embedding(interaction[self.ITEM_ID])).sum(dim=1)

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        users = self.user_embedding(interaction[self.USER_ID])
        return (users @ self.item_embedding.weight.T).reshape(-1)
