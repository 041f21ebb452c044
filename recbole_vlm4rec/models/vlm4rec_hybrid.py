r"""VLM4RecHybrid: closed-form item-item collaborative filtering with a semantic prior from item
content embeddings, and a learned content adapter that scores items nobody has interacted with.

References (the parts it combines):
    Harald Steck. "Embarrassingly Shallow Autoencoders for Sparse Data." WWW 2019 (EASE).
    Olivier Jeunen, Jan Van Balen, Bart Goethals. "Closed-Form Models for Collaborative Filtering
    with Side-Information." RecSys 2020 (side information as extra rows of the EASE objective).
    Mohit Sharma, Jiayu Zhou, Junling Hu, George Karypis. "Feature-based factorized Bilinear
    Similarity Model for Cold-Start Top-n Item Recommendation." SDM 2015 (item-item similarity
    f_i^T W f_j learned from interactions).
    Valencia et al. "VLM4Rec." arXiv:2603.12625, 2026 (items as embeddings of what a
    vision-language model says about them: the content this model is built for).

Notation: X in {0,1}^{|U| x |I|} the training interactions; for each feature k in
``content_features`` (``vlm``, ``lvlm``, ``text``, ``visual``...), F_k its item matrix, centred over
the items that have a vector (``center_features``) and L2-normalised per row; items without a
vector keep a zero row. F = [sqrt(w_1) F_1, ..., sqrt(w_K) F_K] (w = ``content_weights``, sum 1),
so F F^T = sum_k w_k cos_k is a semantic item-item graph. W_I = the items with at least one training
interaction ("warm"); the others are "new" (the cold-start protocol's cold items).

1. Collaborative item-item weights with a semantic prior (``semantic_weight`` = alpha,
   ``reg_weight`` = lambda): content dimensions act as alpha-weighted pseudo-users,

       B = argmin_B ||X - X B||^2 + alpha ||F^T - F^T B||^2 + lambda ||B||^2,  diag(B) = 0
         => P = (X^T X + alpha F F^T + lambda I)^-1,   B = I - P diag(1 / diag(P)),

   i.e. the semantic graph is added to the co-occurrence graph X^T X before the ridge solve.
2. Content adapter (``adapter_reg`` = mu): a bilinear similarity on frozen content embeddings,
   fitted in closed form to the collaborative weights of warm item pairs,

       V = argmin_V sum_{i,j in W_I} (B_ij - f_i^T V f_j)^2 + mu ||V||^2
         => F_W^T F_W = Q diag(l) Q^T,  V = Q [ (Q^T F_W^T B_WW F_W Q) / (l_a l_b + mu) ] Q^T,

   and B_hat = F V F^T with a zero diagonal: the semantic graph re-weighted to predict
   co-consumption. It needs only an item's content, so it scores new items.
3. Scores. Warm item i: s_ui = x_u B_{:,i}. New item j (``new_item_scoring``):
   ``parity`` (default): the adapter score c_uj = x_u B_hat_{:,j} placed in the user's
   distribution of warm scores at the position it holds among the user's adapter scores,
   s_uj = mean_W(s_u) + std_W(s_u) * (c_uj - mean(c_u)) / std(c_u);
   ``adapter``: s_uj = c_uj as it is (calibrated by the regression, hence shrunk: new items rank
   low); ``none``: s_uj = x_u B_{:,j} (only the semantic prior of step 1 reaches them).
   A new item without any content vector has no evidence at all and gets the user's lowest warm
   score.

Nothing is trained by gradient descent (RecBole's TRADITIONAL type: one pass); everything is built
from the training split in ``__init__``. Cost, ``ease_backbone: dense``: two dense |I| x |I|
matrices and one inversion (EASE's: 160 GB at 100k items); ``topk``: step 1 restricted to each
item's ``ease_neighbours`` most co-occurring items (models/_ease.py: k entries per column, memory
linear in the catalogue; equal to dense EASE when k >= |I| - 1, within the tolerance measured in
docs/performance.md otherwise). Either way B_hat is never formed: it is F V F^T, so the adapter
scores new items from the d x d matrix V and the per-user moments of c_u (its mean and standard
deviation over all items in closed form), plus a d x d eigendecomposition (d = the summed feature
dimensions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType

from recbole_vlm4rec.models import _memory, register_model
from recbole_vlm4rec.models._ease import topk_ease
from recbole_vlm4rec.models._graph import to_torch_sparse
from recbole_vlm4rec.models.contract import (CONTENT_FEATURES_KEY, Capabilities, Features,
                                             ModelContract, Setting, positive_weights)
from recbole_vlm4rec.models.features import feature_weights, require_content_features

NEW_ITEM_SCORINGS = ("parity", "adapter", "none")
BACKBONES = ("dense", "topk")
ROW_BLOCK = 4096  # rows of B multiplied by the content at once when fitting the adapter


@register_model
class VLM4RecHybrid(GeneralRecommender):
    r"""Semantic-prior EASE + a content adapter for new items (see the module docstring)."""

    input_type = InputType.POINTWISE
    type = ModelType.TRADITIONAL
    contract = ModelContract(
        memory_estimate=_memory.vlm4rec_hybrid,
        settings=(
            Setting("content_weights", float, "one weight per feature in the semantic graph "
                    "F F^T, normalised to sum 1; ~ = equal", minimum=0, optional=True,
                    per_feature=True),
            Setting("center_features", bool, "subtract each feature's mean item vector before "
                    "normalising (removes the similarity all items share)"),
            Setting("reg_weight", float, "lambda: ridge weight of the item-item regression "
                    "(EASE's)", above=0),
            Setting("semantic_weight", float, "alpha: weight of the semantic graph added to the "
                    "co-occurrence graph X^T X (0 = plain EASE for warm items)", minimum=0),
            Setting("adapter_reg", float, "mu: ridge weight of the bilinear content adapter "
                    "fitted to the collaborative weights", above=0),
            Setting("ease_backbone", str, "step 1: dense (exact EASE, |I|^2 memory) or topk "
                    "(each item regressed on its ease_neighbours most co-occurring items: "
                    "memory linear in the catalogue)", choices=BACKBONES),
            Setting("ease_neighbours", int, "k of ease_backbone=topk: neighbours per item",
                    minimum=1),
            Setting("new_item_scoring", str, "items without training interactions: parity "
                    "(adapter score placed in the user's warm-score distribution), adapter (raw "
                    "adapter score), none (semantic prior only)", choices=NEW_ITEM_SCORINGS),
        ),
        features=Features(CONTENT_FEATURES_KEY, doc="content embeddings, e.g. [vlm], [text, vlm]"),
        capabilities=Capabilities(scores_new_items=True),
        checks=(positive_weights("content_weights"),),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        reg_weight = float(config["reg_weight"])
        semantic_weight = float(config["semantic_weight"])
        adapter_reg = float(config["adapter_reg"])
        self.new_item_scoring = config["new_item_scoring"]
        features = require_content_features(config, dataset)
        weights = feature_weights(config["content_weights"], len(features), "content_weights")
        content = torch.cat([
            _centred_unit_rows(f.matrix, f.has_vector, bool(config["center_features"])) * w ** 0.5
            for f, w in zip(features, weights)], dim=1)
        has_content = torch.from_numpy(np.logical_or.reduce([f.has_vector for f in features]))

        self.history = dataset.inter_matrix(form="csr").astype(np.float32)
        support = np.asarray(self.history.sum(axis=0)).ravel()
        warm = torch.from_numpy(support > 0)
        warm[0] = False  # padding item
        new = ~warm
        new[0] = False
        self.logger.info(
            f"VLM4RecHybrid: {int(warm.sum())} items with training interactions, {int(new.sum())} "
            f"new ({int((new & ~has_content).sum())} of them without content); features "
            + ", ".join(f"{f.name} (w={w:.3g})" for f, w in zip(features, weights)))

        self.backbone = config["ease_backbone"]
        if self.backbone == "topk":
            collaborative = topk_ease(self.history, reg_weight, int(config["ease_neighbours"]),
                                      content, semantic_weight)
            self.sparse_weights = collaborative.astype(np.float32)
            dense_weights = torch.zeros(0, 0)
        else:
            collaborative = self._semantic_ease(content, reg_weight, semantic_weight)
            dense_weights = collaborative.float()
        bilinear = _fit_adapter(content, collaborative, warm, adapter_reg)
        # c_uj = (x_u F V) . f_j - x_uj (F V F^T)_jj: B_hat's diagonal is zero
        diagonal = ((content @ bilinear) * content).sum(dim=1)
        # Non-persistent buffers: they follow .to(device) and stay out of checkpoints (rebuilt).
        self.register_buffer("item_weights", dense_weights, persistent=False)
        self.register_buffer("content", content, persistent=False)
        self.register_buffer("bilinear", bilinear, persistent=False)
        self.register_buffer("adapter_diagonal", diagonal, persistent=False)
        self.register_buffer("content_sum", content.sum(dim=0), persistent=False)
        self.register_buffer("content_gram", content.T @ content, persistent=False)
        self.register_buffer("warm", warm, persistent=False)
        self.register_buffer("new_with_content", new & has_content, persistent=False)
        self.register_buffer("new_without_content", new & ~has_content, persistent=False)
        self.dummy_parameter = torch.nn.Parameter(torch.zeros(1))  # RecBole's optimizer needs one

    def _semantic_ease(self, content: torch.Tensor, reg_weight: float,
                       semantic_weight: float) -> torch.Tensor:
        """Step 1: B from (X^T X + alpha F F^T + lambda I)^-1 (float64)."""
        gram = torch.from_numpy((self.history.T @ self.history).toarray()).double()
        if semantic_weight:
            gram += semantic_weight * (content @ content.T)
        gram += reg_weight * torch.eye(self.n_items, dtype=torch.float64)
        inverse = torch.linalg.inv(gram)
        weights = inverse / -torch.diagonal(inverse)
        weights.fill_diagonal_(0.0)
        return weights

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        return torch.nn.Parameter(torch.zeros(1))

    def predict(self, interaction: Any) -> torch.Tensor:
        users = interaction[self.USER_ID]
        unique_users, row = torch.unique(users, return_inverse=True)
        return self._scores(unique_users)[row, interaction[self.ITEM_ID]]

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        return self._scores(interaction[self.USER_ID]).reshape(-1)

    def _scores(self, users: torch.Tensor) -> torch.Tensor:
        """``(len(users), n_items)`` scores (step 3)."""
        rows = self.history[users.cpu().numpy()]
        if self.backbone == "topk":
            scores = torch.from_numpy((rows @ self.sparse_weights).toarray()).to(self.device)
        else:
            scores = torch.sparse.mm(to_torch_sparse(rows).to(self.device), self.item_weights)
        if self.new_item_scoring == "none" or not bool(self.new_with_content.any()):
            return scores
        new = self.new_with_content
        adapter_new, mean, std = self._adapter_scores(rows, new)
        if self.new_item_scoring == "adapter":
            scores[:, new] = adapter_new
        else:
            warm_scores = scores[:, self.warm]
            scores[:, new] = (warm_scores.mean(dim=1, keepdim=True)
                              + warm_scores.std(dim=1, keepdim=True) * (adapter_new - mean) / std)
        if bool(self.new_without_content.any()):
            scores[:, self.new_without_content] = scores[:, self.warm].min(dim=1, keepdim=True).values
        return scores

    def _adapter_scores(self, rows: sp.csr_matrix,
                        new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Adapter scores c_u of the ``new`` items, and each user's mean and standard deviation
        of c_u over all items, from the d x d matrices (B_hat = F V F^T is never formed)."""
        history = torch.from_numpy(np.asarray(rows @ self.content.cpu().numpy())).to(self.device)
        projected = history @ self.bilinear  # P = x_u F V
        n = self.n_items
        coo = rows.tocoo()
        owner = torch.from_numpy(coo.row.astype(np.int64)).to(self.device)
        item = torch.from_numpy(coo.col.astype(np.int64)).to(self.device)
        value = torch.from_numpy(coo.data.astype(np.float64)).to(self.device)
        on_history = (projected[owner] * self.content[item]).sum(dim=1)  # P . f_j, j in history
        correction = value * self.adapter_diagonal[item]
        per_user = len(projected)
        total = projected @ self.content_sum - projected.new_zeros(per_user).index_add_(
            0, owner, correction)
        squares = ((projected @ self.content_gram) * projected).sum(dim=1) + projected.new_zeros(
            per_user).index_add_(0, owner, (on_history - correction) ** 2 - on_history ** 2)
        mean = total / n
        variance = ((squares - n * mean ** 2) / (n - 1)).clamp_min(0.0)
        adapter_new = projected @ self.content[new].T
        return (adapter_new.float(), mean[:, None].float(),
                variance.sqrt().clamp_min(1e-12)[:, None].float())

    def adapter_matrix(self) -> torch.Tensor:
        """B_hat = F V F^T with a zero diagonal, dense (|I| x |I|: for inspecting small data)."""
        adapted = self.content @ self.bilinear @ self.content.T
        adapted.fill_diagonal_(0.0)
        return adapted.float()

    def item_weight_matrix(self) -> torch.Tensor:
        """B dense (|I| x |I|: for inspecting small data)."""
        if self.backbone == "topk":
            return torch.from_numpy(self.sparse_weights.toarray())
        return self.item_weights


