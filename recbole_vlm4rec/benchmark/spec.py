"""Benchmark specs: a yaml file naming models, datasets, seeds and metrics -> a list of cells.

Spec format (``configs/benchmarks/*.yaml``)::

    name: paper                     # output folder name (default: the file's stem)
    models:                         # label -> RecBole/project model + its overrides
      VLM4Rec (vlm): {model: VLM4Rec, item_feature: vlm}
      BPR: {}                       # no `model` key: the label is the model name
    datasets:                       # name -> overrides for every cell on it (a list also works)
      ml-100k: {}
      amazon-baby: {epochs: 100}
    seeds: [2020, 2021, 2022]
    metrics: [recall@20, ndcg@20]   # table / plot / significance columns (default: all reported)
    reference: [VLM4Rec (vlm), VLM4Rec (text)]  # first one with results on a dataset is the reference
    overrides: {epochs: 50}         # every cell; later layers win: overrides < dataset < model <
                                    # `set` < seed
    set: {}                         # above every layer; `vlm4rec bench --set key=value` adds here
    max_epochs: ~                   # cap on every cell's epochs (keeps smaller ones); the report
                                    # marks runs whose training ended at the cap
    search:                         # `vlm4rec tune` only (docs/tuning.md); `bench` ignores it
      method: grid                  # grid: every point in order; random: a seeded random order
      seed: 2020                    # trials run on this seed (default: the first of `seeds`)
      metric: recall@20             # validation metric ranking trials (default: valid_metric)
      max_trials: 8                 # per model and dataset (default: the whole grid)
      max_minutes: 30               # per model and dataset: no trial starts after this much
      space: {LightGCN: {n_layers: [1, 2]}}  # label -> grid; default: the model's search_space
    config_files: []                # extra RecBole yaml layers for every cell
    isolation: subprocess           # or inprocess (faster start, shared memory peak)
    timeout_s: ~                    # per cell, subprocess only
    alpha: 0.05                     # significance level after Holm correction

A cell is one (model label, dataset, seed); its key hashes everything that decides its result, so
a finished cell is rerun only when its spec entry changed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KNOWN_KEYS = {"name", "models", "datasets", "seeds", "metrics", "reference", "overrides", "set",
              "config_files", "isolation", "timeout_s", "alpha", "description", "max_epochs",
              "search"}
SEARCH_KEYS = {"method", "seed", "metric", "max_trials", "max_minutes", "space"}
SEARCH_METHODS = ("grid", "random")

ISOLATIONS = ("subprocess", "inprocess")


class SpecError(ValueError):
    """A benchmark spec is malformed; the message names the file and the field."""


STAGES = ("final", "trial")  # trial: a tuning trial (vlm4rec tune), validated, never tested


@dataclass(frozen=True, eq=False)
class Cell:
    label: str
    model: str
    dataset: str
    seed: int
    overrides: dict[str, Any]
    config_files: tuple[str, ...] = ()
    stage: str = "final"

    @property
    def key(self) -> str:
        identity = {"model": self.model, "dataset": self.dataset, "seed": self.seed,
                    "overrides": self.overrides, "config_files": list(self.config_files)}
        if self.stage != "final":  # final cells keep the keys they had before tuning existed
            identity["stage"] = self.stage
        payload = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def slug(self) -> str:
        """``<dataset>/<label>/seed-<seed>`` (a trial: ``.../trial-<key>``), with characters
        unsafe in file names replaced."""
        last = f"trial-{self.key[:10]}" if self.stage == "trial" else f"seed-{self.seed}"
        return f"{safe_name(self.dataset)}/{safe_name(self.label)}/{last}"

    def describe(self) -> str:
        what = "trial" if self.stage == "trial" else "seed"
        return f"{self.label} on {self.dataset} ({what} {self.seed})"

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "model": self.model, "dataset": self.dataset,
                "seed": self.seed, "overrides": self.overrides,
                "config_files": list(self.config_files), "stage": self.stage, "key": self.key}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Cell":
        return cls(label=data["label"], model=data["model"], dataset=data["dataset"],
                   seed=int(data["seed"]), overrides=dict(data["overrides"]),
                   config_files=tuple(data.get("config_files", ())),
                   stage=data.get("stage", "final"))


@dataclass
class BenchSpec:
    name: str
    models: dict[str, dict[str, Any]]  # label -> {"model": class name, "overrides": {...}}
    datasets: dict[str, dict[str, Any]]
    seeds: list[int]
    metrics: list[str] = field(default_factory=list)
    reference: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    config_files: list[str] = field(default_factory=list)
    isolation: str = "subprocess"
    timeout_s: float | None = None
    alpha: float = 0.05
    source: str = "<spec>"
    raw: dict[str, Any] = field(default_factory=dict)
    forced: dict[str, Any] = field(default_factory=dict)  # the `set` key: beats every layer
    max_epochs: int | None = None
    search: "SearchSpec | None" = None  # `vlm4rec tune` (benchmark/tune.py)

    def with_max_epochs(self, max_epochs: int | None) -> "BenchSpec":
        """This spec with every cell's epochs capped at ``max_epochs`` (saved in ``raw``)."""
        if max_epochs is not None:
            self.max_epochs = max_epochs
            self.raw = {**self.raw, "max_epochs": max_epochs}
        return self

    def with_seeds(self, seeds: list[int] | None) -> "BenchSpec":
        """This spec with other seeds (saved in ``raw``, so the report counts runs against them)."""
        if seeds:
            self.seeds = list(seeds)
            self.raw = {**self.raw, "seeds": list(seeds)}
        return self

    def with_forced(self, forced: dict[str, Any]) -> "BenchSpec":
        """This spec with more `set` overrides (kept in ``raw`` so a saved spec reproduces it)."""
        self.forced = {**self.forced, **forced}
        if forced:
            self.raw = {**self.raw, "set": self.forced}
        return self

    def cells(self) -> list[Cell]:
        """Every cell, dataset-major then model then seed (one dataset's results come first)."""
        cells = []
        for dataset, dataset_overrides in self.datasets.items():
            for label, entry in self.models.items():
                for seed in self.seeds:
                    overrides = {**self.overrides, **dataset_overrides, **entry["overrides"],
                                 **self.forced, "seed": seed}
                    if self.max_epochs is not None:
                        epochs = int(overrides.get("epochs", protocol_epochs()))
                        overrides["epochs"] = min(epochs, self.max_epochs)
                    cells.append(Cell(label, entry["model"], dataset, seed, overrides,
                                      tuple(self.config_files)))
        return cells


