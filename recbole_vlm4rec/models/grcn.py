r"""GRCN: a user-item graph refined by each modality, then a graph convolution of ID embeddings.

Reference:
    Yinwei Wei, Xiang Wang, Liqiang Nie, Xiangnan He, Tat-Seng Chua. "Graph-Refined Convolutional
    Network for Multimedia Recommendation with Implicit Feedback." ACM MM 2020.

One modality m per feature in ``content_features`` (features f_i^m), R the training edges:

* **Modality nodes.** Items x_i^m = normalize(leaky_relu(W_m f_i^m + b_m)) (``latent_dim``);
  users a learned preference p_u^m, normalised. ``n_routing`` routing rounds (the paper's
  prototype learning) move each user towards the items it interacted with:
  p_u^m <- normalize(p_u^m + sum_{i in N(u)} softmax_i(p_u^m . x_i^m) x_i^m).
* **Graph refining.** Per edge and direction, the attention of the node it enters:
  a^m_{u->i} = softmax over the users of i of (p_u^m . x_i^m), a^m_{i->u} = softmax over the items
  of u of the same score. With a learned confidence c_v^m of every node per modality, the edge
  weight for a message from node v is w = relu(max_m a^m c_v^m) (MMRec's ``confid`` weighting with
  pruning: negative weights cut the edge).
* **Modality representation.** h_v^m = x_v^m + sum over v's neighbours of a^m x (attention-
  weighted, in both directions).
* **ID graph convolution.** e = normalize(E_id); e1 = W e, e2 = W e1 with W the refined, weighted
  user-item graph (sum aggregation); id_v = e + e1 + e2.
* **Score.** Representation r_v = [id_v, h_v^1, ..., h_v^M]; score = r_u . r_i. Loss = BPR +
  ``reg_weight`` * (mean(E_u^2) + mean(E_items^2) over the batch's user and its positive and
  negative items + sum over modalities of mean(p^m^2) over the batch's users + over all users).

Defaults are the first value of each MMRec grid (``GRCN.yaml``: reg_weight 0.1, learning rate
1; the paper's code and MMRec fix weighting ``confid``, fusion ``concat``, aggregation ``add``,
no activation, normalised inputs, as here). Any number of modalities (the paper has three).

Deviations from MMRec's ``models/grcn.py``, and why:

* **Routing.** MMRec's ``n_layers: 3`` is the number of routing rounds, but its attention layer
  only sends messages from users to items there (torch_geometric's source-to-target flow on the
  one-directional edge list), so the user preferences never move: routing is a no-op in MMRec
  (checked by running its layer). Here ``n_routing`` rounds update the preferences as the paper
  describes; ``n_routing: 0`` is what MMRec computes.
* **Preference penalty.** MMRec penalises the preferences of *all* users for the first (visual)
  modality only, besides every modality's batch users; here every modality's preferences get both
  terms, so no feature is special (with ``[visual, text]`` the text term over all users is extra).
* **Ranking.** MMRec ranks with the representation of the last training batch's forward pass
  (computed before that batch's update); here one forward pass after training, as for MMGCN.
* Unused in MMRec and absent here: its confidence penalty (computed, never added), the dropout of
  edges (p = 0), the word-embedding text path.

Items without a vector for a modality enter it as the projection of a zero vector (counted in the
log).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn

from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models import _memory
from recbole_vlm4rec.models._graph import CachedDotProductScores, register_feature_buffers
from recbole_vlm4rec.models._message_passing import UserItemEdges
from recbole_vlm4rec.models.contract import CONTENT_FEATURES_KEY, Features, ModelContract, Setting
from recbole_vlm4rec.models.features import require_content_features


@register_model
class GRCN(CachedDotProductScores, GeneralRecommender):
    r"""Graph-refined convolution: modality attention prunes the user-item graph (Wei et al., MM'20)."""

    input_type = InputType.PAIRWISE
    contract = ModelContract(
        memory_estimate=_memory.grcn,
        settings=(
            Setting("embedding_size", int, "ID embedding size", minimum=1),
            Setting("latent_dim", int, "size each modality's features and user preferences are "
                    "projected to (MMRec: latent_embedding)", minimum=1),
            Setting("n_routing", int, "routing rounds moving user preferences towards their "
                    "items (MMRec's n_layers; a no-op in MMRec's code, 0 reproduces it)",
                    minimum=0),
            Setting("reg_weight", float, "weight of the squared batch ID embeddings and user "
                    "preferences", minimum=0),
        ),
        features=Features(CONTENT_FEATURES_KEY, doc="one modality per feature, e.g. [visual, text]"),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = int(config["embedding_size"])
        self.latent_dim = int(config["latent_dim"])
        self.n_routing = int(config["n_routing"])
        self.reg_weight = float(config["reg_weight"])
        features = require_content_features(config, dataset)
        self.feature_names = [feature.name for feature in features]
        register_feature_buffers(self, features)
        self.edges = UserItemEdges(dataset.inter_matrix(form="csr"))

        n_nodes, n_modalities = self.n_users + self.n_items, len(features)
        self.id_embedding = nn.Parameter(
            nn.init.xavier_normal_(torch.empty(n_nodes, self.embedding_size)))
        self.preferences = nn.ParameterList(
            nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, self.latent_dim)))
            for _ in features)
        self.projections = nn.ModuleList(nn.Linear(f.dim, self.latent_dim) for f in features)
        for projection in self.projections:
            nn.init.xavier_normal_(projection.weight)
        # one confidence per node and modality, scaling the messages the node sends
        self.confidence = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_nodes, n_modalities)))

    def _modality(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Modality ``index``: its representation of every node and the attention of each edge
        seen from its item (u -> i) and from its user (i -> u)."""
        items = F.normalize(F.leaky_relu(
            self.projections[index](getattr(self, f"feature_{index}"))), dim=1)
        users = F.normalize(self.preferences[index], dim=1)
        for _ in range(self.n_routing):
            attention = self.edges.softmax_per_user(self.edges.dot(users, items))
            users = F.normalize(users + self.edges.to_users(items, attention), dim=1)
        scores = self.edges.dot(users, items)
        into_items = self.edges.softmax_per_item(scores)
        into_users = self.edges.softmax_per_user(scores)
        representation = torch.cat([users + self.edges.to_users(items, into_users),
                                    items + self.edges.to_items(users, into_items)])
        return representation, into_items, into_users

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        content, into_items, into_users = zip(*(self._modality(index)
                                                for index in range(len(self.projections))))
        confidence_users = self.confidence[:self.n_users][self.edges.users]
        confidence_items = self.confidence[self.n_users:][self.edges.items]
        # weight of a message = relu(max over modalities of attention x the sender's confidence)
        to_items = F.relu((torch.stack(into_items, dim=1) * confidence_users).amax(dim=1))
        to_users = F.relu((torch.stack(into_users, dim=1) * confidence_items).amax(dim=1))

        layer = F.normalize(self.id_embedding, dim=1)
        total = layer
        for _ in range(2):
            users, items = torch.split(layer, [self.n_users, self.n_items])
            layer = torch.cat([self.edges.to_users(items, to_users),
                               self.edges.to_items(users, to_items)])
            total = total + layer
        representation = torch.cat([total, *content], dim=1)
        return torch.split(representation, [self.n_users, self.n_items])

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        user, pos, neg = (interaction[self.USER_ID], interaction[self.ITEM_ID],
                          interaction[self.NEG_ITEM_ID])
        users, items = self.forward()
        pos_scores = (users[user] * items[pos]).sum(dim=1)
        neg_scores = (users[user] * items[neg]).sum(dim=1)
        bpr = -F.logsigmoid(pos_scores - neg_scores).mean()
        ids = self.id_embedding
        reg = (ids[user] ** 2).mean() + (ids[self.n_users + torch.cat([pos, neg])] ** 2).mean()
        for preference in self.preferences:
            reg = reg + (preference[user] ** 2).mean() + (preference ** 2).mean()
        return bpr + self.reg_weight * reg
