"""A RecBole Dataset that also carries named item feature matrices (``vlm``, ``text``, ``visual``...).

Features are declared in the dataset yaml and loaded once, on first use, by the framework (models
ask ``dataset.item_feature(name)``; they never open files). They are held as aligned matrices and
are never joined into training batches. Declaration::

    item_features:
      text:                       # feature name used by model configs
        file: text                # stem in features_dir (default: the feature name)
        build: item_text          # optional: built by the run layer (encoding/declared.py)
        template: "{movie_title} ({release_year}). Genres: {class}."
    features_dir: ~               # default: <data_path>/<dataset>/features
    feature_unknown_tokens: error # or ignore: rows for items absent from the dataset
    text_encoder: all-MiniLM-L6-v2  # encoder of declared text features

Feature files in ``features_dir`` that no declaration names are features too, under their file
name (data/feature_status.py): ``vlm4rec encode --feature clip`` makes ``--item_feature=clip``
usable at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from recbole.data.dataset import Dataset

from recbole_vlm4rec.data.feature_status import discover_feature_files, how_to_make
from recbole_vlm4rec.data.registry import is_embedded
from recbole_vlm4rec.formats import paths
from recbole_vlm4rec.formats.features import (AlignedFeature, FeatureFileError, align_feature,
                                              feature_paths, load_feature)


class MissingFeatureError(KeyError):
    """A model asked for a feature the dataset neither declares nor has a file of."""

    def __str__(self) -> str:
        return str(self.args[0])

    @classmethod
    def undeclared(cls, config: Any, name: str) -> "MissingFeatureError":
        """The error for a feature ``name`` that ``config``'s dataset does not have."""
        dataset = config["dataset"]
        known = sorted(declared_item_features(config))
        return cls(
            f"dataset '{dataset}' has no item feature '{name}': no declaration under "
            f"`item_features` and no {name}.npy in {features_dir(config)}; it has: "
            f"{', '.join(known) or 'none'}. Make it: "
            f"{how_to_make(dataset, name, {}, item_file(config), dataset_folder(config))}"
        )


def declared_item_features(config: Any) -> dict[str, dict[str, Any]]:
    """Feature name -> declaration (``file`` filled in): the ``item_features`` config key, then
    every feature file in :func:`features_dir` that no declaration names (``discovered: True``)."""
    declared = config["item_features"] or {}
    if not isinstance(declared, dict):
        raise ValueError(f"item_features must be a mapping of feature names, got {declared!r}")
    normalised = {}
    for name, spec in declared.items():
        if spec is None or isinstance(spec, str):
            spec = {"file": spec or name}
        normalised[str(name)] = {"file": str(name), **spec}
    named_files = {str(spec["file"]) for spec in normalised.values()}
    for stem in discover_feature_files(features_dir(config)):
        if stem not in normalised and stem not in named_files:
            normalised[stem] = {"file": stem, "discovered": True}
    return normalised


def features_dir(config: Any) -> Path:
    """``features_dir`` if set; else ``<data_path>/features`` beside the atomic files (for an
    embedded dataset, whose files sit inside a package, ``<project home>/dataset/<name>/features``)."""
    if config["features_dir"]:
        return Path(config["features_dir"])
    return dataset_folder(config) / "features"


def dataset_folder(config: Any) -> Path:
    """Where the dataset's own outputs live (features/, descriptions/): ``data_path``, or for an
    embedded dataset ``<project home>/dataset/<name>``."""
    if is_embedded(config["dataset"]):
        return paths.dataset_root() / config["dataset"]
    return Path(config["data_path"])


def item_file(config: Any) -> Path:
    """The dataset's ``.item`` atomic file (inside RecBole's package for an embedded dataset)."""
    return Path(config["data_path"]) / f"{config['dataset']}.item"


def feature_file(config: Any, spec: dict[str, Any]) -> tuple[Path, str]:
    """``(directory, file stem)`` of a declared feature (``file`` may be an absolute path)."""
    directory, file_name = features_dir(config), str(spec["file"])
    if os.path.isabs(file_name):
        directory, file_name = Path(file_name).parent, Path(file_name).name
    return directory, file_name


def missing_feature_file_error(config: Any, name: str, spec: dict[str, Any]) -> FeatureFileError:
    """A declared feature whose file does not exist: the error names the file and how to make it."""
    directory, file_name = feature_file(config, spec)
    hint = how_to_make(config["dataset"], name, spec, item_file(config), dataset_folder(config))
    return FeatureFileError(f"feature '{name}': file not found: "
                            f"{feature_paths(directory, file_name)[0]}. Make it: {hint}")


def check_features_declared(config: Any, names: list[str]) -> None:
    """MissingFeatureError for the first of ``names`` the dataset does not have."""
    declared = declared_item_features(config)
    for name in names:
        if name not in declared:
            raise MissingFeatureError.undeclared(config, name)


class MultimodalDataset(Dataset):
    """RecBole ``Dataset`` plus item feature matrices aligned to internal item ids.

    It only loads feature files: features declared with a ``build`` recipe are built by the run
    layer (run/protocol.py, through the encode stage) before the dataset is created.
    """

    def __init__(self, config: Any) -> None:
        # Set before super().__init__: RecBole's train/valid/test splits are shallow copies, so
        # they all share this cache and a feature is read from disk once per run.
        self._item_features: dict[str, AlignedFeature] = {}
        super().__init__(config)

    def item_feature(self, name: str) -> AlignedFeature:
        """The feature ``name`` as an ``(n_items, dim)`` matrix indexed by internal item id."""
        if name not in self._item_features:
            declared = declared_item_features(self.config)
            if name not in declared:
                raise MissingFeatureError.undeclared(self.config, name)
            aligned = self._load_item_feature(name, declared[name])
            if aligned.n_covered == 0:
                # Every item would score alike: a run would only measure the tie-break.
                raise FeatureFileError(
                    f"feature '{name}' ({aligned.path}): none of the dataset's {aligned.n_items} "
                    f"items has a vector ({aligned.n_file_rows} file rows, "
                    f"{aligned.n_unknown_tokens} of them name items not in the dataset); "
                    "rebuild it for this dataset")
            covered_all = aligned.n_covered == aligned.n_items
            (self.logger.info if covered_all else self.logger.warning)(aligned.report())
            self._item_features[name] = aligned
        return self._item_features[name]

    def _load_item_feature(self, name: str, spec: dict[str, Any]) -> AlignedFeature:
        directory, file_name = feature_file(self.config, spec)
        if not feature_paths(directory, file_name)[0].is_file():
            raise missing_feature_file_error(self.config, name, spec)
        feature = load_feature(directory, file_name)
        feature.name = name
        return align_feature(
            feature,
            self.field2id_token[self.iid_field],
            unknown_tokens=self.config["feature_unknown_tokens"],
        )
