"""What ``vlm4rec serve`` answers, independent of HTTP: a set of loaded bundles, swapped whole.

A :class:`Snapshot` is an immutable view of every served bundle; a request reads the snapshot
current when it starts and keeps it to the end, so a reload (which builds a new snapshot off to
the side and swaps one reference) never changes a bundle under a running request, and no request
fails during a swap. A bundle whose files changed on disk is reloaded only once its new version
loads and passes every check (bundle_check.py); until then the old one keeps answering.

Bundles are grouped by dataset: the explorer's item page puts the neighbours of one item under
each dataset bundle's feature side by side, with the co-interaction neighbours of the training
split (co_interactions.py) as the behavioural reference (explore.py has those queries).
"""

from __future__ import annotations

import os
from urllib.parse import quote
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from recbole_vlm4rec.serving.bundle import load_bundle
from recbole_vlm4rec.serving.bundle_check import BundleError
from recbole_vlm4rec.serving.co_interactions import CoInteractions
from recbole_vlm4rec.serving.recommend import EncoderMismatchError, Recommender, ServingError

CO_INTERACTION = "co-interaction"  # the behavioural "feature" beside the bundles' own
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
               ".gif": "image/gif", ".webp": "image/webp"}
MAX_IMAGE_BYTES = 20 * 2**20


class NotFoundError(ServingError):
    """An unknown bundle, dataset or image (unknown users / items have their own classes)."""


class ReloadError(ServingError):
    """A bundle failed to reload; the version loaded before keeps answering."""


@dataclass
class Served:
    """One loaded bundle and what a service needs beside it."""

    name: str
    folder: Path
    recommender: Recommender
    meta_bytes: bytes  # bundle.json as loaded: a changed file means a new export
    loaded_at: str
    load_ms: float
    search: str | None  # why text search is refused (None: it works)
    co: CoInteractions | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def meta(self) -> dict[str, Any]:
        return self.recommender.bundle.meta

    @property
    def dataset(self) -> str:
        return str(self.meta.get("dataset") or self.name)

    @property
    def feature(self) -> str:
        return str(self.meta.get("item_feature") or self.meta.get("model"))

    def co_interactions(self) -> CoInteractions | None:
        """Built on first use (a transpose of the training CSR), then kept."""
        bundle = self.recommender.bundle
        if bundle.train is None:
            return None
        with self._lock:
            if self.co is None:
                self.co = CoInteractions(*bundle.train, len(bundle.item_tokens))
        return self.co

    def info(self) -> dict[str, Any]:
        meta, bundle = self.meta, self.recommender.bundle
        return {"name": self.name, "folder": str(self.folder), "dataset": self.dataset,
                "kind": meta["kind"], "model": meta.get("model"), "feature": self.feature,
                "aggregation": meta.get("profile_aggregation"), "index": meta.get("index"),
                "n_items": meta["n_items"], "n_users": meta["n_users"],
                "search": self.search is None, "search_refused": self.search,
                "titles": len(bundle.titles), "descriptions": len(bundle.descriptions),
                "images": len(bundle.images), "train": bundle.train is not None,
                "held_out": bundle.test is not None, "created_at": meta.get("created_at"),
                "loaded_at": self.loaded_at, "load_ms": round(self.load_ms, 1)}


@dataclass(frozen=True)
class Snapshot:
    bundles: dict[str, Served]  # in the order given on the command line
    generation: int

    def datasets(self) -> dict[str, list[Served]]:
        found: dict[str, list[Served]] = {}
        for served in self.bundles.values():
            found.setdefault(served.dataset, []).append(served)
        return found


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def bundle_names(folders: Sequence[str | Path]) -> dict[str, Path]:
    """``name -> folder``: each folder's name, made unique with ``-2``, ``-3`` ..."""
    names: dict[str, Path] = {}
    for folder in folders:
        base = Path(folder).resolve().name
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names[name] = Path(folder)
    return names


def card(bundles: list[Served], token: str, dataset: str) -> dict[str, Any]:
    """An item as the explorer shows it: token, title, image URL (when the file is there)."""
    title = next((b.recommender.bundle.titles[token] for b in bundles
                  if token in b.recommender.bundle.titles), None)
    image = image_path(bundles, token)
    return {"item": token, "title": title,
            "image": f"/images/{quote(dataset, safe='')}/{quote(token, safe='')}"
            if image is not None else None}

def image_path(bundles: list[Served], token: str) -> Path | None:
    for served in bundles:
        path = served.recommender.bundle.images.get(token)
        if path and Path(path).suffix.lower() in IMAGE_TYPES and os.path.isfile(path):
            return Path(path)
    return None

# --- queries ---------------------------------------------------------------------------

