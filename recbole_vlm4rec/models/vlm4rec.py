r"""VLM4Rec: profile-based semantic matching over item embeddings.

Reference:
    Ty Valencia, Burak Barlas, Varun Singhal, Ruchir Bhatia, Wei Yang. "VLM4Rec: Multimodal
    Semantic Representation for Recommendation with Large Vision-Language Models." arXiv:2603.12625,
    2026.

Items are represented by a precomputed embedding (by default the sentence embedding of what a
vision-language model says about the item image). A user's profile aggregates the L2-normalised
embeddings of the items in their *training* history; items are ranked by cosine similarity to it.
Nothing is trained (RecBole's TRADITIONAL model type: one pass, no optimisation).

The same class serves every representation: ``item_feature`` names the dataset feature to match on
(``vlm``, ``visual``, ``text``...; empty means the dataset's ``default_item_feature``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType

from recbole_vlm4rec.formats.features import AlignedFeature
from recbole_vlm4rec.models._graph import to_torch_sparse
from recbole_vlm4rec.models import _memory, register_model
from recbole_vlm4rec.models.contract import (ITEM_FEATURE_KEY, Capabilities, Features,
                                             ModelContract, Setting)
from recbole_vlm4rec.models.features import require_item_feature

AGGREGATIONS = ("mean", "max")
SCORINGS = ("auto", "profiles", "item_similarity")
PROFILE_SETTINGS = (
    Setting("profile_aggregation", str, "mean: cosine to the mean of the history's normalised "
            "embeddings; max: best cosine to any history item", choices=AGGREGATIONS),
    Setting("profile_scoring", str, "mean profiles only: profiles (users x dim x items per "
            "evaluation), item_similarity (items x items once, then a sparse history product), "
            "auto = item_similarity when there are fewer items than users and the items x items "
            "matrix fits in 2 GiB (~23k items); same scores", choices=SCORINGS),
)


@dataclass
class EmbeddingBlock:
    """Item embeddings that get their own profile; the final score is sum_k weight_k * cosine_k."""

    name: str
    embeddings: torch.Tensor  # (n_items, dim), unit rows; zero rows for items without a vector
    has_vector: np.ndarray  # (n_items,) bool
    weight: float = 1.0

    @classmethod
    def from_feature(cls, feature: AlignedFeature, weight: float = 1.0) -> "EmbeddingBlock":
        embeddings = F.normalize(torch.from_numpy(feature.matrix), dim=1)
        embeddings[~torch.from_numpy(feature.has_vector)] = 0.0
        return cls(feature.name, embeddings, feature.has_vector, weight)


@register_model
class VLM4Rec(GeneralRecommender):
    r"""Cosine matching between a user profile and item embeddings.

    ``profile_aggregation``:
        ``mean``: profile = mean of the history's normalised embeddings; score = cosine(profile, item).
        ``max``: score = the highest cosine between the item and any history item.
    Items without a vector score 0 and are left out of profiles; users whose history has no vector
    score 0 everywhere (both are counted in the log).
    """

    input_type = InputType.POINTWISE
    type = ModelType.TRADITIONAL
    contract = ModelContract(
        memory_estimate=_memory.vlm4rec,
        settings=PROFILE_SETTINGS,
        features=Features(ITEM_FEATURE_KEY, doc="the feature to match on: vlm, visual, text..."),
        capabilities=Capabilities(profile_servable=True, scores_new_items=True),
    )

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.aggregation = config["profile_aggregation"]
        scoring = config["profile_scoring"]
        blocks = self._embedding_blocks(config, dataset)
        self.feature_name = "+".join(block.name for block in blocks)
        self.blocks = blocks  # what serving needs to build a profile for a new item list

        # `dataset` is the training split (RecBole builds models on train_data.dataset), so
        # validation and test interactions cannot enter a profile.
        history = dataset.inter_matrix(form="csr").astype(np.float32)
        has_profile = np.zeros(history.shape[0], dtype=bool)
        item_parts, profile_parts, weighted_history, similarity = [], [], [], []
        for block in blocks:
            block_history = history @ sp.diags(block.has_vector.astype(np.float32))
            block_history.eliminate_zeros()
            n_history = np.asarray(block_history.sum(axis=1)).ravel()
            has_profile |= n_history > 0
            scale = float(np.sqrt(block.weight))
            item_parts.append(block.embeddings * scale)
            if self.aggregation == "mean":
                profiles = torch.from_numpy(np.asarray(block_history @ block.embeddings.numpy()))
                profile_parts.append(F.normalize(profiles.float(), dim=1) * scale)
                norms = profiles.norm(dim=1).numpy()
                inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
                weighted_history.append(sp.diags(inverse) @ block_history)
                similarity.append(block.embeddings)
            else:
                self.history = block_history.tocsr()
        self.n_users_without_profile = int((~has_profile[1:]).sum())
        if self.n_users_without_profile:
            self.logger.warning(
                f"VLM4Rec: {self.n_users_without_profile} users have no training item with a "
                f"'{self.feature_name}' vector; they score 0 for every item"
            )

        # Non-persistent buffers: they follow .to(device) but stay out of checkpoints.
        # With several blocks the dot product of the concatenations is sum_k weight_k * cosine_k.
        self.register_buffer("item_embeddings", torch.cat(item_parts, dim=1), persistent=False)
        if self.aggregation == "mean":
            self.register_buffer("user_profiles", torch.cat(profile_parts, dim=1), persistent=False)
        # Mean profiles are linear in the history: profile_u . x_i = sum_j in H(u) x_j . x_i / |.|,
        # so with fewer items than users, one item-item similarity matrix (built once) plus a
        # sparse history product costs less than users x dim x items per evaluation; `auto`
        # keeps that matrix under a bound so memory stays linear in the catalogue.
        self.scores_from_item_similarity = _memory.uses_item_similarity(
            self.aggregation, scoring, self.n_items, self.n_users)
        if self.scores_from_item_similarity:
            self.weighted_history = sp.hstack(weighted_history, format="csr").astype(np.float32)
            blocks_similarity = torch.cat([
                (x * b.weight) @ x.T for x, b in zip(similarity, blocks)])
            self.register_buffer("item_similarity", blocks_similarity, persistent=False)
        # TRADITIONAL models still need one parameter for RecBole's optimizer.
        self.dummy_parameter = torch.nn.Parameter(torch.zeros(1))

    def _embedding_blocks(self, config: Any, dataset: Any) -> list[EmbeddingBlock]:
        """What is matched: one block per separately scored embedding (here: ``item_feature``)."""
        feature = require_item_feature(config, dataset, config["item_feature"])
        return [EmbeddingBlock.from_feature(feature)]

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        return torch.nn.Parameter(torch.zeros(1))

    def predict(self, interaction: Any) -> torch.Tensor:
        users = interaction[self.USER_ID]
        items = interaction[self.ITEM_ID]
        if self.aggregation == "mean":
            return (self.user_profiles[users] * self.item_embeddings[items]).sum(dim=1)
        unique_users, row = torch.unique(users, return_inverse=True)
        return self._max_similarity(unique_users)[row, items]

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        users = interaction[self.USER_ID]
        if self.scores_from_item_similarity:
            history = to_torch_sparse(self.weighted_history[users.cpu().numpy()])
            scores = torch.sparse.mm(history.to(self.device), self.item_similarity)
        elif self.aggregation == "mean":
            scores = self.user_profiles[users] @ self.item_embeddings.T
        else:
            scores = self._max_similarity(users)
        return scores.reshape(-1)

    def _max_similarity(self, users: torch.Tensor) -> torch.Tensor:
        """``(len(users), n_items)``: max cosine between each item and the user's history items."""
        history = self.history[users.cpu().numpy()]
        owner = torch.from_numpy(np.repeat(np.arange(len(users)), np.diff(history.indptr)))
        history_items = torch.from_numpy(history.indices.astype(np.int64))
        similarity = self.item_embeddings[history_items.to(self.device)] @ self.item_embeddings.T
        scores = torch.zeros(len(users), self.n_items, device=self.device)
        if len(owner):
            index = owner.to(self.device)[:, None].expand_as(similarity)
            scores.scatter_reduce_(0, index, similarity, reduce="amax", include_self=False)
        return scores
