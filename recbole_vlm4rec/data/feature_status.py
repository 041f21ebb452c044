"""Which item features a dataset has, which it lacks, and the command that makes each missing one.

A dataset's features are the ones its yaml declares under ``item_features`` plus every feature file
found in its features folder (``<name>.npy`` with ``<name>.tokens`` beside it, the format of
formats/features.py): a feature written by ``vlm4rec encode --feature X`` is usable as
``--item_feature=X`` at once, with no yaml edit. Declaring a feature is still how it gets a build
recipe, another file name, or is listed as expected before it exists (``vlm4rec features``).

:func:`how_to_make` is the one place that says which command makes a missing feature, so the
``vlm4rec features`` listing, a run's missing-file error and prepare's "next:" lines agree.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from dataclasses import dataclass, field

from recbole_vlm4rec.formats.images import is_url
from recbole_vlm4rec.formats.items import read_item_table

# Conventional feature names and what makes them (README, "The pipeline, end to end"; the
# defaults of `vlm4rec encode`: --descriptions -> vlm, --template -> text, --modality image ->
# visual, --modality lvlm -> lvlm, --modality slots -> slots).
DESCRIPTION_FEATURES = ("vlm",)
IMAGE_FEATURES = ("visual",)
TEXT_FEATURES = ("text",)
LVLM_FEATURES = ("lvlm",)
SLOT_FEATURES = ("slots",)
_NOT_TEXT = {"item_id", "image", "asin"}
# `vlm4rec encode --modality lvlm` needs a vision-language model; the hint names it VLM
VLM_PLACEHOLDER = "VLM"
_VLM_NOTE = (f"{VLM_PLACEHOLDER}: a vision-language model folder or hub id, e.g. "
             "Qwen/Qwen2-VL-2B-Instruct, or --backend openai --base-url URL for a served one; "
             "see docs/encoding.md")


def discover_feature_files(directory: Path) -> list[str]:
    """Names of the feature files in ``directory`` (``<name>.npy`` with ``<name>.tokens``)."""
    if not directory.is_dir():
        return []
    return sorted(path.stem for path in directory.glob("*.npy")
                  if path.with_suffix(".tokens").is_file())


@dataclass
class DatasetFeatures:
    """A prepared dataset's features as its yaml and its features folder state them."""

    declared: dict[str, dict[str, Any]]  # name -> spec (files on disk are declared as {})
    on_disk: set[str]
    default: str | None  # default_item_feature
    content: list[str] = field(default_factory=list)  # content_features, else [default]

    def ready(self, feature: str) -> bool:
        """On disk, or declared with a build recipe (built on first use)."""
        return feature in self.on_disk or bool(self.declared.get(feature, {}).get("build"))


