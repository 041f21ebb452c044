"""What the report shows of an item: title, description and a small embedded thumbnail.

Read through the formats layer from the dataset folder a run used (its config's ``data_path``):
the item table ``<dataset>.item`` (formats/items.py: title column, ``image`` column), a
descriptions file ``descriptions/<tag>.jsonl`` (formats/descriptions.py: the one a content feature
of the chosen models was encoded from, else the newest), and the images (formats/images.py),
downsized with Pillow and embedded as JPEG data URIs. An item without an image or description gets
``None`` there and a reason; the page shows a placeholder.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

TITLE_COLUMNS = ("title", "movie_title", "name", "item_name", "product_name")
DESCRIPTION_COLUMNS = ("description", "desc")
THUMBNAIL_BOX = (96, 144)  # width, height: poster-shaped, small enough to embed a few hundred
THUMBNAIL_QUALITY = 72


@dataclass
class ItemView:
    token: str
    title: str | None
    description: str | None
    thumbnail: str | None  # data:image/jpeg;base64,...
    no_image_reason: str | None = None  # why there is no thumbnail


class Catalogue:
    """Item views of one dataset folder, built on demand and cached."""

    def __init__(self, dataset_dir: str | Path, dataset: str,
                 description_features: Iterable[str] = ()) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.dataset = dataset
        self.notes: list[str] = []
        self._rows: dict[str, dict[str, str]] = {}
        self.title_column: str | None = None
        self.description_column: str | None = None
        self._read_item_table()
        self.descriptions: dict[str, str] = {}
        self.description_source: str | None = None
        self.common_prefix = ""  # a lead-in every description shares, e.g. "Tagger guess (...): "
        self._read_descriptions(list(description_features))
        self._views: dict[str, ItemView] = {}

    def _read_item_table(self) -> None:
        from recbole_vlm4rec.formats.items import read_item_table

        path = self.dataset_dir / f"{self.dataset}.item"
        if not path.is_file():
            self.notes.append(f"no item table at {path}: items are shown by token only")
            return
        table = read_item_table(path)
        id_column = "item_id" if "item_id" in table.columns else table.columns[0]
        self._rows = {row[id_column]: row for row in table.to_dict("records")}
        columns = list(table.columns)
        self.title_column = next((c for c in TITLE_COLUMNS if c in columns), None)
        self.description_column = next((c for c in DESCRIPTION_COLUMNS if c in columns), None)
        if "image" not in columns:
            self.notes.append(f"{path.name} has no image column: no thumbnails")

    def _read_descriptions(self, features: list[str]) -> None:
        from recbole_vlm4rec.formats.descriptions import DescriptionsFileError, read_descriptions

        path = self._descriptions_file(features)
        if path is None:
            if self.description_column:
                self.description_source = f"item table column '{self.description_column}'"
            return
        try:
            parsed = read_descriptions(path)
        except (OSError, DescriptionsFileError) as error:
            self.notes.append(f"descriptions not shown: {error}")
            return
        if parsed.malformed:
            self.notes.append(parsed.malformed_summary())
        rows = list(parsed)
        self.descriptions = parsed.texts()
        self.common_prefix = _common_prefix(list(self.descriptions.values()))
        if self.common_prefix:  # said once on the page, not on every card
            cut = len(self.common_prefix)
            self.descriptions = {k: v[cut:] for k, v in self.descriptions.items()}
        made_by = next((r for r in rows if r["status"] == "ok" and r.get("model")), None)
        self.description_source = f"descriptions/{path.name}" + (
            f" ({made_by.get('backend') or 'backend not recorded'}: {made_by['model']})"
            if made_by else "")

    def _descriptions_file(self, features: list[str]) -> Path | None:
        """The descriptions a content feature was encoded from, else the newest file."""
        for feature in features:
            try:
                meta = json.loads((self.dataset_dir / "features" / f"{feature}.json").read_text())
            except (OSError, ValueError):
                continue
            for key in ("descriptions", "source"):  # meta format 2 names it; older files: source
                source = Path(str(meta.get(key) or ""))
                if source.suffix == ".jsonl" and source.is_file():
                    return source
        found = sorted((self.dataset_dir / "descriptions").glob("*.jsonl"),
                       key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None

    def view(self, token: str) -> ItemView:
        if token not in self._views:
            self._views[token] = self._build_view(token)
        return self._views[token]

    def _build_view(self, token: str) -> ItemView:
        row = self._rows.get(token)
        if row is None:
            return ItemView(token, None, None, None, "not in the item table")
        title = (row.get(self.title_column) or "").strip() if self.title_column else ""
        description = self.descriptions.get(token)
        if description is None and self.description_column and not self.descriptions:
            description = (row.get(self.description_column) or "").strip() or None
        thumbnail, reason = _thumbnail(row.get("image", ""), self.dataset_dir)
        return ItemView(token, title or None, description, thumbnail, reason)

    def describe(self) -> dict[str, Any]:
        return {"folder": str(self.dataset_dir), "items": len(self._rows),
                "title_column": self.title_column, "descriptions": self.description_source,
                "notes": self.notes}


def _common_prefix(texts: list[str]) -> str:
    """The shared lead-in of all ``texts`` up to its last ': ', when there is one worth cutting."""
    if len(texts) < 2:
        return ""
    first, last = min(texts), max(texts)  # the common prefix of all = that of these two
    shared = first[:next((i for i, (a, b) in enumerate(zip(first, last)) if a != b),
                         min(len(first), len(last)))]
    end = shared.rfind(": ")
    return shared[:end + 2] if end >= 10 and all(len(t) > end + 2 for t in texts) else ""


def _thumbnail(reference: str, dataset_dir: Path) -> tuple[str | None, str | None]:
    """``(data URI, None)`` or ``(None, reason)`` for an ``image`` column value."""
    from PIL import Image

    from recbole_vlm4rec.formats.images import ImageError, load_image, resolve_image_reference

    if not (reference or "").strip():
        return None, "no image"
    try:
        loaded = load_image(resolve_image_reference(reference, dataset_dir), max_side=512)
    except ImageError as error:
        return None, error.reason.replace("_", " ")
    image = loaded.image.copy()
    image.thumbnail(THUMBNAIL_BOX, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), None
