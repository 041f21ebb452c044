r"""PGL: modality embeddings propagated over a sampled principal subgraph of the user-item graph.

Reference:
    Penghang Yu, Zhiyi Tan, Guanming Lu, Bing-Kun Bao. "Mind Individual Information! Principal
    Graph Learning for Multimedia Recommendation." AAAI 2025.

One modality m per feature in ``content_features`` (features f_i^m):

* **Nodes.** Items x_i = [normalize(W_m f_i^m + b_m)]_m (each ``feat_embed_dim``), users
  [p_u^m]_m, learned (each ``embedding_size``); no item ID embedding. With
  ``train_features`` (default, as MMRec) the feature matrices are fine-tuned.
* **Item-item graph,** built once from the raw features and frozen: per feature each item links
  to its ``knn_k`` most cosine-similar items, symmetric-normalised, summed with
  ``item_graph_weights``; h = S^``n_mm_layers`` x.
* **Principal subgraph (local).** Each training epoch keeps ``keep_rate`` of the user-item edges,
  sampled without replacement with probability proportional to 1/sqrt(d_u d_i), and
  renormalises it; LightGCN (``n_ui_layers``, mean of the layers) runs on it while training, on
  the full graph when scoring.
* **Score** u . (i + h_i). Loss = BPR + ``reg_weight`` * (InfoNCE(drop(u), drop(u)) +
  InfoNCE(drop(i+), drop(i+))) / 2 over the batch's users and positive items: two independent
  ``dropout`` masks of the same rows are the two views (cosine / ``temperature``).

Defaults are the first value of each MMRec grid (``PGL.yaml``: reg_weight 0, dropout 0.2, mode
local) and its fixed values (knn_k 10, one item-graph layer, two user-item layers, 30% of the
edges kept, temperature 0.2). With ``reg_weight: 0`` (MMRec's first point) the contrastive term,
and so ``dropout``, has no effect. Any number of modalities (the paper and MMRec have two).

Deviations from MMRec's ``models/pgl.py``, and why:

* **Global mode not ported.** MMRec's ``mode: global`` (not in its grid) takes a truncated SVD of
  the whole normalised adjacency and keeps a dense (users+items)^2 product; at Amazon scale that
  matrix alone is several GB. Only the local (sampled) principal subgraph is here.
* No learning-rate decay (MMRec's PGL: lr x 0.96^(epoch/50)): RecBole's trainer has no
  scheduler; the learning rate differs by less than 8% before epoch 100.
* ``keep_rate`` and ``temperature`` are settings (MMRec: 0.3 and 0.2 in the code);
  ``item_graph_weights`` is one weight per feature (MMRec: ``mm_image_weight`` 0.1 for visual,
  0.9 for text); MMRec's unused keys (``lambda_coeff``, ``weight_size``) are not settings.
* The kNN graph is built when the model is built (MMRec caches it next to the data as
  ``mm_adj_freedomdsp_<k>_<w>.pt``); nothing is written here.

Items without a vector for a feature have no neighbours in its kNN graph and start from a zero
feature (counted in the log).
"""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn

from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models import _memory
from recbole_vlm4rec.models._graph import (CachedDotProductScores, degree_sensitive_edge_sample,
                                           knn_item_graph, lightgcn_mean, sparse_matmul,
                                           to_torch_sparse, user_item_adjacency)
from recbole_vlm4rec.models.contract import (CONTENT_FEATURES_KEY, Features, ModelContract, Setting,
                                             equal_settings, positive_weights)
from recbole_vlm4rec.models.features import feature_weights, require_content_features


