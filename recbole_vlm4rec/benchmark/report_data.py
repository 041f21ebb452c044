"""The report's data model: a benchmark folder's run records grouped per (dataset, label), with
the paired significance tests and the training marks every renderer shows.

``load_report(folder)`` reads ``<folder>/spec.yaml`` and ``<folder>/runs/**/*.json`` (see grid.py,
cell.py) and reruns nothing. The renderers (report_markdown.py, report_csv.py, html_report.py,
plots.py, ...) import this module and nothing imports them back; report.py writes every file.

Training marks, from each run's ``result.training``:

- ``†`` capped: training ended at the epochs limit rather than by early stopping
  (``training.capped``);
- ``‡`` possibly undertrained, as the run judged it (``training.undertrained``: null, or
  ``{"reason": "early-best" | "still-improving", "message": ...}``). Records made before the field
  existed have no such key and are not flagged.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recbole_vlm4rec.benchmark.cell import read_record
from recbole_vlm4rec.benchmark.spec import load_spec
from recbole_vlm4rec.benchmark.stats import PairedTest, compare_to_reference
from recbole_vlm4rec.benchmark.tune import read_tuning

BETTER, WORSE = "▲", "▼"
CAPPED = "†"
UNDERTRAINED = "‡"
# What each reason of ``training.undertrained`` means, for the footnotes.
UNDERTRAINED_REASONS = {
    "early-best": "stopped by patience with its best epoch among the first few",
    "still-improving": "reached the epoch cap with its best epoch at or near the cap",
}


# An absolute path (at least one folder deep) not inside a URL or a relative path.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.@+-]+/)+([\w.@+-]*)")


def without_machine_paths(text: str) -> str:
    """Absolute paths shortened to ``…/<last part>``: the report names no folder of the machine
    the runs were made on, so it can be mailed or published as it is."""
    return _ABSOLUTE_PATH.sub(lambda match: "…/" + match.group(1), text)


def undertrained_flag(record: dict[str, Any]) -> dict[str, str] | None:
    """The run's ``training.undertrained`` as ``{"reason", "message"}``, or None when not flagged
    (the key absent, null, or a record without a result)."""
    training = (record.get("result") or {}).get("training")
    flag = training.get("undertrained") if isinstance(training, dict) else None
    if isinstance(flag, dict):
        return {"reason": str(flag.get("reason") or "unspecified"),
                "message": str(flag.get("message") or "")}
    if isinstance(flag, str) and flag:  # a bare reason
        return {"reason": flag, "message": ""}
    return None


def undertrained_reason_text(reason: str) -> str:
    """``early-best: stopped by patience ...``; an unknown reason is shown as recorded."""
    meaning = UNDERTRAINED_REASONS.get(reason)
    return f"{reason}: {meaning}" if meaning else reason


@dataclass
class ModelSummary:
    dataset: str
    label: str
    model: str
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "ok"]

    @property
    def status(self) -> str:
        if self.ok:
            return "ok" if len(self.ok) == len(self.records) else "partial"
        return self.records[0]["status"] if self.records else "missing"

    @property
    def reasons(self) -> list[str]:
        """Why runs were skipped or failed (machine paths shortened)."""
        return sorted({without_machine_paths(str(r["reason"])) for r in self.records
                       if r["status"] != "ok" and r["reason"]})

    def metric(self, name: str) -> tuple[float, float]:
        values = [r["result"]["test_result"][name] for r in self.ok
                  if name in r["result"]["test_result"]]
        if not values:
            return math.nan, math.nan
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    @property
    def capped(self) -> list[dict[str, Any]]:
        """Ok runs whose training ended at the epochs limit, not by early stopping."""
        return [r for r in self.ok if (r["result"].get("training") or {}).get("capped")]

    @property
    def trained(self) -> bool:
        """Whether the model trains: its runs' trainer ran with more than one epoch allowed
        (closed-form and content-only models record a cap of 1)."""
        return any(int((r["result"].get("training") or {}).get("epochs") or 0) > 1
                   for r in self.ok)

    @property
    def undertrained(self) -> list[dict[str, Any]]:
        """Ok runs the runner flagged as possibly undertrained (``training.undertrained``)."""
        return [r for r in self.ok if undertrained_flag(r)]

    def undertrained_reasons(self) -> list[str]:
        """The flagged runs' reasons, each once, in the order first seen."""
        return list(dict.fromkeys(undertrained_flag(r)["reason"] for r in self.undertrained))

    def seconds(self, key: str) -> float:
        values = [r["result"]["seconds"][key] for r in self.ok]
        return float(np.mean(values)) if values else math.nan

    def peak_rss_mb(self) -> float:
        values = [r["result"].get("peak_memory_mb", {}).get("rss", math.nan) for r in self.ok]
        return float(np.nanmax(values)) if values else math.nan

    @property
    def cold_start(self) -> bool:
        """Whether the runs used the item cold-start protocol (their test sets differ)."""
        return any(r["result"].get("cold_start") for r in self.ok)

    def per_user(self, metric: str) -> dict[int, dict[str, float]]:
        """``seed -> {user token: value}`` over ok runs."""
        found = {}
        for record in self.ok:
            per_user = record["result"].get("per_user_test") or {}
            values = (per_user.get("metrics") or {}).get(metric)
            if values is not None:
                found[record["cell"]["seed"]] = dict(zip(per_user["users"], values))
        return found


