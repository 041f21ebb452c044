"""A RecBole Dataset that also carries named item feature matrices (``vlm``, ``text``, ``visual``...).

Features are declared in the dataset yaml and loaded once, on first use, by the framework (models
ask ``dataset.item_feature(name)``; they never open files). They are held as aligned matrices and
are never joined into training batches. Declaration::

    item_features:
      text:                       # feature name used by model configs
        file: text                # stem in features_dir (default: the feature name)
        build: item_text          # optional: (re)build from the .item atomic file when stale
        template: "{movie_title} ({release_year}). Genres: {class}."
    features_dir: ~               # default: <data_path>/<dataset>/features
    feature_unknown_tokens: error # or ignore: rows for items absent from the dataset
    text_encoder: all-MiniLM-L6-v2
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from recbole.data.dataset import Dataset

from recbole_vlm4rec import paths
from recbole_vlm4rec.data.features import AlignedFeature, align_feature, load_feature
from recbole_vlm4rec.data.registry import is_embedded


class MissingFeatureError(KeyError):
    """A model asked for a feature the dataset does not declare."""

    def __str__(self) -> str:
        return str(self.args[0])

    @classmethod
    def undeclared(cls, dataset: str, name: str, declared: Any) -> "MissingFeatureError":
        """The error for a feature ``name`` missing from ``dataset``'s ``item_features``."""
        return cls(
            f"dataset '{dataset}' declares no item feature '{name}'; declared: "
            f"{sorted(declared) or 'none'}. Declare it under `item_features` in "
            f"configs/dataset/{dataset}.yaml."
        )


class MultimodalDataset(Dataset):
    """RecBole ``Dataset`` plus item feature matrices aligned to internal item ids."""

    def __init__(self, config: Any) -> None:
        # Set before super().__init__: RecBole's train/valid/test splits are shallow copies, so
        # they all share this cache and a feature is read from disk once per run.
        self._item_features: dict[str, AlignedFeature] = {}
        super().__init__(config)

    def declared_item_features(self) -> dict[str, dict[str, Any]]:
        """Feature name -> declaration, from the ``item_features`` config key."""
        declared = self.config["item_features"] or {}
        normalised = {}
        for name, spec in declared.items():
            if spec is None or isinstance(spec, str):
                spec = {"file": spec or name}
            normalised[name] = {"file": name, **spec}
        return normalised

    def features_dir(self) -> Path:
        """``features_dir`` if set; else ``<data_path>/features`` beside the atomic files (for an
        embedded dataset, whose files sit inside a package, ``dataset/<name>/features``)."""
        configured = self.config["features_dir"]
        if configured:
            return Path(configured)
        if is_embedded(self.dataset_name):
            return paths.features_dir(self.dataset_name)
        return Path(self.dataset_path) / "features"

    def item_feature(self, name: str) -> AlignedFeature:
        """The feature ``name`` as an ``(n_items, dim)`` matrix indexed by internal item id."""
        if name not in self._item_features:
            declared = self.declared_item_features()
            if name not in declared:
                raise MissingFeatureError.undeclared(self.dataset_name, name, declared)
            aligned = self._load_item_feature(name, declared[name])
            self.logger.info(aligned.report())
            self._item_features[name] = aligned
        return self._item_features[name]

    def _load_item_feature(self, name: str, spec: dict[str, Any]) -> AlignedFeature:
        directory = self.features_dir()
        file_name = str(spec["file"])
        if os.path.isabs(file_name):
            directory, file_name = Path(file_name).parent, Path(file_name).name
        if spec.get("build") == "item_text":
            from recbole_vlm4rec.encoding.item_text import build_item_text_feature

            build_item_text_feature(
                item_file=Path(self.dataset_path) / f"{self.dataset_name}.item",
                template=spec["template"],
                out_dir=directory,
                name=file_name,
                encoder_spec=self.config["text_encoder"] or "all-MiniLM-L6-v2",
                item_field=self.iid_field,
                device=str(self.config["device"]) if self.config["device"] else None,
            )
        elif spec.get("build"):
            raise ValueError(
                f"item feature '{name}': unknown build recipe {spec['build']!r} (known: item_text)"
            )
        feature = load_feature(directory, file_name)
        feature.name = name
        return align_feature(
            feature,
            self.field2id_token[self.iid_field],
            unknown_tokens=self.config["feature_unknown_tokens"] or "error",
        )
