"""Declared derived features: a dataset yaml may declare a feature that is built from its item file.

::

    item_features:
      text:
        build: item_text                                    # the one recipe today
        template: "{movie_title} ({release_year}). Genres: {class}."

The run layer calls :func:`ensure_declared_features` *before* the dataset is created, so the
Dataset only loads files. The feature is built through the same code and per-input vector cache as
``vlm4rec encode --template`` and written with the same meta schema, plus ``origin: declared`` and
the recipe it was built from. Rules:

* no file yet: build it;
* a file this function built (``origin: declared``) whose recipe differs from the declaration
  (template, encoder, or the item file's content changed): rebuild it;
* a file written by ``vlm4rec encode`` (or anything else): used as written, never rebuilt; the
  returned note says so, so the run log shows which file it used and why.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from recbole_vlm4rec.encoding.encode import encode_text_feature, texts_from_table
from recbole_vlm4rec.formats.features import feature_paths, read_meta

RECIPES = ("item_text",)


def declared_recipe(spec: dict[str, Any], item_file: Path, encoder_spec: str) -> dict[str, Any]:
    """What a declared feature is built from; a file built from another recipe is stale."""
    return {
        "build": spec["build"],
        "template": spec["template"],
        "encoder": encoder_spec,
        "item_file_sha256": hashlib.sha256(item_file.read_bytes()).hexdigest(),
    }


def ensure_declared_features(
    declared: dict[str, dict[str, Any]],
    item_file: Path,
    features_dir: Path,
    encoder_spec: str,
    item_field: str = "item_id",
    device: str | None = None,
    show_progress: bool = False,
) -> list[str]:
    """Build or refresh every declared feature with a ``build`` recipe; returns one note per
    feature saying what was done (built, rebuilt, up to date, used as written)."""
    notes = []
    for name, spec in declared.items():
        if not spec.get("build"):
            continue
        if spec["build"] not in RECIPES:
            raise ValueError(f"item feature '{name}': unknown build recipe {spec['build']!r} "
                             f"(known: {', '.join(RECIPES)})")
        if not spec.get("template"):
            raise ValueError(f"item feature '{name}': build {spec['build']} needs a `template`")
        file_name = str(spec.get("file") or name)
        npy = feature_paths(features_dir, file_name)[0]
        meta = read_meta(features_dir, file_name) or {}
        if npy.is_file() and meta.get("origin") != "declared":
            notes.append(f"item feature '{name}': using {npy} as written "
                         f"({meta.get('origin') or 'no provenance'}); the declared recipe is not "
                         "applied to it (delete the file to build from the declaration)")
            continue
        if not item_file.is_file():
            raise FileNotFoundError(
                f"item feature '{name}' is built from {item_file}, which does not exist")
        recipe = declared_recipe(spec, item_file, encoder_spec)
        if npy.is_file() and meta.get("recipe") == recipe:
            notes.append(f"item feature '{name}': up to date ({npy})")
            continue
        action = "rebuilt (declaration or item file changed)" if npy.is_file() else "built"
        inputs = texts_from_table(item_file, spec["template"], item_field)
        encode_text_feature(
            inputs, features_dir, file_name, encoder_spec,
            source=f"{item_file} with template {spec['template']!r}", device=device,
            show_progress=show_progress,
            extra_meta={"origin": "declared", "recipe": recipe, "item_table": str(item_file),
                        "template": spec["template"]},
        )
        notes.append(f"item feature '{name}': {action} from {item_file.name} -> {npy}")
    return notes
