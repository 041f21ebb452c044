r"""LGMRec: local (graph) and global (hypergraph) embeddings of users and items per modality.

Reference:
    Zhiqiang Guo, Jianjun Li, Guohui Li, Chaoyang Wang, Si Shi, Bin Ruan. "LGMRec: Local and
    Global Graph Learning for Multimodal Recommendation." AAAI 2024.

With A the symmetric-normalised user-item adjacency, R the binary (users x items) training
interactions and one modality m per feature in ``content_features`` (features f_i^m):

* Collaborative graph embedding (CGE): E^c = mean_{l=0..L} A^l E^0 over ID embeddings
  (LightGCN, L = ``n_ui_layers``; 0 layers is the paper's MF variant).
* Modality graph embedding (MGE): items e_i^m = f_i^m W_m, users the mean of their items'
  e_i^m; E^m = A^K [E_u^m; E_i^m] (K = ``n_mm_layers``, last layer only).
  Local embedding E^l = E^c + sum_m normalize(E^m).
* Global hypergraph embedding (GHE): ``hyper_num`` hyperedges per modality; item-hyperedge
  dependencies H_i^m = GumbelSoftmax(f_i^m V_m, tau), user ones H_u^m = GumbelSoftmax(R f^m V_m,
  tau). Per hypergraph layer (``n_hyper_layer``): Lambda = drop(H_i^m)^T E_i, E_i <-
  drop(H_i^m) Lambda, E_u^m = drop(H_u^m) Lambda, starting from the collaborative item
  embeddings E_i^c; dropout keeps ``keep_rate``. E^g = sum_m [E_u^m; E_i^m].
* Final E = E^l + ``alpha`` * normalize(E^g); score = dot product.
* Loss = BPR + ``cl_weight`` * L_HCL + ``reg_weight`` * (||e_u|| + ||e_p|| + ||e_n||) / batch, with
  L_HCL = sum over modality pairs (a, b) of InfoNCE(E_u^{g,a}, E_u^{g,b}) over the batch users
  against all users, plus the same for the batch's positive items against all items
  (cosine / ``temperature``, summed over the batch), as in the paper and MMRec.

Defaults are the first value of each grid in MMRec's ``LGMRec.yaml`` (its Baby setting). With
``content_features: [visual, text]`` this computes what MMRec's implementation computes; the
paper (and MMRec) have exactly two modalities, here any number >= 2 (HCL sums over pairs; one
feature works with ``cl_weight: 0``). Deviations from MMRec's implementation, and why:

* RecBole's padding user/item (id 0) have no hyperedge dependencies and are left out of the HCL
  denominators: MMRec has no padding rows, so this keeps its sums.
* Evaluation draws the Gumbel noise once per evaluation (MMRec: once per batch of 4096 users,
  since its ``full_sort_predict`` reruns the forward pass); scores stay stochastic as in MMRec.
* Each feature is read once per step by one matmul with [W_m, V_m] (MMRec: two), and the
  users' feature mean is one sparse product with D_u^-1 R: the same values, less work.
* The same values, computed in less work (tests/test_info_nce.py checks loss, gradients and
  scores against the formulas written out): a training step builds the final embeddings of its
  batch's rows only (everything after the propagations is row-wise); hypergraph layers after
  the first multiply Lambda by H_i^T H_i (hyper_num x hyper_num); the contrast works on the
  factors H and Lambda (candidates' norms from Lambda Lambda^T), never on n_users x dim rows.
* ``cf_model: mf`` is ``n_ui_layers: 0``; the temperature (MMRec: a constant 0.2) is a key.

Items without a vector for a feature enter that modality with f_i^m = 0 (counted in the log).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn

from recbole_vlm4rec.models._graph import (CachedDotProductScores, fixed_feature_product,
                                           lightgcn_mean, log_sum_exp_of_products,
                                           register_feature_buffers, sparse_matmul,
                                           to_torch_sparse, user_item_adjacency)
from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models import _memory
from recbole_vlm4rec.models.contract import (CONTENT_FEATURES_KEY, Features, ModelContract, Setting,
                                             equal_settings)
from recbole_vlm4rec.models.features import require_content_features


def _contrast_needs_two_features(values: Any) -> str | None:
    names = values.get(CONTENT_FEATURES_KEY) or []
    if float(values.get("cl_weight") or 0) > 0 and len(names) < 2:
        return (f"LGMRec's hypergraph contrastive loss contrasts modalities: content_features "
                f"names {len(names)} feature ({', '.join(names)}); give two or more, e.g. "
                "--content_features=[visual,text], or set --cl_weight=0")
    return None


@register_model
class LGMRec(CachedDotProductScores, GeneralRecommender):
    r"""Local graph + global hypergraph multimodal recommender (Guo et al., AAAI'24)."""

    input_type = InputType.PAIRWISE
    fused_adam = True  # one pass per parameter per step (compat.py); same update
    contract = ModelContract(
        memory_estimate=_memory.lgmrec,
        settings=(
            Setting("embedding_size", int, "user / item ID embedding size", minimum=1),
            Setting("feat_embed_dim", int, "size each feature is projected to (added to the ID "
                    "embeddings)", minimum=1),
            Setting("n_ui_layers", int, "LightGCN layers of the collaborative embedding (0 = MF, "
                    "MMRec's cf_model: mf)", minimum=0),
            Setting("n_mm_layers", int, "propagations of each modality's embeddings over the "
                    "user-item graph", minimum=0),
            Setting("n_hyper_layer", int, "hypergraph message-passing layers", minimum=1),
            Setting("hyper_num", int, "hyperedges per modality", minimum=1),
            Setting("keep_rate", float, "share of hyperedge dependencies kept by dropout while "
                    "training", above=0, maximum=1),
            Setting("alpha", float, "weight of the global (hypergraph) embedding in the final "
                    "one", minimum=0),
            Setting("cl_weight", float, "weight of the hypergraph contrastive loss between "
                    "modalities (needs >= 2 features when > 0)", minimum=0),
            Setting("reg_weight", float, "weight of the unsquared L2 norms of the batch "
                    "embeddings", minimum=0),
            Setting("temperature", float, "Gumbel-softmax and contrastive temperature", above=0),
        ),
        features=Features(CONTENT_FEATURES_KEY, doc="one modality per feature, e.g. [visual, text]"),
        checks=(equal_settings("feat_embed_dim", "embedding_size",
                               "LGMRec adds modality embeddings to ID embeddings"),
                _contrast_needs_two_features),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = int(config["embedding_size"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.n_hyper_layer = int(config["n_hyper_layer"])
        self.hyper_num = int(config["hyper_num"])
        self.alpha = float(config["alpha"])
        self.cl_weight = float(config["cl_weight"])
        self.reg_weight = float(config["reg_weight"])
        self.temperature = float(config["temperature"])
        features = require_content_features(config, dataset)
        self.feature_names = [feature.name for feature in features]
        register_feature_buffers(self, features)

        interactions = (dataset.inter_matrix(form="csr") > 0).astype(np.float32)
        degree = np.asarray(interactions.sum(axis=1)).ravel()
        user_mean = sp.diags(np.where(degree > 0, 1.0 / np.maximum(degree, 1), 0.0)) @ interactions
        self.register_buffer("adjacency", to_torch_sparse(user_item_adjacency(interactions)),
                             persistent=False)
        self.register_buffer("user_items", to_torch_sparse(interactions), persistent=False)
        self.register_buffer("item_users", to_torch_sparse(interactions.T), persistent=False)
        self.register_buffer("user_item_mean", to_torch_sparse(user_mean), persistent=False)
        self.register_buffer("user_item_mean_t", to_torch_sparse(user_mean.T), persistent=False)
        real_items = torch.ones(self.n_items, 1)
        real_items[0] = 0.0  # the padding item joins no hyperedge
        self.register_buffer("real_items", real_items, persistent=False)

        self.user_embedding = nn.Embedding(self.n_users, self.embedding_size)
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.projections = nn.ParameterList(
            nn.Parameter(nn.init.xavier_uniform_(torch.empty(f.dim, self.embedding_size)))
            for f in features)
        self.hyperedges = nn.ParameterList(
            nn.Parameter(nn.init.xavier_uniform_(torch.empty(f.dim, self.hyper_num)))
            for f in features)
        self.hyper_dropout = nn.Dropout(p=1.0 - float(config["keep_rate"]))

    def _propagate(self) -> tuple[torch.Tensor, list[_Modality]]:
        """The collaborative embeddings of every node and, per modality, its propagated local
        embeddings and hypergraph factors: what every row of the final embeddings is made of."""
        ids = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        collaborative = lightgcn_mean(self.adjacency, ids, self.n_ui_layers)
        collaborative_items = collaborative[self.n_users:]
        modalities = []
        for index, (projection, hyperedges) in enumerate(zip(self.projections, self.hyperedges)):
            feature = getattr(self, f"feature_{index}")
            # One pass over the (large) feature matrix for both linear maps.
            item_values, item_logits = torch.split(
                fixed_feature_product(feature, torch.cat([projection, hyperedges], dim=1)),
                [self.embedding_size, self.hyper_num], dim=1)
            user_values = sparse_matmul(self.user_item_mean, item_values, self.user_item_mean_t)
            modality = torch.cat([user_values, item_values])
            for _ in range(self.n_mm_layers):
                modality = sparse_matmul(self.adjacency, modality)

            user_logits = sparse_matmul(self.user_items, item_logits, self.item_users)
            item_hyper = F.gumbel_softmax(item_logits, self.temperature, dim=1) * self.real_items
            user_hyper = F.gumbel_softmax(user_logits, self.temperature, dim=1)
            item_hyper, user_hyper = self.hyper_dropout(item_hyper), self.hyper_dropout(user_hyper)
            # Layer l: Lambda_l = H_i^T E_i with E_i = H_i Lambda_{l-1}, i.e. (H_i^T H_i)
            # Lambda_{l-1}: the hyper_num x hyper_num Gram matrix instead of n_items rows.
            hyperedge_values = item_hyper.T @ collaborative_items
            if self.n_hyper_layer > 1:
                gram = item_hyper.T @ item_hyper
                for _ in range(self.n_hyper_layer - 1):
                    hyperedge_values = gram @ hyperedge_values
            modalities.append(_Modality(modality, user_hyper, item_hyper, hyperedge_values))
        return collaborative, modalities

    def _embed(self, collaborative: torch.Tensor, modalities: list[_Modality], users: Any,
               items: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Final embeddings of ``users`` and ``items`` (index tensors, or ``slice(None)``).

        Every step after the propagations is row-wise (sums, L2 normalisations, the hypergraph
        rows H Lambda), so a training step builds only its batch's rows.
        """
        n_users = self.n_users
        user_rows = self._final_rows(
            collaborative[:n_users][users], [m.local[:n_users][users] for m in modalities],
            [m.user_hyper[users] @ m.hyperedges for m in modalities])
        item_rows = self._final_rows(
            collaborative[n_users:][items], [m.local[n_users:][items] for m in modalities],
            [m.item_hyper[items] @ m.hyperedges for m in modalities])
        return user_rows, item_rows

    def _final_rows(self, collaborative: torch.Tensor, local: list[torch.Tensor],
                    hypergraph: list[torch.Tensor]) -> torch.Tensor:
        """E^c + sum_m normalize(E^m) + alpha * normalize(sum_m E^{g,m}) on the given rows."""
        rows = collaborative
        for part in local:
            rows = rows + F.normalize(part)
        return rows + self.alpha * F.normalize(sum(hypergraph[1:], hypergraph[0]))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        collaborative, modalities = self._propagate()
        return self._embed(collaborative, modalities, slice(None), slice(None))

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        user, pos, neg = (interaction[self.USER_ID], interaction[self.ITEM_ID],
                          interaction[self.NEG_ITEM_ID])
        collaborative, modalities = self._propagate()
        batch_users, batch_items = self._embed(collaborative, modalities, user,
                                               torch.cat([pos, neg]))
        batch_pos, batch_neg = torch.split(batch_items, [len(pos), len(neg)])
        pos_scores = (batch_users * batch_pos).sum(dim=1)
        neg_scores = (batch_users * batch_neg).sum(dim=1)
        loss = -F.logsigmoid(pos_scores - neg_scores).mean()
        norms = batch_users.norm() + batch_pos.norm() + batch_neg.norm()
        loss = loss + self.reg_weight * norms / len(user)
        if self.cl_weight > 0:
            # A user (item) repeated in the batch adds the same term again: computed once, counted.
            users_once, user_counts = torch.unique(user, return_counts=True)
            items_once, item_counts = torch.unique(pos, return_counts=True)
            contrast = 0.0
            for a, b in combinations(modalities, 2):
                contrast = contrast + _info_nce_sum(
                    a.user_hyper[users_once] @ a.hyperedges,
                    b.user_hyper[users_once] @ b.hyperedges,
                    b.user_hyper, b.hyperedges, user_counts, self.temperature)
                contrast = contrast + _info_nce_sum(
                    a.item_hyper[items_once] @ a.hyperedges,
                    b.item_hyper[items_once] @ b.hyperedges,
                    b.item_hyper, b.hyperedges, item_counts, self.temperature)
            loss = loss + self.cl_weight * contrast
        return loss


class _Modality(NamedTuple):
    """One modality's embeddings: ``local`` (every node, propagated, not yet normalised) and the
    hypergraph ones as factors, ``user_hyper @ hyperedges`` and ``item_hyper @ hyperedges``
    (rank <= hyper_num; the contrastive loss works on the factors)."""

    local: torch.Tensor
    user_hyper: torch.Tensor
    item_hyper: torch.Tensor
    hyperedges: torch.Tensor


def _info_nce_sum(anchors: torch.Tensor, positives: torch.Tensor, dependencies: torch.Tensor,
                  hyperedges: torch.Tensor, counts: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """Sum over anchors (each ``counts`` times) of -log softmax of the positive's cosine among
    the cosines to every candidate row ``dependencies @ hyperedges`` but row 0 (padding: MMRec's
    denominators have none).

    cos(a, c_j) / t = (a / (|a| t)) . (h_j V) / |h_j V| = ((a / (|a| t)) V^T) . (h_j / |h_j V|),
    with |h_j V|^2 = h_j (V V^T) h_j^T: with V's rows fewer than its columns neither the
    products over all candidates nor the candidates' norms need their embedding_size-wide rows;
    the same values up to float rounding.
    """
    anchors, positives = F.normalize(anchors) / temperature, F.normalize(positives)
    positive = (anchors * positives).sum(dim=1)
    dependencies = dependencies[1:]
    if hyperedges.shape[0] < hyperedges.shape[1]:
        squares = ((dependencies @ (hyperedges @ hyperedges.T)) * dependencies).sum(
            dim=1, keepdim=True)
        norms = squares.clamp_min(1e-24).sqrt()  # F.normalize's eps, 1e-12, on the norm
        queries, keys = anchors @ hyperedges.T, dependencies / norms
    else:
        rows = dependencies @ hyperedges
        queries, keys = anchors, rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    log_sums = log_sum_exp_of_products(queries, keys, max_abs_product=1.0 / temperature)
    return (counts.to(log_sums.dtype) * (log_sums - positive)).sum()
