"""``vlm4rec tune``: choose each model's settings on validation, then run the choice on every seed.

For each (dataset, model label) of a benchmark spec:

1. the search space is the spec's ``search.space[label]`` or else the model's ``search_space``
   (its yaml in configs/model/, a config key like any other: the layers decide it);
2. trials (grid points, in order or in a seeded random order) run on ``search.seed`` as cells of
   stage ``trial``: trained and validated, never tested (``runner.run(evaluate_test=False)``), so
   the choice cannot see the test split; budgets: ``max_trials`` and ``max_minutes`` (the trials'
   recorded wall time, resumed trials included, so a rerun stops where the first run would);
3. the trial with the best validation metric (``search.metric``, default the protocol's
   ``valid_metric``; the first trial wins a tie) is the choice; with no search space the spec's
   own entry is;
4. the choice runs on every seed of the spec, as ``vlm4rec bench`` runs cells.

Everything resumes: trial and final records are kept and reused while their cell key (model,
dataset, seed, settings) is unchanged. Output folder (``results/tune/<spec name>`` by default)::

    spec.yaml        the spec as run
    trials/<dataset>/<label>/trial-<key>.json   one record per trial (validation metrics only)
    runs/<dataset>/<label>/seed-N.json          the chosen settings on every seed
    tuning.json      per dataset and label: space, trials, choice, why the search stopped
    tuning.csv, report.md (report.py: the test table of the choices + the tuning tables) ...
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recbole_vlm4rec.benchmark.cell import read_record
from recbole_vlm4rec.benchmark.grid import GridSummary, check_cells, record_path, run_cells
from recbole_vlm4rec.benchmark.grid import rerun_undertrained as grid_rerun
from recbole_vlm4rec.benchmark.spec import BenchSpec, Cell, SearchSpec, check_space, safe_name
from recbole_vlm4rec.formats.files import atomic_write_text

TUNING_FILE = "tuning.json"


@dataclass
class Search:
    """The search of one (dataset, label): its trials and what was chosen."""

    dataset: str
    label: str
    model: str
    space: dict[str, list[Any]]
    base: dict[str, Any]  # the spec's overrides for this cell, before any trial setting
    trials: list[Cell] = field(default_factory=list)
    stopped: str | None = None
    chosen: dict[str, Any] | None = None
    chosen_valid: float | None = None


def default_out_dir(spec: BenchSpec) -> Path:
    return Path("results") / "tune" / safe_name(spec.name)


def grid_points(space: dict[str, list[Any]], method: str, seed: int) -> list[dict[str, Any]]:
    """Every combination of the space's values; ``random``: in a seeded random order."""
    keys = list(space)
    points = [dict(zip(keys, values)) for values in itertools.product(*space.values())]
    if method == "random":
        random.Random(seed).shuffle(points)
    return points


def search_space(spec: BenchSpec, search: SearchSpec, cell: Cell) -> dict[str, list[Any]]:
    """The spec's space for the label, else the model's ``search_space`` as its layers set it;
    a cell that cannot be prepared (missing data) has none (its final cells are skipped)."""
    if cell.label in search.space:
        return search.space[cell.label]
    from recbole_vlm4rec.run.protocol import prepare_run

    try:
        prepared = prepare_run(cell.model, cell.dataset, cell.config_files,
                               {**cell.overrides, "state": "WARNING"}, build_features=False)
    except (KeyError, FileNotFoundError):
        return {}
    return check_space(prepared.config["search_space"], f"{cell.model}: search_space")


def plan(spec: BenchSpec, max_trials: int | None = None) -> list[Search]:
    """One Search per (dataset, label) with its trial cells (the budget in trials applied)."""
    search = spec.search or SearchSpec()
    seed = search.seed if search.seed is not None else spec.seeds[0]
    limit = max_trials or search.max_trials
    searches = []
    for first in (c for c in spec.cells() if c.seed == spec.seeds[0]):
        base = {k: v for k, v in first.overrides.items() if k != "seed"}
        space = search_space(spec, search, first)
        found = Search(first.dataset, first.label, first.model, space, base)
        points = grid_points(space, search.method, seed) if space else []
        if limit and len(points) > limit:
            found.stopped = f"max_trials {limit} of {len(points)} grid points"
            points = points[:limit]
        found.trials = [Cell(first.label, first.model, first.dataset, seed,
                             {**base, **point, "seed": seed}, first.config_files, stage="trial")
                        for point in points]
        searches.append(found)
    return searches


