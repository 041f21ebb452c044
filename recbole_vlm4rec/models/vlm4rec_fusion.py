r"""VLM4RecFusion: VLM4Rec's profile matching over several item features at once.

Reference:
    Valencia et al., "VLM4Rec: Multimodal Semantic Representation for Recommendation with Large
    Vision-Language Models", arXiv:2603.12625, 2026: the fusion baselines that the paper compares
    single representations against (raw visual + text, VLM + visual...).

``content_features`` lists the features (``~`` = the dataset's ``default_item_feature``);
``fusion_weights`` one non-negative weight per feature (``~`` = equal), normalised to sum to 1.

``fusion: concat`` (early fusion)
    An item is the concatenation of its L2-normalised features, feature k scaled by sqrt(w_k), then
    matched exactly like VLM4Rec matches one feature (mean or max profile, cosine).
``fusion: weighted`` (late fusion, weighted average of scores)
    Each feature gets its own profile; score = sum_k w_k * cosine_k(profile_k, item_k).

An item without a vector for feature k contributes zeros in that feature's part (concat) or a 0
cosine for it (weighted); it is left out of the profile of that feature only. Coverage is logged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from recbole_vlm4rec.models import _memory, register_model
from recbole_vlm4rec.models.contract import (CONTENT_FEATURES_KEY, Capabilities, Features,
                                             ModelContract, Setting, positive_weights)
from recbole_vlm4rec.models.features import feature_weights, require_content_features
from recbole_vlm4rec.models.vlm4rec import PROFILE_SETTINGS, EmbeddingBlock, VLM4Rec

FUSIONS = ("concat", "weighted")


def _max_needs_one_block(values: Any) -> str | None:
    if values.get("profile_aggregation") == "max" and values.get("fusion") == "weighted" \
            and len(values.get(CONTENT_FEATURES_KEY) or []) > 1:
        return ("config key 'profile_aggregation' max matches on one embedding; fusion=weighted "
                "scores each feature separately: use fusion=concat or profile_aggregation=mean")
    return None


@register_model
class VLM4RecFusion(VLM4Rec):
    r"""Profile matching on a concatenation or a weighted average of several item features."""

    contract = ModelContract(
        memory_estimate=_memory.vlm4rec,
        settings=PROFILE_SETTINGS + (
            Setting("fusion", str, "concat: match on the concatenation of normalised features; "
                    "weighted: sum_k w_k * cosine_k", choices=FUSIONS),
            Setting("fusion_weights", float, "one weight per feature, normalised to sum 1; "
                    "~ = equal weights", minimum=0, optional=True, per_feature=True),
        ),
        features=Features(CONTENT_FEATURES_KEY, doc="the features to fuse, e.g. [visual, text]"),
        capabilities=Capabilities(profile_servable=True, scores_new_items=True),
        checks=(positive_weights("fusion_weights"), _max_needs_one_block),
    )

    def _embedding_blocks(self, config: Any, dataset: Any) -> list[EmbeddingBlock]:
        fusion = config["fusion"]
        features = require_content_features(config, dataset)
        weights = feature_weights(config["fusion_weights"], len(features))
        self.logger.info(
            f"VLM4RecFusion: {fusion} of "
            + ", ".join(f"{f.name} (w={w:.3g})" for f, w in zip(features, weights))
        )
        blocks = [EmbeddingBlock.from_feature(f, w) for f, w in zip(features, weights)]
        if fusion == "weighted":
            return blocks
        joined = torch.cat([b.embeddings * float(np.sqrt(b.weight)) for b in blocks], dim=1)
        has_vector = np.logical_or.reduce([b.has_vector for b in blocks])
        name = "+".join(b.name for b in blocks)
        return [EmbeddingBlock(name, F.normalize(joined, dim=1), has_vector)]

