"""How models get item features: from the dataset, which loads them once (models never open files)."""

from __future__ import annotations

from typing import Any

from recbole_vlm4rec.data.features import AlignedFeature


def resolve_feature_name(config: Any, name: str | None) -> str:
    """``name``, or the dataset's ``default_item_feature`` when ``name`` is empty."""
    resolved = name or config["default_item_feature"]
    if not resolved:
        raise ValueError(
            f"model {config['model']} needs an item feature: set `item_feature` (model config or "
            f"--item_feature=...) or `default_item_feature` in configs/dataset/{config['dataset']}.yaml"
        )
    return str(resolved)


def require_item_feature(config: Any, dataset: Any, name: str | None) -> AlignedFeature:
    """The aligned feature a model is configured to use; a clear error when it cannot exist."""
    resolved = resolve_feature_name(config, name)
    if not hasattr(dataset, "item_feature"):
        raise TypeError(
            f"model {config['model']} reads item features, but the dataset is a plain RecBole "
            f"{type(dataset).__name__}; build it with recbole_vlm4rec.data.MultimodalDataset "
            "(run_recbole.py does)"
        )
    return dataset.item_feature(resolved)