def trial_params(found: Search, cell: Cell) -> dict[str, Any]:
    return {key: cell.overrides[key] for key in found.space}


def choose(found: Search, out_dir: Path, metric: str | None) -> None:
    """The best finished trial on the validation metric (the first of equals)."""
    best = None
    for cell in found.trials:
        record = read_record(record_path(out_dir, cell))
        if not record or record["status"] != "ok":
            continue
        result = record["result"]
        name = metric or result["valid_metric"]
        value = result["best_valid_result"].get(name)
        if value is not None and (best is None or value > best[0]):
            best = (value, cell)
    if best is not None:
        found.chosen_valid, found.chosen = best[0], trial_params(found, best[1])


def final_cells(spec: BenchSpec, searches: list[Search]) -> list[Cell]:
    """Every seed of every (dataset, label) with its chosen settings (none: the spec's own)."""
    chosen = {(s.dataset, s.label): s.chosen or {} for s in searches}
    return [Cell(c.label, c.model, c.dataset, c.seed,
                 {**c.overrides, **chosen.get((c.dataset, c.label), {}), "seed": c.seed},
                 c.config_files) for c in spec.cells()]


def run_tune(spec: BenchSpec, out_dir: Path | None = None, isolation: str | None = None,
             max_trials: int | None = None, max_minutes: float | None = None,
             rerun_undertrained: bool = False, patience: int | None = None
             ) -> tuple[GridSummary, GridSummary]:
    """Trials, choice, final seeds; writes tuning.json. Returns (trials, finals) summaries.
    ``rerun_undertrained``: trials and final runs flagged undertrained are rerun with more
    patience (grid.rerun_undertrained) before the choice and the report see them."""
    out_dir = Path(out_dir or default_out_dir(spec)).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "spec.yaml", yaml.safe_dump(spec.raw, sort_keys=False))
    search = spec.search or SearchSpec()
    minutes = max_minutes or search.max_minutes
    isolation = isolation or spec.isolation
    searches = plan(spec, max_trials)
    check_cells([cell for found in searches for cell in found.trials])  # all, before any runs
    trials_summary = GridSummary(out_dir)
    for found in searches:
        if not found.trials:
            continue

        def over_budget(found: Search = found) -> str | None:
            spent = sum((read_record(record_path(out_dir, c)) or {}).get("wall_seconds", 0.0)
                        for c in found.trials)
            if minutes and spent >= minutes * 60:
                return f"max_minutes {minutes:g} (trials took {spent / 60:.1f} min)"
            return None

        summary = run_cells(found.trials, out_dir, isolation, spec.timeout_s, metric=search.metric,
                            description=f"tune {found.label} on {found.dataset}", stop=over_budget)
        for status, count in summary.counts.items():
            trials_summary.counts[status] = trials_summary.counts.get(status, 0) + count
        if summary.stopped:
            found.stopped = summary.stopped
        if rerun_undertrained and not summary.interrupted:
            reruns = grid_rerun(found.trials, out_dir, isolation, spec.timeout_s, patience,
                                spec.max_epochs, f"rerun undertrained trials of {found.label}")
            summary.interrupted = reruns.interrupted
        if summary.interrupted:
            trials_summary.interrupted = True
            write_tuning(out_dir, spec, searches, [])
            return trials_summary, GridSummary(out_dir, interrupted=True)
        choose(found, out_dir, search.metric)
    finals = final_cells(spec, searches)
    write_tuning(out_dir, spec, searches, finals)
    primary = spec.metrics[0] if spec.metrics else None
    final_summary = run_cells(finals, out_dir, isolation, spec.timeout_s, metric=primary,
                              description=f"tune {spec.name}: chosen settings on every seed")
    if rerun_undertrained and not final_summary.interrupted:
        reruns = grid_rerun(finals, out_dir, isolation, spec.timeout_s, patience, spec.max_epochs,
                            "rerun undertrained final runs")
        final_summary.interrupted = reruns.interrupted
        if reruns.counts.get("failed"):
            final_summary.counts["failed"] = (final_summary.counts.get("failed", 0)
                                              + reruns.counts["failed"])
    return trials_summary, final_summary


