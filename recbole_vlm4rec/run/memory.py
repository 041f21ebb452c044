"""The memory check before a run loads anything: estimate, budget, evaluation batch size.

A run's peak memory is estimated from the dataset's size, read without loading it
(:func:`dataset_size`: ``card.json``'s counts, else the atomic files' line counts), as

* the data layer's share: RecBole's interaction table, its splits and data loaders (bytes per
  interaction, measured by benchmarks/bench_scale.py), and the features the model reads (the file
  and its copy aligned to RecBole's item ids);
* the model's share: its contract's ``memory_estimate`` (models/contract.py; RecBole's models get
  the generic graph-model estimate of models/_memory.py);
* one full-ranking evaluation batch: ``eval_batch_size`` scores (users x all items) times the
  model's bytes per scored cell.

The budget is ``memory_budget`` (GiB) or, when it is ``~``, the machine's memory (the cgroup's
limit where one is set); an estimate above the memory available at that moment is only noted in
the log (other processes' memory comes and goes). A run whose estimate is over the budget is refused in one line naming the estimate, its
largest parts and the setting that lowers it (MemoryBudgetError: ``vlm4rec run`` exits 2), so it
is never killed for memory after minutes of loading. ``eval_batch_size`` given by the shared
protocol only (configs/overall.yaml) is lowered to what the budget leaves, in whole users, and
the log says so; one the user gave is kept and counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from recbole_vlm4rec.models._memory import gib, graph_model
from recbole_vlm4rec.models.contract import DataSize, MemoryEstimate, ModelContract
from recbole_vlm4rec.run.accounting import ConfigError

# Measured (benchmarks/bench_scale.py, Pop rows: peak RSS minus the interpreter, per interaction;
# RecBole holds the table, its three splits, the negative sampler's per-user sets and the
# evaluation's history index). The interpreter with torch and RecBole imported: ~0.4 GiB.
BYTES_PER_INTERACTION = 700
BYTES_PER_USER_OR_ITEM = 300
INTERPRETER = 0.4 * 2**30
# The evaluation budget never goes above the protocol's eval_batch_size (configs/overall.yaml):
# memory only lowers it.
EVAL_SHARE = 0.5  # of what the rest of the estimate leaves


class MemoryBudgetError(ConfigError):
    """The run's estimate is over the memory budget (the message is one line)."""


@dataclass
class MemoryPlan:
    size: DataSize
    estimate: MemoryEstimate  # the model's share
    data_bytes: float
    eval_batch_size: int
    eval_bytes: float
    budget: float
    budget_source: str
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.data_bytes + self.estimate.total + self.eval_bytes


def dataset_size(config: Any, feature_dims: Mapping[str, int] | None = None) -> DataSize:
    """Users, items and interactions of the run's dataset without loading it."""
    folder = Path(config["data_path"])
    name = config["dataset"]
    card = folder / "card.json"
    if card.is_file():
        counts = json.loads(card.read_text(encoding="utf-8")).get("counts", {})
        if all(isinstance(counts.get(k), int) for k in ("users", "items", "interactions")):
            return DataSize(counts["users"], counts["items"], counts["interactions"],
                            dict(feature_dims or {}))
    parts = config["benchmark_filename"] or [None]
    inter_files = [folder / (f"{name}.{part}.inter" if part else f"{name}.inter")
                   for part in parts]
    inter_files = [path for path in inter_files if path.is_file()]
    n_interactions = sum(_lines(path) - 1 for path in inter_files)
    users = _lines(folder / f"{name}.user") - 1 if (folder / f"{name}.user").is_file() else None
    items = _lines(folder / f"{name}.item") - 1 if (folder / f"{name}.item").is_file() else None
    if users is None or items is None:
        scanned_users, scanned_items = _distinct_ids(config, inter_files)
        users = users if users is not None else scanned_users
        items = max(items or 0, scanned_items)
    return DataSize(max(users, 0), max(items, 0), max(n_interactions, 0), dict(feature_dims or {}))


def _lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            count += block.count(b"\n")
    return count


def _distinct_ids(config: Any, inter_files: Sequence[Path]) -> tuple[int, int]:
    """Distinct users and items of the interaction files (read column by column)."""
    import pandas as pd

    users: set[str] = set()
    items: set[str] = set()
    fields = (config["USER_ID_FIELD"], config["ITEM_ID_FIELD"])
    for path in inter_files:
        with open(path, encoding="utf-8") as handle:
            header = [column.split(":")[0] for column in handle.readline().rstrip("\n").split("\t")]
        wanted = [header.index(f) for f in fields if f in header]
        if len(wanted) < 2:
            continue
        frame = pd.read_csv(path, sep="\t", usecols=wanted, dtype=str, header=0,
                            keep_default_na=False, quoting=3)
        users.update(frame.iloc[:, 0].unique())
        items.update(frame.iloc[:, 1].unique())
    return len(users), len(items)