@register_model
class PGL(CachedDotProductScores, GeneralRecommender):
    r"""Principal graph learning: modality embeddings on a sampled subgraph (Yu et al., AAAI'25)."""

    input_type = InputType.PAIRWISE
    contract = ModelContract(
        memory_estimate=_memory.pgl,
        settings=(
            Setting("embedding_size", int, "size of each modality's user embedding", minimum=1),
            Setting("feat_embed_dim", int, "size each feature is projected to", minimum=1),
            Setting("knn_k", int, "neighbours per item in each feature's item-item graph",
                    minimum=1),
            Setting("item_graph_weights", float, "one weight per feature for summing the item "
                    "graphs; ~ = equal (MMRec: 0.1 visual, 0.9 text)", minimum=0, optional=True,
                    per_feature=True),
            Setting("n_mm_layers", int, "propagations over the frozen item-item graph", minimum=0),
            Setting("n_ui_layers", int, "LightGCN layers over the user-item graph", minimum=0),
            Setting("keep_rate", float, "share of user-item edges kept in each epoch's principal "
                    "subgraph (degree-sensitive sample; MMRec: 0.3, fixed)", above=0, maximum=1),
            Setting("reg_weight", float, "weight of the contrastive loss", minimum=0),
            Setting("dropout", float, "dropout making the contrastive views", minimum=0,
                    maximum=0.99),
            Setting("temperature", float, "contrastive temperature (MMRec: 0.2, fixed)", above=0),
            Setting("train_features", bool, "fine-tune a copy of the raw feature matrices "
                    "(MMRec); False = fixed, cheaper"),
        ),
        features=Features(CONTENT_FEATURES_KEY, doc="one modality per feature, e.g. [visual, text]"),
        checks=(positive_weights("item_graph_weights"),
                equal_settings("feat_embed_dim", "embedding_size",
                               "PGL scores user embeddings against projected features")),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.n_mm_layers = int(config["n_mm_layers"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.keep_rate = float(config["keep_rate"])
        self.reg_weight = float(config["reg_weight"])
        self.temperature = float(config["temperature"])
        self.view_dropout = nn.Dropout(float(config["dropout"]))
        features = require_content_features(config, dataset)
        self.feature_names = [feature.name for feature in features]
        weights = feature_weights(config["item_graph_weights"], len(features), "item_graph_weights")

        item_graph = sp.csr_matrix((self.n_items, self.n_items), dtype="float32")
        for feature, weight in zip(features, weights):
            item_graph = item_graph + weight * knn_item_graph(
                feature.matrix, feature.has_vector, int(config["knn_k"]))
        self.register_buffer("item_graph", to_torch_sparse(item_graph), persistent=False)
        self.register_buffer("item_graph_t", to_torch_sparse(item_graph.T), persistent=False)
        self.interactions = dataset.inter_matrix(form="csr")
        full = to_torch_sparse(user_item_adjacency(self.interactions))
        self.register_buffer("full_adjacency", full, persistent=False)
        self.train_adjacency: torch.Tensor | None = None

        tables = [torch.from_numpy(feature.matrix.copy()) for feature in features]
        if bool(config["train_features"]):
            self.feature_tables = nn.ParameterList(nn.Parameter(table) for table in tables)
        else:
            for index, table in enumerate(tables):
                self.register_buffer(f"feature_{index}", table, persistent=False)
        self.projections = nn.ModuleList(
            nn.Linear(f.dim, int(config["feat_embed_dim"])) for f in features)
        self.user_embeddings = nn.ParameterList(
            nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users,
                                                             int(config["embedding_size"]))))
            for _ in features)

    def train(self, mode: bool = True) -> "PGL":
        # RecBole calls train() at the start of every epoch: a fresh principal subgraph.
        if mode:
            self.train_adjacency = None
        return super().train(mode)

    def _table(self, index: int) -> torch.Tensor:
        if hasattr(self, "feature_tables"):
            return self.feature_tables[index]
        return getattr(self, f"feature_{index}")

    def _adjacency(self) -> torch.Tensor:
        if not self.training:
            return self.full_adjacency
        if self.train_adjacency is None:
            sampled = degree_sensitive_edge_sample(self.interactions, self.keep_rate)
            self.train_adjacency = to_torch_sparse(sampled).to(self.device)
        return self.train_adjacency

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        items = torch.cat([F.normalize(projection(self._table(index)), dim=1)
                           for index, projection in enumerate(self.projections)], dim=1)
        content = items
        for _ in range(self.n_mm_layers):
            content = sparse_matmul(self.item_graph, content, self.item_graph_t)
        users = torch.cat(list(self.user_embeddings), dim=1)
        nodes = lightgcn_mean(self._adjacency(), torch.cat([users, items]), self.n_ui_layers)
        users, items = torch.split(nodes, [self.n_users, self.n_items])
        return users, items + content

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        user, pos, neg = (interaction[self.USER_ID], interaction[self.ITEM_ID],
                          interaction[self.NEG_ITEM_ID])
        users, items = self.forward()
        batch_users, batch_pos = users[user], items[pos]
        difference = (batch_users * (batch_pos - items[neg])).sum(dim=1)
        loss = -F.logsigmoid(difference).mean()
        if self.reg_weight > 0:
            contrast = (self._self_contrast(batch_users) + self._self_contrast(batch_pos)) / 2
            loss = loss + self.reg_weight * contrast
        return loss

    def _self_contrast(self, rows: torch.Tensor) -> torch.Tensor:
        """InfoNCE between two dropout views of the same rows (row j's positive is row j)."""
        first = F.normalize(self.view_dropout(rows), dim=1)
        second = F.normalize(self.view_dropout(rows), dim=1)
        logits = first @ second.T / self.temperature
        return F.cross_entropy(logits, torch.arange(len(rows), device=rows.device))