def dataset_features(folder: Path, config_paths: list[Path]) -> DatasetFeatures:
    """The features of the dataset in ``folder`` under its yaml layers ``config_paths`` (later
    wins; missing files are skipped)."""
    import yaml

    config: dict[str, Any] = {}
    for path in config_paths:
        if path.is_file():
            config.update(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    on_disk = set(discover_feature_files(folder / "features"))
    declared = {str(n): (spec if isinstance(spec, dict) else {})
                for n, spec in (config.get("item_features") or {}).items()}
    declared.update({n: {} for n in on_disk if n not in declared})
    default = config.get("default_item_feature") or None
    content = [str(n) for n in (config.get("content_features") or ([default] if default else []))]
    return DatasetFeatures(declared, on_disk, default, content)


def item_table_columns(item_file: Path, with_types: bool = False) -> list[str]:
    """Column names of an ``.item`` file (``:type`` suffixes dropped unless ``with_types``);
    [] when there is none."""
    try:
        with open(item_file, encoding="utf-8") as handle:
            header = handle.readline().rstrip("\r\n")
    except OSError:
        return []
    columns = [column for column in header.split("\t") if column]
    return columns if with_types else [column.split(":")[0] for column in columns]


def count_items_with_image(item_file: Path) -> tuple[int, int]:
    """``(local, urls)``: rows of ``item_file`` whose ``image`` is a path, and those whose image is
    a URL not downloaded yet; (0, 0) without an ``image`` column."""
    if "image" not in item_table_columns(item_file):
        return 0, 0
    images = read_item_table(item_file)["image"].str.strip()
    urls = int(images.map(is_url).sum())
    return int((images != "").sum()) - urls, urls


def _descriptions_tags(dataset_dir: Path) -> list[str]:
    return sorted(path.stem for path in (dataset_dir / "descriptions").glob("*.jsonl"))


def _structured_tags(dataset_dir: Path) -> list[str]:
    """Tags of descriptions files with structured slots (a row with ``fields``): what
    ``vlm4rec encode --modality slots`` reads."""
    from recbole_vlm4rec.formats.descriptions import DescriptionsFileError, read_descriptions

    tags = []
    for tag in _descriptions_tags(dataset_dir):
        try:
            rows = read_descriptions(dataset_dir / "descriptions" / f"{tag}.jsonl")
        except DescriptionsFileError:
            continue
        if any(isinstance(row.get("fields"), dict) and row["fields"] for row in rows):
            tags.append(tag)
    return tags


def _prepare_command(dataset_dir: Path) -> str | None:
    """The command that prepared the dataset, from its card (formats of data/prepare/card.py)."""
    try:
        return json.loads((dataset_dir / "card.json").read_text()).get("command") or None
    except (OSError, ValueError, AttributeError):
        return None


def text_template(item_file: Path) -> str | None:
    """A ``{column}`` template over the text columns of ``item_file`` (None: no text column)."""
    columns = []
    for typed in item_table_columns(item_file, with_types=True):
        column, _, kind = typed.partition(":")
        if column not in _NOT_TEXT and kind != "float":
            columns.append(column)
    return ". ".join(f"{{{column}}}" for column in columns) + "." if columns else None


def how_to_make(dataset: str, name: str, spec: dict[str, Any], item_file: Path,
                dataset_dir: Path) -> str:
    """One line: the command(s) that make feature ``name`` of ``dataset``, or why none can.

    ``item_file`` is the dataset's ``.item`` file, ``dataset_dir`` the folder holding its
    ``descriptions/`` (both may not exist).
    """
    if spec.get("build"):
        return (f"built from {item_file.name} by the first run that reads it, or now by "
                f"`vlm4rec features {dataset}`")
    if name in TEXT_FEATURES:
        template = text_template(item_file)
        if template is None:
            return (f"needs item text, and {dataset} has no item table with text columns "
                    f"({item_file}): encode another table with `vlm4rec encode {dataset} --items "
                    f"FILE --template '{{column}} ...' --feature {name}`")
        return (f"`vlm4rec encode {dataset} --template {shlex.quote(template)} "
                f"--feature {name}`")
    if name in SLOT_FEATURES:
        tags = _structured_tags(dataset_dir)
        if tags:
            return f"`vlm4rec encode {dataset} --modality slots --descriptions {tags[0]}`"
    local, urls = count_items_with_image(item_file) if item_file.is_file() else (0, 0)
    if name in DESCRIPTION_FEATURES:
        tags = _descriptions_tags(dataset_dir)
        if tags:
            return f"`vlm4rec encode {dataset} --descriptions {tags[0]}`"
    if name in (*IMAGE_FEATURES, *DESCRIPTION_FEATURES, *LVLM_FEATURES, *SLOT_FEATURES):
        if not local:
            return _no_images(dataset, item_file, name, urls, dataset_dir)
        if name in IMAGE_FEATURES:
            return f"`vlm4rec encode {dataset} --modality image`"
        if name in LVLM_FEATURES:
            return (f"`vlm4rec encode {dataset} --modality lvlm --model {VLM_PLACEHOLDER}` "
                    f"({_VLM_NOTE})")
        if name in SLOT_FEATURES:  # structured slots: the tag is <backend>-<prompt>
            ground = " --prompt structured"
            encode = "--modality slots --descriptions tagger-structured"
        else:
            ground, encode = "", "--descriptions tagger-preference"
        return (f"`vlm4rec ground {dataset} --backend tagger{ground} --only-with-image` (offline "
                f"stand-in; an LVLM: --backend openai or transformers), then `vlm4rec encode "
                f"{dataset} {encode}`")
    return (f"the encoder that fits what {name} should hold: "
            f"`vlm4rec encode {dataset} --descriptions TAG --feature {name}` (descriptions), "
            f"`vlm4rec encode {dataset} --template '{{column}} ...' --feature {name}` "
            "(item text), "
            f"`vlm4rec encode {dataset} --modality image --feature {name}` (image vectors) or "
            f"`vlm4rec encode {dataset} --modality lvlm --model {VLM_PLACEHOLDER} --feature "
            f"{name}` ({_VLM_NOTE})")


def _no_images(dataset: str, item_file: Path, name: str, urls: int = 0,
               dataset_dir: Path | None = None) -> str:
    if urls:
        command = _prepare_command(dataset_dir) if dataset_dir else None
        rerun = (f"`{command} --download-images`" if command
                 else "its vlm4rec prepare command with --download-images")
        return (f"needs item images, and the {urls:,} images of {dataset} are URLs: download "
                f"them first ({rerun})")
    where = (f"{item_file.name} has no image column" if item_file.is_file()
             and "image" not in item_table_columns(item_file)
             else f"no item of {dataset} has an image" if item_file.is_file()
             else f"{dataset} has no item table ({item_file})")
    hint = " (ml-100k-posters is ml-100k with posters)" if dataset == "ml-100k" else ""
    return (f"needs item images, and {where}{hint}: prepare the dataset with images, or "
            f"encode another source with `--feature {name}`")