def write_tuning(out_dir: Path, spec: BenchSpec, searches: list[Search],
                 finals: list[Cell]) -> Path:
    """``tuning.json``: per dataset and label, the space, every trial and the choice."""
    search = spec.search or SearchSpec()
    datasets: dict[str, dict[str, Any]] = {}
    for found in searches:
        trials = []
        for cell in found.trials:
            record = read_record(record_path(out_dir, cell))
            entry = {"params": trial_params(found, cell), "key": cell.key,
                     "status": record["status"] if record else "not run"}
            if record and record["status"] == "ok":
                result = record["result"]
                entry["valid"] = result["best_valid_result"]
                entry["valid_metric"] = result["valid_metric"]
                entry["seconds"] = record["wall_seconds"]
            elif record:
                entry["reason"] = record.get("reason")
            trials.append(entry)
        datasets.setdefault(found.dataset, {})[found.label] = {
            "model": found.model, "space": found.space, "trials": trials,
            "chosen": found.chosen, "chosen_valid": found.chosen_valid,
            "stopped": found.stopped}
    data = {"method": search.method, "metric": search.metric,
            "seed": search.seed if search.seed is not None else spec.seeds[0],
            "max_trials": search.max_trials, "max_minutes": search.max_minutes,
            "final_keys": [cell.key for cell in finals], "datasets": datasets}
    path = out_dir / TUNING_FILE
    atomic_write_text(path, json.dumps(data, indent=1, default=str))
    return path


def read_tuning(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / TUNING_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _settings(params: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in (params or {}).items()) or "-"


def tuning_rows(tuning: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trial: dataset, model, settings, status, validation metric, chosen?"""
    rows = []
    metric = tuning.get("metric")
    for dataset, labels in tuning["datasets"].items():
        for label, found in labels.items():
            for trial in found["trials"]:
                name = metric or trial.get("valid_metric", "")
                rows.append({"dataset": dataset, "model": label,
                             "settings": _settings(trial["params"]), "status": trial["status"],
                             "valid_metric": name,
                             "valid": (trial.get("valid") or {}).get(name, ""),
                             "seconds": trial.get("seconds", ""),
                             "chosen": trial["params"] == found["chosen"]})
    return rows


def tuning_markdown(tuning: dict[str, Any], dataset: str) -> list[str]:
    """The tuning tables of one dataset for report.md."""
    labels = tuning["datasets"].get(dataset, {})
    if not labels:
        return []
    how = (f"{tuning['method']} search, trials on seed {tuning['seed']}, ranked by validation "
           f"{tuning.get('metric') or 'valid_metric'} only (the test split is never evaluated "
           "in a trial); the chosen settings then ran on every seed (table above)")
    lines = ["", "Tuning: " + how + ".", "",
             "| model | searched | trials | chosen | valid of chosen | stopped by |",
             "|---|---|---|---|---|---|"]
    for label, found in labels.items():
        space = "; ".join(f"{k}: {', '.join(_value(v) for v in values)}"
                          for k, values in found["space"].items()) or "not tuned"
        ok = sum(1 for t in found["trials"] if t["status"] == "ok")
        valid = "-" if found["chosen_valid"] is None else f"{found['chosen_valid']:.4f}"
        lines.append(f"| {label} | {space} | {ok}/{len(found['trials'])} | "
                     f"{_settings(found['chosen'])} | {valid} | {found['stopped'] or '-'} |")
    return lines
