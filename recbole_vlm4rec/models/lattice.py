r"""LATTICE: item-item structures learned from multimodal features, added to a LightGCN.

Reference:
    Jinghao Zhang, Yanqiao Zhu, Qiang Liu, Shu Wu, Shuhui Wang, Liang Wang. "Mining Latent
    Structures for Multimedia Recommendation." ACM MM 2021.

With one modality m per feature in ``content_features`` (features f_i^m), kNN_k(X) the graph
linking each item to its ``knn_k`` most cosine-similar items (itself included) with their cosine
as the edge weight, and N(S) = D^-1/2 S D^-1/2 (D: row sums):

* Original graphs, built once: S_m = N(kNN_k(f^m)).
* Learned graphs, rebuilt from the current parameters at the start of every training epoch and
  for every evaluation: x_i^m = W_m f_i^m + b_m (``feat_embed_dim``), S~ = N(sum_m w_m
  kNN_k(x^m)), with modality weights w = softmax(a) (a learned, equal at the start).
* Item graph S = (1 - ``lambda_coeff``) S~ + ``lambda_coeff`` sum_m w_m S_m; item structure
  embedding h = S^L I (L = ``n_mm_layers`` propagations of the item ID embeddings I).
* Collaborative part: [E_u; E_i] = mean_{l=0..K} A^l [U; I] with A = D^-1 (A_ui + I) (the
  row-normalised user-item graph with self loops; K = ``n_ui_layers``, LightGCN's mean).
* Score = e_u . (e_i + h_i / ||h_i||). Loss = BPR + ``reg_weight`` * 1/2 (||e_u||^2 + ||e_p||^2 +
  ||e_n||^2) / batch.

As in the paper's code and MMRec, gradients reach W_m, b_m, a (and the features) only through
the first batch of each epoch, the one that rebuilds S~; the other batches use that graph
detached.

Defaults are the first value of each grid in MMRec's ``LATTICE.yaml`` (``learning_rate`` 1e-4,
``reg_weight`` 0; its yaml lists ``learning_rate`` 1e-4 ... 5e-3). With ``content_features:
[visual, text]`` this computes what MMRec's LATTICE (``cf_model: lightgcn``) computes; the paper and
MMRec have an image and a text modality, here any number >= 1 (one feature: w = 1). Deviations
from MMRec's implementation, and why:

* Only LightGCN as the collaborative part (MMRec's ``cf_model: lightgcn``, its default);
  ``n_ui_layers: 0`` is its ``mf``; its ``ngcf`` option is not ported. MMRec's ``weight_size``
  list only sets the number of layers: here ``n_ui_layers``. MMRec's ``n_layers`` is
  ``n_mm_layers`` (as FREEDOM's).
* No learning-rate decay (MMRec: lr x 0.96^(epoch/50)); RecBole's trainer has no scheduler. Before
  epoch 100 the learning rate differs by less than 8%.
* The L2 term divides by the batch's length (MMRec: by ``train_batch_size``: the same except in
  an epoch's last, shorter batch).
* Item graphs are sparse edge lists (MMRec: dense n_items x n_items matrices); items without a
  vector for a feature (and RecBole's padding item) have no edges in that modality's graphs.
* ``train_features`` (default True, as MMRec: a trainable copy of the raw features) can be set
  False to keep the dataset's features fixed.
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

from recbole_vlm4rec.models._graph import (CachedDotProductScores, FeatureTables, knn_item_graph,
                                           knn_neighbours, lightgcn_mean, sparse_matmul,
                                           to_torch_sparse, user_item_adjacency)
from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models import _memory
from recbole_vlm4rec.models.contract import CONTENT_FEATURES_KEY, Features, ModelContract, Setting
from recbole_vlm4rec.models.features import require_content_features


@register_model
class LATTICE(CachedDotProductScores, GeneralRecommender):
    r"""Learned latent item-item structures + LightGCN (Zhang et al., MM'21)."""

    input_type = InputType.PAIRWISE
    contract = ModelContract(
        memory_estimate=_memory.lattice,
        settings=(
            Setting("embedding_size", int, "user / item ID embedding size", minimum=1),
            Setting("feat_embed_dim", int, "size features are projected to before the learned "
                    "kNN graphs", minimum=1),
            Setting("n_ui_layers", int, "LightGCN layers over the user-item graph (0 = MF; "
                    "MMRec: len(weight_size))", minimum=0),
            Setting("n_mm_layers", int, "propagations over the item-item graph (MMRec: n_layers)",
                    minimum=0),
            Setting("knn_k", int, "neighbours per item in every item-item graph", minimum=1),
            Setting("lambda_coeff", float, "weight of the original (raw-feature) graphs against "
                    "the learned one", minimum=0, maximum=1),
            Setting("reg_weight", float, "weight of the squared L2 norms of the batch embeddings",
                    minimum=0),
            Setting("train_features", bool, "fine-tune a copy of the raw feature matrices "
                    "(MMRec); False = fixed"),
        ),
        features=Features(CONTENT_FEATURES_KEY, doc="one modality per feature, e.g. [visual, text]"),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = int(config["embedding_size"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.knn_k = int(config["knn_k"])
        self.lambda_coeff = float(config["lambda_coeff"])
        self.reg_weight = float(config["reg_weight"])
        features = require_content_features(config, dataset)
        self.feature_names = [feature.name for feature in features]
        self.features = FeatureTables(features, trainable=bool(config["train_features"]))
        # Items each modality's graphs may link (a vector; never the padding item).
        self.covered = [torch.from_numpy(np.flatnonzero(f.has_vector)) for f in features]
        # The original graphs as edge lists (rows, columns, weights): summed with learned weights.
        self.original_edges = []
        for feature in features:
            graph = knn_item_graph(feature.matrix, feature.has_vector, self.knn_k,
                                   weighted=True).tocoo()
            self.original_edges.append((torch.from_numpy(graph.row.astype(np.int64)),
                                        torch.from_numpy(graph.col.astype(np.int64)),
                                        torch.from_numpy(graph.data.astype(np.float32))))

        adjacency = user_item_adjacency(dataset.inter_matrix(form="csr"), "mean", self_loops=True)
        self.register_buffer("adjacency", to_torch_sparse(adjacency), persistent=False)
        self.register_buffer("adjacency_t", to_torch_sparse(adjacency.T), persistent=False)
        self.user_embedding = nn.Embedding(self.n_users, self.embedding_size)
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.projections = nn.ModuleList(
            nn.Linear(f.dim, int(config["feat_embed_dim"])) for f in features)
        self.modality_logits = nn.Parameter(torch.zeros(len(features)))
        # The item graph of the current epoch, detached (rebuilt by the epoch's first batch).
        self._epoch_graph: tuple[torch.Tensor, torch.Tensor] | None = None

    def train(self, mode: bool = True) -> "LATTICE":
        # RecBole calls train() at the start of every epoch: its first batch rebuilds the graph.
        if mode:
            self._epoch_graph = None
        return super().train(mode)

    def _item_graph_edges(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, columns, weights) of S = (1 - lambda) S~ + lambda sum_m w_m S_m, differentiable
        in the weights (through the projections and the modality weights)."""
        weights = torch.softmax(self.modality_logits, dim=0)
        rows, columns, values = [], [], []
        for index, (projection, covered) in enumerate(zip(self.projections, self.covered)):
            covered = covered.to(self.device)
            projected = F.normalize(projection(self.features.rows(index, covered)), dim=1)
            k = min(self.knn_k, len(covered))
            neighbours, _ = knn_neighbours(projected.detach(), k)
            similarity = (projected.unsqueeze(1) * projected[neighbours]).sum(dim=2)
            rows.append(covered.repeat_interleave(k))
            columns.append(covered[neighbours.reshape(-1)])
            values.append(weights[index] * similarity.reshape(-1))
        rows, columns, values = torch.cat(rows), torch.cat(columns), torch.cat(values)
        degree = torch.zeros(self.n_items, device=self.device).index_add(0, rows, values)
        # rows whose weights sum to <= 0 stay empty (clamped first: no NaN in the backward)
        scale = torch.where(degree > 0, degree.clamp(min=1e-12).pow(-0.5), 0.0)
        learned = (1.0 - self.lambda_coeff) * scale[rows] * values * scale[columns]
        all_rows, all_columns, all_values = [rows], [columns], [learned]
        for weight, (o_rows, o_columns, o_values) in zip(weights, self.original_edges):
            all_rows.append(o_rows.to(self.device))
            all_columns.append(o_columns.to(self.device))
            all_values.append(self.lambda_coeff * weight * o_values.to(self.device))
        return torch.cat(all_rows), torch.cat(all_columns), torch.cat(all_values)

    def _propagate_items(self) -> torch.Tensor:
        """h = S^L I: differentiable in S for the epoch's first batch, S detached after."""
        items = self.item_embedding.weight
        if self.training and self._epoch_graph is None:
            rows, columns, values = self._item_graph_edges()
            self._epoch_graph = self._sparse_graph(rows, columns, values.detach())
            for _ in range(self.n_mm_layers):
                items = torch.zeros_like(items).index_add(0, rows, values.unsqueeze(1) * items[columns])
            return items
        if self.training:
            graph = self._epoch_graph
        else:  # evaluation: the graph of the current parameters (as MMRec)
            with torch.no_grad():
                graph = self._sparse_graph(*self._item_graph_edges())
        for _ in range(self.n_mm_layers):
            items = sparse_matmul(graph[0], items, graph[1])
        return items

    def _sparse_graph(self, rows: torch.Tensor, columns: torch.Tensor,
                      values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The graph and its transpose as CSR tensors (duplicate edges summed)."""
        graph = sp.csr_matrix((values.cpu().numpy(), (rows.cpu().numpy(), columns.cpu().numpy())),
                              shape=(self.n_items, self.n_items))
        return to_torch_sparse(graph).to(self.device), to_torch_sparse(graph.T).to(self.device)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        structure = self._propagate_items()
        ids = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        users, items = torch.split(
            lightgcn_mean(self.adjacency, ids, self.n_ui_layers, self.adjacency_t),
            [self.n_users, self.n_items])
        return users, items + F.normalize(structure, dim=1)

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        user, pos, neg = (interaction[self.USER_ID], interaction[self.ITEM_ID],
                          interaction[self.NEG_ITEM_ID])
        users, items = self.forward()
        batch_users, batch_pos, batch_neg = users[user], items[pos], items[neg]
        pos_scores = (batch_users * batch_pos).sum(dim=1)
        neg_scores = (batch_users * batch_neg).sum(dim=1)
        loss = -F.logsigmoid(pos_scores - neg_scores).mean()
        squares = batch_users.square().sum() + batch_pos.square().sum() + batch_neg.square().sum()
        return loss + self.reg_weight * 0.5 * squares / len(user)