def _centred_unit_rows(matrix: np.ndarray, has_vector: np.ndarray, center: bool) -> torch.Tensor:
    """float64 rows, centred over the items with a vector (optional), L2-normalised; rows
    without a vector stay zero. Centring removes the similarity every pair of items shares."""
    rows = torch.from_numpy(matrix).double()
    covered = torch.from_numpy(has_vector)
    if center and bool(covered.any()):
        rows = rows - rows[covered].mean(dim=0)
    rows = torch.nn.functional.normalize(rows, dim=1)
    rows[~covered] = 0.0
    return rows


def _fit_adapter(content: torch.Tensor, collaborative: Any, warm: torch.Tensor,
                 adapter_reg: float) -> torch.Tensor:
    """Step 2: V, the ridge fit of B over warm item pairs (B_hat = F V F^T, zero diagonal).
    ``collaborative``: B as a dense tensor or a scipy sparse matrix."""
    warm_content = content * warm[:, None].double()
    eigenvalues, eigenvectors = torch.linalg.eigh(warm_content.T @ warm_content)
    projected = torch.zeros(content.shape[1], content.shape[1], dtype=torch.float64)
    for start in range(0, content.shape[0], ROW_BLOCK):  # F_W^T B F_W, |I| x d at most at once
        rows = slice(start, start + ROW_BLOCK)
        if isinstance(collaborative, torch.Tensor):
            product = collaborative[rows] @ warm_content
        else:
            product = torch.from_numpy(np.asarray(collaborative[rows] @ warm_content.numpy()))
        projected += warm_content[rows].T @ product
    target = eigenvectors.T @ projected @ eigenvectors
    rotated = target / (torch.outer(eigenvalues, eigenvalues) + adapter_reg)
    return eigenvectors @ rotated @ eigenvectors.T