@dataclass
class Report:
    folder: Path
    metrics: list[str]
    alpha: float
    datasets: dict[str, dict[str, ModelSummary]]  # dataset -> label -> summary
    references: dict[str, str | None] = field(default_factory=dict)
    n_seeds: int | None = None  # seeds the spec asks for: "runs" = ok runs / this
    seeds: list[int] | None = None  # the spec's seeds, in its order
    tests: dict[tuple[str, str], dict[str, PairedTest]] = field(default_factory=dict)
    tuning: dict[str, Any] | None = None  # tuning.json of `vlm4rec tune` (benchmark/tune.py)
    # label -> the settings its spec entry gives (beside `model`); empty without a spec.yaml
    label_settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def label_models(self) -> dict[str, tuple[str, dict[str, Any] | None]]:
        """``label -> (model class, the label's settings or None when unknown)``, table order."""
        found: dict[str, tuple[str, dict[str, Any] | None]] = {}
        for summaries in self.datasets.values():
            for label, summary in summaries.items():
                found.setdefault(label, (summary.model, self.label_settings.get(label)))
        return found


def load_report(folder: str | Path) -> Report:
    """Collect records (in spec order) and run the significance tests."""
    folder = Path(folder)
    spec_path = folder / "spec.yaml"
    spec = load_spec(spec_path) if spec_path.is_file() else None
    records = [r for p in sorted((folder / "runs").rglob("*.json")) if (r := read_record(p))]
    tuning = read_tuning(folder)
    if tuning is not None:  # a tuned spec: the cells of the chosen settings
        current = set(tuning["final_keys"])
        records = [r for r in records if r["cell"]["key"] in current]
    elif spec is not None:  # records of cells no longer in the spec (or changed since) are left out
        current = {c.key for c in spec.cells()}
        records = [r for r in records if r["cell"]["key"] in current]
    if not records:
        raise FileNotFoundError(f"no run records under {folder / 'runs'}: run `vlm4rec bench` first")
    datasets: dict[str, dict[str, ModelSummary]] = {}
    for record in records:
        cell = record["cell"]
        by_label = datasets.setdefault(cell["dataset"], {})
        by_label.setdefault(cell["label"], ModelSummary(cell["dataset"], cell["label"],
                                                        cell["model"])).records.append(record)
    if spec is not None:
        order = {label: i for i, label in enumerate(spec.models)}
        dataset_order = {name: i for i, name in enumerate(spec.datasets)}
        datasets = {d: dict(sorted(m.items(), key=lambda kv: order.get(kv[0], len(order))))
                    for d, m in sorted(datasets.items(),
                                       key=lambda kv: dataset_order.get(kv[0], len(dataset_order)))}
    metrics = list(spec.metrics) if spec and spec.metrics else _all_metrics(records)
    report = Report(folder, metrics, spec.alpha if spec else 0.05, datasets,
                    n_seeds=len(spec.seeds) if spec else None,
                    seeds=list(spec.seeds) if spec else None, tuning=tuning,
                    label_settings={label: dict(entry["overrides"])
                                    for label, entry in spec.models.items()} if spec else {})
    candidates = list(spec.reference) if spec else []
    for dataset, summaries in datasets.items():
        usable = [label for label in candidates if label in summaries and summaries[label].ok]
        reference = usable[0] if usable else None
        report.references[dataset] = reference
        if reference is None:
            continue
        # Paired tests need one test set: a cold-start label is compared only with a cold-start
        # reference, a warm one only with a warm one.
        protocol = summaries[reference].cold_start
        for metric in metrics:
            per_model = {label: s.per_user(metric) for label, s in summaries.items()
                         if s.ok and s.cold_start == protocol}
            report.tests[(dataset, metric)] = compare_to_reference(per_model, reference)
    return report


def _all_metrics(records: list[dict[str, Any]]) -> list[str]:
    for record in records:
        if record["status"] == "ok":
            return list(record["result"]["test_result"])
    return []


def settings_text(settings: dict[str, Any] | None) -> str:
    """``item_feature=vlm, fusion=concat``; ``-`` for none, ``?`` when the spec is not there."""
    if settings is None:
        return "?"
    return ", ".join(f"{key}={json.dumps(value) if not isinstance(value, str) else value}"
                     for key, value in settings.items()) or "-"


def training_notes(summaries: dict[str, ModelSummary]) -> list[str]:
    """Plain-text footnotes for the † and ‡ marks of one dataset's table (none when unmarked)."""
    notes = []
    capped = [(label, s) for label, s in summaries.items() if s.capped]
    if capped:
        parts = []
        for label, summary in capped:
            limits = sorted({r["result"]["training"]["epochs"] for r in summary.capped})
            parts.append(f"{label} ({len(summary.capped)}/{len(summary.ok)} runs, limit "
                         f"{', '.join(map(str, limits))} epochs)")
        notes.append(f"{CAPPED} epochs capped: training ended at the epochs limit before early "
                     f"stopping, so these models may be under-trained: {'; '.join(parts)}. Rerun "
                     "with more epochs (no --max-epochs) for final numbers.")
    flagged = [(label, s) for label, s in summaries.items() if s.undertrained]
    if flagged:
        parts = [f"{label} ({len(s.undertrained)}/{len(s.ok)} runs; "
                 f"{'; '.join(undertrained_reason_text(r) for r in s.undertrained_reasons())})"
                 for label, s in flagged]
        notes.append(f"{UNDERTRAINED} possibly undertrained, as flagged by the run: "
                     f"{'; '.join(parts)}. Rerun with more patience (stopping_step) or more "
                     "epochs before reading these numbers as final.")
    return notes