def feature_dims(config: Any, names: Sequence[str]) -> dict[str, int]:
    """name -> dimension of each feature file (its header only); features not built yet are 0."""
    import numpy as np

    from recbole_vlm4rec.data.dataset import declared_item_features, feature_file
    from recbole_vlm4rec.formats.features import feature_paths

    declared = declared_item_features(config)
    dims = {}
    for name in names:
        path = feature_paths(*feature_file(config, declared.get(name, {"file": name})))[0]
        try:
            shape = np.load(path, mmap_mode="r").shape
            dims[name] = int(shape[1]) if len(shape) == 2 else 0
        except (OSError, ValueError):
            dims[name] = 0
    return dims


def total_memory() -> float:
    """Bytes of this machine's memory, capped by the cgroup's limit where one is set."""
    import os

    total = float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            total = min(total, float(limit))
    except (OSError, ValueError):
        pass
    return total


def available_memory() -> float:
    """Bytes available now: MemAvailable, capped by the cgroup's limit where one is set."""
    available = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = float(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        import os

        available = float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = float(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            available = min(available, float(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def data_layer_bytes(size: DataSize) -> float:
    features = sum(size.feature_dims.values()) * size.n_items * 4 * 2  # file + aligned copy
    return (INTERPRETER + size.n_interactions * BYTES_PER_INTERACTION
            + (size.n_users + size.n_items) * BYTES_PER_USER_OR_ITEM + features)


def plan_memory(config: Any, model_name: str, contract: ModelContract, trained: bool,
                features: Sequence[str], eval_batch_size_given: bool) -> MemoryPlan:
    """The run's estimate against its budget; MemoryBudgetError when it cannot fit."""
    size = dataset_size(config, feature_dims(config, features))
    settings = {key: config[key] for key in contract.keys() if key in config}
    for key in ("embedding_size", "n_layers", "train_batch_size"):
        settings.setdefault(key, config[key])
    estimator = contract.memory_estimate or (graph_model if trained else _nothing)
    estimate = estimator(size, settings)
    data = data_layer_bytes(size)
    if config["memory_budget"] is not None:
        budget, source = float(config["memory_budget"]) * 2**30, "memory_budget"
    else:  # what other processes hold now comes and goes: refuse only what can never fit
        budget, source = total_memory(), "this machine's memory; set memory_budget (GiB)"
    n_items = size.n_items + 1  # RecBole's padding item is scored too
    batch = int(config["eval_batch_size"])
    notes = []
    if not eval_batch_size_given:
        left = max(budget - data - estimate.total, 0.0) * EVAL_SHARE
        users = max(int(left / (estimate.per_scored_cell * n_items)), 1)
        if users * n_items < batch:
            notes.append(f"eval_batch_size: {users * n_items} ({users} users x {n_items} items "
                         f"per full-ranking batch), lowered from {batch} to fit the memory budget "
                         f"({gib(budget)}); set --eval_batch_size to choose")
            batch = users * n_items
    eval_bytes = max(batch, n_items) * estimate.per_scored_cell
    plan = MemoryPlan(size, estimate, data, batch, eval_bytes, budget, source, notes)
    plan.notes.append(
        f"memory: estimated peak {gib(plan.total)} of a {gib(budget)} budget ({source}): data "
        f"and features {gib(data)}, {model_name} {gib(estimate.total)}, evaluation batch "
        f"{gib(eval_bytes)}; dataset {size.n_users:,} users x {size.n_items:,} items, "
        f"{size.n_interactions:,} interactions")
    now = available_memory()
    if plan.total <= budget and plan.total > now:
        plan.notes.append(f"memory: the estimate ({gib(plan.total)}) is more than the memory "
                          f"available now ({gib(now)}): other processes may have to give some back")
    if plan.total > budget:
        largest = sorted(estimate.parts.items(), key=lambda part: -part[1])[:2]
        parts = ", ".join(f"{what} {gib(value)}" for what, value in largest)
        fix = (f"use {estimate.fix}" if estimate.fix else
               f"no setting of {model_name} lowers it much: shrink the dataset (e.g. vlm4rec "
               "prepare --k-core) or run on a machine with more memory")
        raise MemoryBudgetError(
            f"{model_name} on {config['dataset']} ({size.n_users:,} users, {size.n_items:,} "
            f"items, {size.n_interactions:,} interactions) needs about {gib(plan.total)} "
            f"({parts}; data and features {gib(data)}) but the memory budget is {gib(budget)} "
            f"({source}): {fix}")
    return plan


def _nothing(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    """A model that trains nothing and declares no estimate (RecBole's ItemKNN...): its own
    item-item work is not known here, only the data layer's share is counted."""
    return MemoryEstimate({})