class Service:
    """Loads bundles, answers queries from the current snapshot, reloads atomically."""

    def __init__(self, folders: Sequence[str | Path], search: bool = True) -> None:
        self.search_enabled = search
        self._encoders: dict[tuple[str, str], Any] = {}
        self._reload_lock = threading.Lock()
        self.snapshot = Snapshot({name: self._load(name, folder)
                                  for name, folder in bundle_names(folders).items()}, 1)

    # --- loading ---------------------------------------------------------------------------
    def _load(self, name: str, folder: Path) -> Served:
        started = time.perf_counter()
        meta_bytes = (folder / "bundle.json").read_bytes() if (folder / "bundle.json").is_file() \
            else b""
        recommender = Recommender(load_bundle(folder))
        search = self._attach_encoder(recommender)
        return Served(name, folder, recommender, meta_bytes, _now(),
                      1000 * (time.perf_counter() - started), search)

    def _attach_encoder(self, recommender: Recommender) -> str | None:
        """Load (or share) the bundle's text encoder now, so no query pays for it. Returns why
        search is refused, or None."""
        if not self.search_enabled:
            return "text search is off (vlm4rec serve --no-search)"
        if recommender.kind != "profile":
            return (f"a topn bundle ({recommender.bundle.meta.get('model')}'s precomputed lists) "
                    "has no item vectors to search")
        try:
            name = recommender.check_encoder()
            fingerprint = str((recommender.bundle.meta.get("encoder") or {}).get("fingerprint"))
            key = (name, fingerprint)
            if key not in self._encoders:
                self._encoders[key] = recommender.load_text_encoder(name)
            recommender.use_text_encoder(self._encoders[key])
        except (EncoderMismatchError, RuntimeError, OSError) as error:
            return str(error)
        return None

    def reload(self, only: str | None = None) -> dict[str, Any]:
        """Reload the bundles whose ``bundle.json`` changed (all, or ``only``); each swapped in
        whole once it loads. ReloadError (after swapping the others) names those that failed."""
        with self._reload_lock:
            current = self.snapshot
            if only is not None and only not in current.bundles:
                raise NotFoundError(f"unknown bundle {only!r}; serving "
                                    f"{', '.join(current.bundles)}")
            bundles, reloaded, failed = dict(current.bundles), [], []
            for name, served in current.bundles.items():
                if only is not None and name != only:
                    continue
                try:
                    on_disk = (served.folder / "bundle.json").read_bytes()
                except OSError:
                    on_disk = b""
                if on_disk == served.meta_bytes:
                    continue
                try:
                    bundles[name] = self._load(name, served.folder)
                    reloaded.append(name)
                except (BundleError, OSError) as error:
                    failed.append(f"{name}: {error}")
            self.snapshot = Snapshot(bundles, current.generation + 1)  # the swap: one reference
            answer = {"generation": self.snapshot.generation, "reloaded": reloaded,
                      "unchanged": [n for n in bundles if n not in reloaded
                                    and not any(f.startswith(f"{n}: ") for f in failed)]}
            if failed:
                raise ReloadError("kept the loaded version of " + "; ".join(failed))
            return answer

    # --- lookups ---------------------------------------------------------------------------
    def bundle(self, snapshot: Snapshot, name: str | None) -> Served:
        if name is None:
            return next(iter(snapshot.bundles.values()))
        if name not in snapshot.bundles:
            raise NotFoundError(f"unknown bundle {name!r}; serving {', '.join(snapshot.bundles)}")
        return snapshot.bundles[name]

    def dataset(self, snapshot: Snapshot, name: str | None) -> tuple[str, list[Served]]:
        datasets = snapshot.datasets()
        if name is None:
            name = next(iter(datasets))
        if name not in datasets:
            raise NotFoundError(f"unknown dataset {name!r}; serving {', '.join(datasets)}")
        return name, datasets[name]

    def recommend(self, snapshot: Snapshot, bundle: str | None, k: int, explain: int,
                  user: str | None = None, items: Sequence[str] | None = None) -> dict[str, Any]:
        served = self.bundle(snapshot, bundle)
        started = time.perf_counter()
        if user is not None:
            found = served.recommender.for_user(user, k, explain)
            query: dict[str, Any] = {"user": user}
            ignored: list[str] = []
        else:
            items = [str(i).strip() for i in items or [] if str(i).strip()]
            found = served.recommender.for_items(items, k, explain)
            query = {"items": items}
            ignored = served.recommender.without_vector(items)
        return {"bundle": served.name, "query": query,
                "query_ms": round(1000 * (time.perf_counter() - started), 3),
                "recommendations": [asdict(r) for r in found], "ignored_items": ignored}

    def search(self, snapshot: Snapshot, bundle: str | None, text: str, k: int) -> dict[str, Any]:
        if bundle is None:  # the first bundle that can embed text
            served = next((b for b in snapshot.bundles.values() if b.search is None), None)
            if served is None:
                reasons = "; ".join(f"{b.name}: {b.search}" for b in snapshot.bundles.values())
                raise EncoderMismatchError(f"no served bundle can embed text ({reasons})")
        else:
            served = self.bundle(snapshot, bundle)
            if served.search is not None:
                raise EncoderMismatchError(f"bundle {served.name!r} cannot embed text: "
                                           f"{served.search}")
        started = time.perf_counter()
        found = served.recommender.for_text(text, k)
        query_ms = round(1000 * (time.perf_counter() - started), 3)
        bundles = snapshot.datasets()[served.dataset]
        return {"bundle": served.name, "query": {"text": text}, "query_ms": query_ms,
                "recommendations": [asdict(r) for r in found],
                "images": {r.item: card(bundles, r.item, served.dataset)["image"]
                           for r in found}}
