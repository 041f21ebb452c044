r"""SMORE: spectral (FFT) denoising and fusion of modalities, item-item graphs, modality-aware
preference gates.

Reference:
    Rongqing Kenneth Ong, Andy W. H. Khong. "Spectrum-based Modality Representation Fusion Graph
    Convolutional Network for Multimodal Recommendation." WSDM 2025.

With one modality m per feature in ``content_features`` (features f_i^m), e_i the item ID
embedding and FFT / IFFT the orthonormal real FFT along the embedding dimension:

* Spectrum modality fusion: x_i^m = W_m f_i^m + b_m; X^m = FFT(x^m);
  denoised c^m = IFFT(X^m * K_m), fused c^f = IFFT((prod_m X^m) * K_f), K learnable complex
  filters; item views h_i^m = e_i * sigmoid(G_m c_i^m + g_m) for every m and for f.
* Behavioural view: E^c = mean_{l=0..L} A^l [E_u; E_i] (LightGCN, L = ``n_ui_layers``).
* Item-item views: S_m = kNN graph of f^m (``knn_k`` neighbours, cosine-weighted, symmetric
  normalised), S_f = the element-wise maximum of the S_m (union of edges); each view is
  propagated ``n_layers`` times over its graph, users get A_ui h^m (A_ui the user-item block of
  A), giving H^m = [A_ui h^m; h^m] and H^f.
* Modality-aware preferences: H~^m = softmax(Q_m(H^f)) * H^m (softmax over the embedding
  dimension, Q_m = Linear-Tanh-Linear); P^v = dropout(sigmoid(W_v E^c + b_v)) for v in m..., f;
  side S = mean(P^m * H~^m for each m, P^f * H^f); final E = E^c + S; score = dot product.
* Loss = BPR + ``reg_weight`` * 1/2 (||e_u||^2 + ||e_p||^2 + ||e_n||^2) / batch + ``cl_weight`` *
  (InfoNCE(S_pos, E^c_pos) + InfoNCE(S_u, E^c_u)), in-batch InfoNCE at ``temperature``.

Defaults are the first value of each grid in MMRec's ``SMORE.yaml``. With
``content_features: [visual, text]`` this computes what MMRec's implementation computes; the paper
(and MMRec) fuse an image and a text modality, here any number >= 2 (the fused spectrum is the
product of all of them, the fused graph the maximum of all graphs). Deviations from MMRec's
implementation, and why:

* None in the maths. ``train_features`` (default True, as MMRec and the authors' code: the raw
  feature matrices are trainable parameters initialised from the dataset, so Adam updates them
  every step) can be set False to keep the dataset's features fixed (cheaper: no n_items x d
  gradient and Adam state). The kNN graphs are built once from the raw features either way.
* No learning-rate decay (MMRec: lr * 0.96^(epoch/50)); RecBole's trainer has no scheduler. At
  MMRec's typical stopping epochs (< 100) the lr differs by < 8%.
* The L2 term divides by the batch's length (MMRec: by ``train_batch_size``, which overweights
  it in the last, shorter batch of an epoch).
* ``knn_k`` is one value for every feature or one per feature (MMRec: image_knn_k, text_knn_k).
* A training step computes the side embeddings (queries, gates, attention: all row-wise) for
  its batch's users and items only, each node once: the same values and gradients as MMRec's
  all-node computation (tests/test_lgmrec_smore.py checks them against the formulas written out),
  in less work. With ``dropout`` > 0 the masks are drawn for those rows only (one per node, as
  before), so a seed draws different masks than before.

Items without a vector for a feature have no neighbours in its graph and start from a zero
feature (x_i^m = b_m while features are fixed; counted in the log).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn

from recbole_vlm4rec.models._graph import (CachedDotProductScores, elementwise_max_union,
                                           knn_item_graph, lightgcn_mean,
                                           register_feature_buffers, repeated_rows_info_nce,
                                           sigmoid_gate, sparse_matmul, to_torch_sparse,
                                           user_item_adjacency)
from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models import _memory
from recbole_vlm4rec.models.contract import CONTENT_FEATURES_KEY, Features, ModelContract, Setting
from recbole_vlm4rec.models.features import require_content_features


@register_model
class SMORE(CachedDotProductScores, GeneralRecommender):
    r"""Spectrum-based modality fusion graph network (Ong & Khong, WSDM'25)."""

    input_type = InputType.PAIRWISE
    fused_adam = True  # one pass per parameter per step (compat.py); same update
    contract = ModelContract(
        memory_estimate=_memory.smore,
        settings=(
            Setting("embedding_size", int, "ID embedding size; every feature is projected to it",
                    minimum=1),
            Setting("n_ui_layers", int, "LightGCN layers of the behavioural (user-item) view",
                    minimum=0),
            Setting("n_layers", int, "propagations of each item view over its item-item graph",
                    minimum=0),
            Setting("knn_k", int, "neighbours per item in each feature's kNN graph (MMRec: "
                    "image_knn_k, text_knn_k)", minimum=1, per_feature=True),
            Setting("reg_weight", float, "weight of the squared L2 norms of the batch embeddings",
                    minimum=0),
            Setting("cl_weight", float, "weight of the InfoNCE between side and behavioural "
                    "embeddings (MMRec: cl_loss)", minimum=0),
            Setting("temperature", float, "InfoNCE temperature", above=0),
            Setting("dropout", float, "dropout on the modality preference gates (MMRec: "
                    "dropout_rate)", minimum=0, maximum=1),
            Setting("train_features", bool, "fine-tune a copy of the raw feature matrices "
                    "(MMRec, authors' code); False = fixed, cheaper"),
        ),
        features=Features(CONTENT_FEATURES_KEY, minimum=2,
                          doc="two or more modalities whose spectra are fused, e.g. [visual, text]"),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = int(config["embedding_size"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_layers = int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.cl_weight = float(config["cl_weight"])
        self.temperature = float(config["temperature"])
        features = require_content_features(config, dataset)
        self.feature_names = [feature.name for feature in features]
        knn_k = _per_feature(config["knn_k"], len(features))
        self.train_features = bool(config["train_features"])
        if self.train_features:
            # A trainable copy (the dataset's features stay as loaded), in blocks of rows: Adam's
            # update of one n_items x 4096 table allocates table-sized temporaries every step
            # (page faults dominated SMORE's step); per block the same element-wise update
            # reuses memory.
            self.feature_tables = nn.ModuleList(
                nn.ParameterList(nn.Parameter(torch.from_numpy(block.copy()))
                                 for block in _row_blocks(f.matrix)) for f in features)
        else:
            register_feature_buffers(self, features)

        adjacency = user_item_adjacency(dataset.inter_matrix(form="csr"))
        self.register_buffer("adjacency", to_torch_sparse(adjacency), persistent=False)
        user_item = adjacency[:self.n_users, self.n_users:]
        self.register_buffer("user_item", to_torch_sparse(user_item), persistent=False)
        self.register_buffer("item_user", to_torch_sparse(user_item.T), persistent=False)
        graphs = [knn_item_graph(f.matrix, f.has_vector, k, weighted=True)
                  for f, k in zip(features, knn_k)]
        graphs.append(elementwise_max_union(graphs))
        for index, graph in enumerate(graphs):  # the modalities' graphs, then the fused one
            self.register_buffer(f"item_graph_{index}", to_torch_sparse(graph), persistent=False)
            # kNN graphs are directed: the backward pass needs the transpose
            self.register_buffer(f"item_graph_t_{index}", to_torch_sparse(graph.T),
                                 persistent=False)

        size, n_views = self.embedding_size, len(features) + 1
        self.user_embedding = nn.Embedding(self.n_users, size)
        self.item_embedding = nn.Embedding(self.n_items, size)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.projections = nn.ModuleList(nn.Linear(f.dim, size) for f in features)
        # Per view (each modality, then the fusion): a complex filter over the rfft bins
        # (real and imaginary parts), an item gate and a preference gate.
        self.spectral_filters = nn.ParameterList(
            nn.Parameter(torch.randn(1, size // 2 + 1, 2)) for _ in range(n_views))
        self.item_gates = nn.ModuleList(sigmoid_gate(size) for _ in range(n_views))
        self.preference_gates = nn.ModuleList(sigmoid_gate(size) for _ in range(n_views))
        self.queries = nn.ModuleList(
            nn.Sequential(nn.Linear(size, size), nn.Tanh(), nn.Linear(size, size, bias=False))
            for _ in features)
        self.preference_dropout = nn.Dropout(p=float(config["dropout"]))

    def _propagate(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(behavioural embeddings, the views H^m... and H^f), every node, users then items."""
        size = self.embedding_size
        if self.train_features:
            projected = [torch.cat([projection(block) for block in blocks])
                         for blocks, projection in zip(self.feature_tables, self.projections)]
        else:
            projected = [projection(getattr(self, f"feature_{index}"))
                         for index, projection in enumerate(self.projections)]
        spectra = [torch.fft.rfft(values, dim=1, norm="ortho") for values in projected]
        fused = spectra[0]
        for spectrum in spectra[1:]:
            fused = fused * spectrum
        filters = [torch.view_as_complex(weight) for weight in self.spectral_filters]
        convolved = [torch.fft.irfft(spectrum * kernel, n=size, dim=1, norm="ortho")
                     for spectrum, kernel in zip([*spectra, fused], filters)]

        item_ids = self.item_embedding.weight
        behaviour = lightgcn_mean(
            self.adjacency, torch.cat([self.user_embedding.weight, item_ids]), self.n_ui_layers)
        views = []
        for index, (signal, gate) in enumerate(zip(convolved, self.item_gates)):
            items = item_ids * gate(signal)
            graph, transpose = (getattr(self, f"item_graph_{index}"),
                                getattr(self, f"item_graph_t_{index}"))
            for _ in range(self.n_layers):
                items = sparse_matmul(graph, items, transpose)
            views.append(torch.cat([sparse_matmul(self.user_item, items, self.item_user), items]))
        return behaviour, views

    def _side(self, behaviour: torch.Tensor, views: list[torch.Tensor]) -> torch.Tensor:
        """Side embeddings S of the rows given (of the behavioural embeddings and of each view):
        every step here is row-wise, so a training step computes its batch's rows only."""
        fusion = views[-1]
        parts = []
        for view, query, preference in zip(views, self.queries, self.preference_gates):
            attended = torch.softmax(query(fusion), dim=-1) * view
            parts.append(self.preference_dropout(preference(behaviour)) * attended)
        parts.append(self.preference_dropout(self.preference_gates[-1](behaviour)) * fusion)
        return torch.stack(parts).mean(dim=0)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        behaviour, views = self._propagate()
        final = behaviour + self._side(behaviour, views)
        users, items = torch.split(final, [self.n_users, self.n_items])
        return users, items

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        user, pos, neg = (interaction[self.USER_ID], interaction[self.ITEM_ID],
                          interaction[self.NEG_ITEM_ID])
        behaviour, views = self._propagate()
        # Each node of the batch once (a repeated node keeps one dropout mask, as a row of the
        # whole matrix would), then the batch's rows of it.
        nodes, rows = torch.unique(torch.cat([user, pos + self.n_users, neg + self.n_users]),
                                   return_inverse=True)
        behaviour = behaviour[nodes]
        side = self._side(behaviour, [view[nodes] for view in views])
        final = behaviour + side
        user_rows, pos_rows, neg_rows = torch.split(rows, [len(user), len(pos), len(neg)])
        batch_users, batch_pos, batch_neg = final[user_rows], final[pos_rows], final[neg_rows]
        pos_scores = (batch_users * batch_pos).sum(dim=1)
        neg_scores = (batch_users * batch_neg).sum(dim=1)
        loss = -F.logsigmoid(pos_scores - neg_scores).mean()
        squares = batch_users.square().sum() + batch_pos.square().sum() + batch_neg.square().sum()
        loss = loss + self.reg_weight * 0.5 * squares / len(user)
        # MMRec's in-batch InfoNCE over the batch's rows as they come, from each distinct one once
        contrast = 0.0
        for batch_rows in (pos_rows, user_rows):
            once, counts = torch.unique(batch_rows, return_counts=True)
            contrast = contrast + repeated_rows_info_nce(side[once], behaviour[once], counts,
                                                         self.temperature)
        return loss + self.cl_weight * contrast


# Elements per block of a trainable feature table (4 MB of float32: 256 rows of 4096-d features).
_TABLE_BLOCK_ELEMENTS = 2**20


def _row_blocks(matrix: np.ndarray) -> list[np.ndarray]:
    rows = max(1, _TABLE_BLOCK_ELEMENTS // max(matrix.shape[1], 1))
    return [matrix[start:start + rows] for start in range(0, len(matrix), rows)]


def _per_feature(configured: Any, n_features: int) -> list[int]:
    """One value per feature (the contract checked the length before anything loaded)."""
    values = configured if isinstance(configured, (list, tuple)) else [configured] * n_features
    return [int(value) for value in values]
