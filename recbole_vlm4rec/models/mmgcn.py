r"""MMGCN: one graph convolution network per modality, with modality-specific user preferences.

Reference:
    Yinwei Wei, Xiang Wang, Liqiang Nie, Xiangnan He, Richang Hong, Tat-Seng Chua. "MMGCN:
    Multi-modal Graph Convolution Network for Personalized Recommendation of Micro-video."
    ACM MM 2019.

Each feature in ``content_features`` is a modality m. Its nodes are users (a learned preference
vector p_u^m) and items (the feature projected to ``latent_dim``); per layer, on the user-item
graph with mean aggregation, concatenation combiner and shared ID embeddings id_v:

    h = leaky_relu(mean_{j in N(v)} W x_j)                       (aggregation)
    x_hat = leaky_relu(L x_v) + id_v                             (ID-enhanced self representation)
    x_v <- leaky_relu(G [h, x_hat])                              (combination)

The final user / item representation is the mean over modalities; score = dot product, BPR loss
plus ``reg_weight`` * (mean(id_u^2) + mean(id_pos^2) + mean(id_neg^2) + sum_m mean(p^m^2)) over
the batch. Items without a vector for a modality enter it as the projection of a zero vector
(counted in the log).

What MMRec's MMGCN (``src/models/mmgcn.py``, the usual reference for published numbers) does, and
where this port differs on purpose:

- Depth: MMRec's GCN hard-codes three layers and never reads ``n_layers`` (its yaml's
  ``n_layers: 2`` has no effect). Here ``n_layers`` is read; the default 3 is what MMRec runs.
- Trained tensors: MMRec builds ``id_embedding`` and each GCN's ``preference`` as plain tensors,
  not ``nn.Parameter``s, so the optimiser never updates them: they stay at their random
  initialisation, and its penalty (which only involves them) has no gradient, i.e. ``reg_weight``
  does nothing there. Here both are parameters, trained as in the paper, and ``reg_weight`` acts.
  MMRec's penalty weighs the positive and negative ID terms by 1/2 each and only the visual
  preference; here each ID term counts once and every modality's preference is penalised.
- Projection: MMRec projects only the visual features (to 256) and feeds text raw (its first
  aggregation weight is then 384 x 384). Here every modality is projected to ``latent_dim``:
  ``content_features`` is any list of features (visual, text, VLM descriptions...), so no feature
  is special, and the first layer stays ``latent_dim`` wide whatever a feature's size.
- Evaluation: MMRec ranks with the representation of the last training batch's forward pass
  (computed before that batch's update); here one forward pass after training is used.
- Initialisation: MMRec leaves its second and third combination layers at PyTorch's default
  init; here every aggregation, self and combination layer is Xavier-normal (the feature
  projection keeps PyTorch's default in both).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn

from recbole_vlm4rec.models._graph import (CachedDotProductScores, register_feature_buffers,
                                           to_torch_sparse, user_item_adjacency)
from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models import _memory
from recbole_vlm4rec.models.contract import CONTENT_FEATURES_KEY, Features, ModelContract, Setting
from recbole_vlm4rec.models.features import require_content_features


class ModalityGCN(nn.Module):
    """One modality's graph convolution stack (users: preferences; items: projected features)."""

    def __init__(self, n_users: int, feature_dim: int, latent_dim: int, id_dim: int,
                 n_layers: int) -> None:
        super().__init__()
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, latent_dim)))
        self.projection = nn.Linear(feature_dim, latent_dim)
        dims = [latent_dim] + [id_dim] * n_layers
        self.aggregate = nn.ParameterList(
            nn.Parameter(nn.init.xavier_normal_(torch.empty(dims[i], dims[i])))
            for i in range(n_layers)
        )
        self.self_linear = nn.ModuleList(nn.Linear(dims[i], id_dim) for i in range(n_layers))
        self.combine = nn.ModuleList(nn.Linear(dims[i] + id_dim, id_dim) for i in range(n_layers))
        for layer in [*self.self_linear, *self.combine]:
            nn.init.xavier_normal_(layer.weight)

    def forward(self, features: torch.Tensor, adjacency: torch.Tensor,
                id_embedding: torch.Tensor) -> torch.Tensor:
        x = F.normalize(torch.cat([self.preference, self.projection(features)]), dim=1)
        for weight, self_linear, combine in zip(self.aggregate, self.self_linear, self.combine):
            h = F.leaky_relu(torch.sparse.mm(adjacency, x @ weight))
            x_hat = F.leaky_relu(self_linear(x)) + id_embedding
            x = F.leaky_relu(combine(torch.cat([h, x_hat], dim=1)))
        return x


@register_model
class MMGCN(CachedDotProductScores, GeneralRecommender):
    r"""Per-modality graph convolution, modality-specific user preferences (Wei et al., MM'19)."""

    input_type = InputType.PAIRWISE
    contract = ModelContract(
        memory_estimate=_memory.mmgcn,
        settings=(
            Setting("embedding_size", int, "ID embedding and output size", minimum=1),
            Setting("latent_dim", int, "size every modality's features and user preferences are "
                    "projected to (MMRec: visual only)", minimum=1),
            Setting("n_layers", int, "graph convolution layers per modality (MMRec's yaml says "
                    "2, its code always runs 3)", minimum=1),
            Setting("reg_weight", float, "weight of the squared batch ID embeddings + "
                    "preferences (no effect in MMRec: untrained tensors)", minimum=0),
        ),
        features=Features(CONTENT_FEATURES_KEY, doc="one modality per feature, e.g. [visual, text]"),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = int(config["embedding_size"])
        self.latent_dim = int(config["latent_dim"])
        self.n_layers = int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        features = require_content_features(config, dataset)
        self.feature_names = [feature.name for feature in features]
        register_feature_buffers(self, features)
        adjacency = user_item_adjacency(dataset.inter_matrix(form="csr"), normalization="mean")
        self.register_buffer("adjacency", to_torch_sparse(adjacency), persistent=False)
        self.id_embedding = nn.Parameter(
            nn.init.xavier_normal_(torch.empty(self.n_users + self.n_items, self.embedding_size))
        )
        self.modalities = nn.ModuleList(
            ModalityGCN(self.n_users, f.dim, self.latent_dim, self.embedding_size, self.n_layers)
            for f in features
        )

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [
            modality(getattr(self, f"feature_{index}"), self.adjacency, self.id_embedding)
            for index, modality in enumerate(self.modalities)
        ]
        representation = torch.stack(outputs).mean(dim=0)
        return torch.split(representation, [self.n_users, self.n_items])

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        user, pos, neg = (interaction[self.USER_ID], interaction[self.ITEM_ID],
                          interaction[self.NEG_ITEM_ID])
        users, items = self.forward()
        pos_scores = (users[user] * items[pos]).sum(dim=1)
        neg_scores = (users[user] * items[neg]).sum(dim=1)
        bpr = -F.logsigmoid(pos_scores - neg_scores).mean()
        ids = self.id_embedding
        reg = (ids[user] ** 2).mean() + (ids[self.n_users + pos] ** 2).mean() \
            + (ids[self.n_users + neg] ** 2).mean()
        reg = reg + sum((m.preference ** 2).mean() for m in self.modalities)
        return bpr + self.reg_weight * reg
