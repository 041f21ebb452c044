"""How models get item features: from the dataset, which loads them once (models never open files).

:func:`features_read_by` is the one statement of which dataset features a run reads: the models
load exactly those, and the run layer, the benchmark precheck and serving all ask it. A model's
contract says which config key names its features (``features=Features(key, minimum)``:
``item_feature``: one feature; ``content_features``: a list); models without one read none.
"""

from __future__ import annotations

from typing import Any

from recbole_vlm4rec.formats.features import AlignedFeature
from recbole_vlm4rec.models.contract import CONTENT_FEATURES_KEY, ITEM_FEATURE_KEY, ModelContract

__all__ = ["CONTENT_FEATURES_KEY", "ITEM_FEATURE_KEY", "features_read_by"]


def feature_key(model_class: type) -> str | None:
    """The config key naming the features ``model_class`` reads (its contract's), or None."""
    contract = model_class.__dict__.get("contract") or getattr(model_class, "contract", None)
    if isinstance(contract, ModelContract) and contract.features is not None:
        return contract.features.key
    return None


def features_read_by(model_class: type, config: Any) -> list[str]:
    """Names of the dataset features ``model_class`` reads under ``config`` (empty: none)."""
    key = feature_key(model_class)
    if key == CONTENT_FEATURES_KEY:
        return content_feature_names(config)
    if key is not None:
        return [resolve_feature_name(config, config[key], key)]
    return []


def resolve_feature_name(config: Any, name: str | None, key: str = ITEM_FEATURE_KEY) -> str:
    """``name``, or the dataset's ``default_item_feature`` when ``name`` is empty."""
    resolved = name or config["default_item_feature"]
    if not resolved:
        raise ValueError(
            f"model {config['model']} needs an item feature: set `{key}` (model config or "
            f"--{key}=...) or `default_item_feature` in configs/dataset/{config['dataset']}.yaml"
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


def content_feature_names(config: Any) -> list[str]:
    """Names in ``content_features``; ``~``/empty = ``[default_item_feature]``.

    Accepts a yaml list or, from the command line, ``visual,text`` / ``[visual, text]``.
    """
    configured = config[CONTENT_FEATURES_KEY]
    if isinstance(configured, str):
        configured = [part.strip(" '\"") for part in configured.strip("[]").split(",")]
    names = [str(name) for name in (configured or []) if name]
    if not names:
        return [resolve_feature_name(config, None, CONTENT_FEATURES_KEY)]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{CONTENT_FEATURES_KEY} names {repeated} more than once: {names}")
    return names


def require_content_features(config: Any, dataset: Any) -> list[AlignedFeature]:
    """The features in ``content_features``, each loaded once by the dataset.

    Items without a vector keep a zero row; the count is logged per feature so a run's log says how
    many items a model saw with no content.
    """
    names = content_feature_names(config)
    features = [require_item_feature(config, dataset, name) for name in names]
    for feature in features:
        missing = feature.n_items - feature.n_covered
        if missing:
            dataset.logger.warning(
                f"{config['model']}: {missing}/{feature.n_items} items have no '{feature.name}' "
                "vector; their content input is a zero vector"
            )
    return features


def feature_weights(configured: Any, n_features: int, key: str = "fusion_weights") -> list[float]:
    """One weight per content feature (config ``key``) normalised to sum 1; ``~`` = equal."""
    if configured is None or configured == []:
        return [1.0 / n_features] * n_features
    if isinstance(configured, (int, float)):
        configured = [configured]
    weights = [float(w) for w in configured]
    if len(weights) != n_features:
        raise ValueError(
            f"{key} has {len(weights)} values but content_features names {n_features} "
            "features: give one weight per feature"
        )
    if min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"{key} must be non-negative with a positive sum, got {weights}")
    total = sum(weights)
    return [w / total for w in weights]
