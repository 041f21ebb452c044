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
from the training split in ``__init__``. Cost: two dense |I| x |I| matrices and one inversion
(EASE's), plus a d x d eigendecomposition (d = the summed feature dimensions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType

from recbole_vlm4rec.models import register_model
from recbole_vlm4rec.models._graph import to_torch_sparse
from recbole_vlm4rec.models.contract import (CONTENT_FEATURES_KEY, Capabilities, Features,
                                             ModelContract, Setting, positive_weights)
from recbole_vlm4rec.models.features import feature_weights, require_content_features

NEW_ITEM_SCORINGS = ("parity", "adapter", "none")


@register_model
class VLM4RecHybrid(GeneralRecommender):
    r"""Semantic-prior EASE + a content adapter for new items (see the module docstring)."""

    input_type = InputType.POINTWISE
    type = ModelType.TRADITIONAL
    contract = ModelContract(
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

        collaborative = self._semantic_ease(content, reg_weight, semantic_weight)
        adapted = _fit_adapter(content, collaborative, warm, adapter_reg)
        # Non-persistent buffers: they follow .to(device) and stay out of checkpoints (rebuilt).
        self.register_buffer("item_weights", collaborative.float(), persistent=False)
        self.register_buffer("adapter_weights", adapted.float(), persistent=False)
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
        history = to_torch_sparse(self.history[users.cpu().numpy()]).to(self.device)
        scores = torch.sparse.mm(history, self.item_weights)
        if self.new_item_scoring == "none" or not bool(self.new_with_content.any()):
            return scores
        adapter = torch.sparse.mm(history, self.adapter_weights)
        new = self.new_with_content
        if self.new_item_scoring == "adapter":
            scores[:, new] = adapter[:, new]
        else:
            warm_scores = scores[:, self.warm]
            standardised = ((adapter - adapter.mean(dim=1, keepdim=True))
                            / adapter.std(dim=1, keepdim=True).clamp_min(1e-12))
            scores[:, new] = (warm_scores.mean(dim=1, keepdim=True)
                              + warm_scores.std(dim=1, keepdim=True) * standardised[:, new])
        if bool(self.new_without_content.any()):
            scores[:, self.new_without_content] = scores[:, self.warm].min(dim=1, keepdim=True).values
        return scores


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


def _fit_adapter(content: torch.Tensor, collaborative: torch.Tensor, warm: torch.Tensor,
                 adapter_reg: float) -> torch.Tensor:
    """Step 2: B_hat = F V F^T (zero diagonal), V the ridge fit of B over warm item pairs."""
    warm_content = content * warm[:, None].double()
    eigenvalues, eigenvectors = torch.linalg.eigh(warm_content.T @ warm_content)
    target = eigenvectors.T @ (warm_content.T @ collaborative @ warm_content) @ eigenvectors
    rotated = target / (torch.outer(eigenvalues, eigenvalues) + adapter_reg)
    bilinear = eigenvectors @ rotated @ eigenvectors.T
    adapted = content @ bilinear @ content.T
    adapted.fill_diagonal_(0.0)
    return adapted
