r"""SLMRec: LightGCN views of IDs and of each modality, fused, with a contrastive main loss and
fine-and-coarse self-supervision between the views.

Reference:
    Zhulin Tao, Xiaohao Liu, Yewei Xia, Xiang Wang, Lifang Yang, Xianglin Huang, Tat-Seng Chua.
    "Self-supervised Learning for Multimedia Recommendation." IEEE Transactions on Multimedia 2022.

With A the symmetric-normalised user-item graph, E_u / E_i learned ID embeddings
(``embedding_size``) and one modality m per feature in ``content_features``:

* **Views.** The ID view propagates [E_u; E_i]; modality m's view propagates [E_u; D_m f_i^m]
  (f^m L2-normalised per item, D_m a linear map). Each view is LightGCN: the mean of A^l X for
  l = 0..``n_layers``.
* **Fusion.** ``fusion: concat``: users z_u = W_u [id; m_1; ...; m_M] and items z_i = W_i [...]
  (one linear map each); ``mean``: the same maps on the mean of the views. Score = z_u . z_i.
* **Main loss.** In-batch InfoNCE between normalize(z_u) and normalize(z_i) of the batch's
  (user, positive item) pairs, temperature ``temperature``: each user's item is its positive, the
  batch's other items its negatives (no sampled negatives are used).
* **Fine-and-coarse (FAC) self-supervision** on the batch's positive items, a chain over the
  modalities in ``content_features`` order: c_1 = G_1 id_i, contrasted with H_1 m_{1,i}; then
  c_k = G_k c_{k-1}, contrasted with H_k m_{k,i}. Each term is an InfoNCE (cross-entropy) over the
  batch of the unnormalised products c_k H_k m_k / ``ssl_temp``. Every space has
  ``embedding_size`` dimensions except the last of two or more, which has half (the coarsest).
  Loss = main + ``ssl_alpha`` * sum of the chain's terms.

Defaults are the first value of each MMRec grid (``SLMRec.yaml``: learning rate 1e-4, ssl_temp
0.1, ssl_alpha 0.01) and its fixed values (3 layers, temperature 0.2, concat fusion, weight decay
1e-4 through the optimiser).

Deviations from MMRec's ``models/slmrec.py``, and why:

* **Chain for any number of modalities.** MMRec's FAC is the paper's visual -> acoustic -> text
  chain with the acoustic contrast removed (no audio), so its text stage goes through two linear
  maps (64 -> 64 -> 32) where one affine map 64 -> 32 spans the same functions; here each stage
  is one map (with [visual, text]: 64 then 32, as MMRec's spaces; with three modalities 64, 64, 32
  as in the paper).
* Only the FAC task: MMRec's feature-dropout and feature-masking tasks read configuration keys
  and layers it never defines (they fail there). ``reg`` (in MMRec's grid) is read by nothing in
  MMRec's model, so it is not a setting here; ``weight_decay`` is the optimiser's penalty.
* **Ranking.** MMRec ranks with the embeddings of the last training batch's forward pass (and a
  sigmoid, which keeps the order); here one forward pass after training.
* **Speed, same values.** The views are propagated together (one sparse product per layer over
  the concatenated columns) instead of once per view; output maps and contrasts are computed for
  the batch's rows only; temperatures divide the 64-d rows, not the batch x batch logits.

Items without a vector for a modality start that view from D_m applied to a zero vector (its
bias; counted in the log).
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
from recbole_vlm4rec.models._graph import (CachedDotProductScores, lightgcn_mean, to_torch_sparse,
                                           user_item_adjacency)
from recbole_vlm4rec.models.contract import CONTENT_FEATURES_KEY, Features, ModelContract, Setting
from recbole_vlm4rec.models.features import require_content_features


def _xavier_linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    return layer


@register_model
class SLMRec(CachedDotProductScores, GeneralRecommender):
    r"""LightGCN views of IDs and modalities with fine-and-coarse self-supervision (Tao et al., TMM'22)."""

    input_type = InputType.PAIRWISE  # pairs (user, positive item); the sampled negative is unused
    contract = ModelContract(
        memory_estimate=_memory.slmrec,
        settings=(
            Setting("embedding_size", int, "ID, view and fused embedding size", minimum=1),
            Setting("n_layers", int, "LightGCN layers of every view (MMRec: layer_num)",
                    minimum=0),
            Setting("fusion", str, "how the views are combined before the output maps (MMRec: "
                    "mm_fusion_mode)", choices=("concat", "mean")),
            Setting("temperature", float, "temperature of the main in-batch InfoNCE (MMRec: "
                    "temp)", above=0),
            Setting("ssl_temp", float, "temperature of the fine-and-coarse contrasts", above=0),
            Setting("ssl_alpha", float, "weight of the fine-and-coarse loss", minimum=0),
        ),
        features=Features(CONTENT_FEATURES_KEY,
                          doc="one view per feature; the chain contrasts them in this order"),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        size = self.embedding_size = int(config["embedding_size"])
        self.n_layers = int(config["n_layers"])
        self.fusion = str(config["fusion"])
        self.temperature = float(config["temperature"])
        self.ssl_temp = float(config["ssl_temp"])
        self.ssl_alpha = float(config["ssl_alpha"])
        features = require_content_features(config, dataset)
        self.feature_names = [feature.name for feature in features]
        for index, feature in enumerate(features):
            unit = F.normalize(torch.from_numpy(feature.matrix), dim=1)
            self.register_buffer(f"feature_{index}", unit, persistent=False)
        adjacency = user_item_adjacency(dataset.inter_matrix(form="csr"))
        self.register_buffer("adjacency", to_torch_sparse(adjacency), persistent=False)

        self.user_embedding = nn.Embedding(self.n_users, size)
        self.item_embedding = nn.Embedding(self.n_items, size)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.dense = nn.ModuleList(_xavier_linear(f.dim, size) for f in features)
        n_views = len(features) + 1
        fused = size * n_views if self.fusion == "concat" else size
        self.user_output = _xavier_linear(fused, size)
        self.item_output = _xavier_linear(fused, size)
        # the fine-and-coarse chain: stage k maps the previous stage's space to its own
        sizes = [size] * len(features)
        if len(features) >= 2:
            sizes[-1] = size // 2 or 1
        self.chain = nn.ModuleList(
            _xavier_linear(size if k == 0 else sizes[k - 1], sizes[k]) for k in range(len(sizes)))
        self.view_maps = nn.ModuleList(_xavier_linear(size, n) for n in sizes)

    def _views(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n_users, n_views, size)`` and ``(n_items, n_views, size)`` propagated views, the ID
        view first."""
        items = [self.item_embedding.weight] + [
            dense(getattr(self, f"feature_{index}")) for index, dense in enumerate(self.dense)]
        users = self.user_embedding.weight.repeat(1, len(items))
        nodes = torch.cat([users, torch.cat(items, dim=1)])
        views = lightgcn_mean(self.adjacency, nodes, self.n_layers)
        views = views.view(-1, len(items), self.embedding_size)
        return torch.split(views, [self.n_users, self.n_items])

    def _fuse(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fusion == "concat":
            users, items = users.flatten(1), items.flatten(1)
        else:
            users, items = users.mean(dim=1), items.mean(dim=1)
        return self.user_output(users), self.item_output(items)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._fuse(*self._views())

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        user, pos = interaction[self.USER_ID], interaction[self.ITEM_ID]
        user_views, item_views = self._views()
        users, items = self._fuse(user_views[user], item_views[pos])
        loss = _in_batch_infonce(F.normalize(users, dim=1), F.normalize(items, dim=1),
                                 self.temperature)
        views = item_views[pos]
        coarse = views[:, 0]
        ssl = users.new_zeros(())
        for stage, (chain, view_map) in enumerate(zip(self.chain, self.view_maps), start=1):
            coarse = chain(coarse)
            ssl = ssl + _in_batch_infonce(coarse, view_map(views[:, stage]), self.ssl_temp)
        return loss + self.ssl_alpha * ssl


def _in_batch_infonce(anchors: torch.Tensor, positives: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Cross-entropy of row j of ``anchors @ positives^T / temperature`` with target j (the
    temperature divides the d-wide anchors, not the batch x batch logits: same values, cheaper)."""
    logits = (anchors / temperature) @ positives.T
    return F.cross_entropy(logits, torch.arange(len(anchors), device=logits.device))