def protocol_epochs() -> int:
    """The shipped protocol's ``epochs`` (configs/overall.yaml): a cell that sets none trains
    for at most this many."""
    from recbole_vlm4rec.formats.paths import configs_dir

    return int(yaml.safe_load((configs_dir() / "overall.yaml").read_text())["epochs"])


@dataclass
class SearchSpec:
    """How ``vlm4rec tune`` searches: trials ranked by a validation metric only."""

    method: str = "grid"
    seed: int | None = None
    metric: str | None = None
    max_trials: int | None = None
    max_minutes: float | None = None
    space: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # label -> key -> values


def parse_search(data: Any, source: str, labels: list[str]) -> SearchSpec:
    where = f"{source}: search"
    data = _mapping(data, where)
    unknown = sorted(set(data) - SEARCH_KEYS)
    if unknown:
        raise SpecError(f"{where}: unknown keys {unknown}; known: {sorted(SEARCH_KEYS)}")
    method = data.get("method", "grid")
    if method not in SEARCH_METHODS:
        raise SpecError(f"{where}.method must be one of {SEARCH_METHODS}, got {method!r}")
    for key in ("seed", "max_trials"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or (key == "max_trials" and value < 1)):
            raise SpecError(f"{where}.{key} must be a positive integer, got {value!r}")
    minutes = data.get("max_minutes")
    if minutes is not None and (not isinstance(minutes, (int, float)) or minutes <= 0):
        raise SpecError(f"{where}.max_minutes must be a positive number, got {minutes!r}")
    metric = data.get("metric")
    if metric is not None and not re.fullmatch(r"[a-z]+@\d+", str(metric).lower()):
        raise SpecError(f"{where}.metric is written name@k (recall@20), got {metric!r}")
    space = {}
    for label, grid in _mapping(data.get("space"), f"{where}.space").items():
        if label not in labels:
            raise SpecError(f"{where}.space: {label!r} is not a model label: {labels}")
        space[str(label)] = check_space(grid, f"{where}.space.{label}")
    return SearchSpec(method, data.get("seed"), str(metric).lower() if metric else None,
                      data.get("max_trials"), float(minutes) if minutes else None, space)


def check_space(grid: Any, where: str) -> dict[str, list[Any]]:
    """A search space: config key -> non-empty list of values (a scalar is one value)."""
    if grid is None:
        return {}
    if not isinstance(grid, dict):
        raise SpecError(f"{where}: expected a mapping key -> [values], got {grid!r}")
    checked = {}
    for key, values in grid.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise SpecError(f"{where}.{key}: empty list of values")
        checked[str(key)] = values
    return checked


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _named_entries(value: Any, where: str) -> dict[str, dict[str, Any]]:
    """A mapping name -> overrides, or a list of names / one-key mappings."""
    if isinstance(value, list):
        entries: dict[str, dict[str, Any]] = {}
        for position, item in enumerate(value):
            if isinstance(item, str):
                entries[item] = {}
            elif isinstance(item, dict) and len(item) == 1:
                (name, overrides), = item.items()
                entries[str(name)] = _mapping(overrides, f"{where}[{position}].{name}")
            else:
                raise SpecError(f"{where}[{position}]: expected a name or {{name: overrides}}")
        return entries
    return {str(k): _mapping(v, f"{where}.{k}") for k, v in _mapping(value, where).items()}


def parse_spec(data: Any, source: str = "<spec>", default_name: str = "benchmark") -> BenchSpec:
    """Validate a loaded yaml document; every problem raises SpecError naming ``source``."""
    data = _mapping(data, source)
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise SpecError(f"{source}: unknown keys {unknown}; known: {sorted(KNOWN_KEYS)}")
    models = {}
    for label, entry in _named_entries(data.get("models"), f"{source}: models").items():
        entry = dict(entry)
        model = str(entry.pop("model", label))
        models[label] = {"model": model, "overrides": entry}
    datasets = _named_entries(data.get("datasets"), f"{source}: datasets")
    if not models:
        raise SpecError(f"{source}: `models` is empty: name at least one model")
    if not datasets:
        raise SpecError(f"{source}: `datasets` is empty: name at least one dataset")
    seeds = data.get("seeds", [2020])
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise SpecError(f"{source}: `seeds` must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"{source}: `seeds` repeats a seed: {seeds}")
    metrics = [str(m).lower() for m in (data.get("metrics") or [])]
    bad = [m for m in metrics if not re.fullmatch(r"[a-z]+@\d+", m)]
    if bad:
        raise SpecError(f"{source}: metrics are written name@k (recall@20), got {bad}")
    reference = data.get("reference") or []
    reference = [reference] if isinstance(reference, str) else [str(r) for r in reference]
    missing = [r for r in reference if r not in models]
    if missing:
        raise SpecError(f"{source}: reference {missing} is not a model label: {list(models)}")
    isolation = data.get("isolation", "subprocess")
    if isolation not in ISOLATIONS:
        raise SpecError(f"{source}: isolation must be one of {ISOLATIONS}, got {isolation!r}")
    alpha = float(data.get("alpha", 0.05))
    if not 0 < alpha < 1:
        raise SpecError(f"{source}: alpha must be in (0, 1), got {alpha}")
    timeout = data.get("timeout_s")
    max_epochs = data.get("max_epochs")
    if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs < 1):
        raise SpecError(f"{source}: max_epochs must be a positive integer, got {max_epochs!r}")
    config_files = data.get("config_files") or []
    if not isinstance(config_files, list):
        raise SpecError(f"{source}: config_files must be a list of paths")
    return BenchSpec(
        name=str(data.get("name") or default_name), models=models, datasets=datasets,
        seeds=seeds, metrics=metrics, reference=reference,
        overrides=_mapping(data.get("overrides"), f"{source}: overrides"),
        forced=_mapping(data.get("set"), f"{source}: set"),
        config_files=[str(Path(p).resolve()) for p in config_files], isolation=isolation,
        timeout_s=float(timeout) if timeout else None, alpha=alpha, source=source, raw=data,
        max_epochs=max_epochs,
        search=parse_search(data["search"], source, list(models)) if "search" in data else None,
    )


def load_spec(path: str | Path) -> BenchSpec:
    """Read and validate a spec file (SpecError on yaml syntax errors too, with the line)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"benchmark spec not found: {path}")
    try:  # RecBole's number rules, as in the config layers: 1e-4 is a float
        from recbole_vlm4rec.run.accounting import load_yaml

        data = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid yaml: {error}") from error
    return parse_spec(data, source=str(path), default_name=path.stem)
