"""Run a benchmark grid: every cell once, resumable, a failure recorded and the grid going on.

Output folder (``results/benchmarks/<spec name>/`` by default)::

    spec.yaml                         the spec as run (``vlm4rec report`` reads it)
    runs/<dataset>/<label>/seed-N.json  one record per cell (see cell.py)
    logs/<dataset>/<label>/seed-N.log   the cell's stdout/stderr (subprocess isolation)
    saved/                            RecBole checkpoints of the cells
    log/                              RecBole's own logs (cells run with this folder as cwd)
    report.md, summary.csv, runs.csv, significance.csv, plots/*.png   (report.py)

A cell whose record says ``ok`` and whose key matches the spec is not rerun; skipped and failed
cells are retried (the data may have been prepared, the model fixed since).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from tqdm import tqdm

from recbole_vlm4rec.benchmark.cell import make_record, read_record, run_cell, write_record
from recbole_vlm4rec.benchmark.spec import BenchSpec, Cell
from recbole_vlm4rec.formats.files import atomic_write_text


@dataclass
class GridSummary:
    out_dir: Path
    counts: dict[str, int] = field(default_factory=dict)  # ok / skipped / failed / resumed
    interrupted: bool = False
    stopped: str | None = None  # why run_cells stopped before the last cell (a budget)

    def line(self) -> str:
        parts = [f"{self.counts.get(k, 0)} {k}" for k in ("ok", "resumed", "skipped", "failed")]
        return ", ".join(parts) + (" (interrupted: rerun to resume)" if self.interrupted else "")


def default_out_dir(spec: BenchSpec) -> Path:
    from recbole_vlm4rec.benchmark.spec import safe_name

    return Path("results") / "benchmarks" / safe_name(spec.name)


def record_path(out_dir: Path, cell: Cell) -> Path:
    """``runs/<slug>.json``; a tuning trial's under ``trials/`` (never read as a result)."""
    return out_dir / ("trials" if cell.stage == "trial" else "runs") / f"{cell.slug}.json"


def is_finished(out_dir: Path, cell: Cell) -> bool:
    record = read_record(record_path(out_dir, cell))
    return bool(record and record["status"] == "ok" and record["cell"].get("key") == cell.key)


class GridConfigError(ValueError):
    """Cells of a spec that no run would accept (unknown model, config key or value): the grid
    stops before it runs any cell. ``problems`` holds one line per distinct cell setting."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def precheck(cell: Cell) -> dict[str, Any] | None:
    """A record for a cell that cannot start for lack of data (a feature not declared or not
    built, a dataset not prepared), made without starting it; None when the cell should run.
    It runs the run layer's own checks (run/protocol.prepare_run), so a cell is refused here
    exactly when ``vlm4rec run`` would refuse it. A configuration no run accepts (unknown model,
    config key or value) raises instead: see :func:`check_cells`."""
    from recbole_vlm4rec.benchmark.cell import classify_error
    from recbole_vlm4rec.data.dataset import MissingFeatureError
    from recbole_vlm4rec.data.registry import UnknownDatasetError
    from recbole_vlm4rec.run.protocol import prepare_run

    try:
        prepare_run(cell.model, cell.dataset, cell.config_files,
                    {**cell.overrides, "state": "WARNING"}, build_features=False)
    except (UnknownDatasetError, MissingFeatureError, FileNotFoundError) as error:
        status, reason = classify_error(error)
        return make_record(cell, status, reason)
    return None


def check_cells(cells: list[Cell]) -> dict[str, dict[str, Any] | None]:
    """Precheck every cell before any runs: ``cell.key -> precheck record``. Cells that differ
    only in their seed are checked once. GridConfigError lists every cell setting no run would
    accept (unknown model, config key or value, a feature name that cannot resolve)."""
    from recbole_vlm4rec.models import UnknownModelError
    from recbole_vlm4rec.run.accounting import ConfigError

    outcome: dict[str, dict[str, Any] | None] = {}
    seen: dict[str, Any] = {}
    problems: list[str] = []
    for cell in cells:
        setting = json.dumps([cell.model, cell.dataset, list(cell.config_files),
                              {k: v for k, v in cell.overrides.items() if k != "seed"}],
                             sort_keys=True, default=str)
        if setting not in seen:
            try:
                seen[setting] = ("record", precheck(cell))
            except (UnknownModelError, ConfigError, ValueError) as error:
                seen[setting] = ("error", error)
                first_line = str(error).strip().splitlines()[0]
                problems.append(f"{cell.label} on {cell.dataset}: {first_line}")
        kind, value = seen[setting]
        if kind == "record":
            outcome[cell.key] = None if value is None else {**value, "cell": cell.to_json()}
    if problems:
        raise GridConfigError(problems)
    return outcome


def run_in_subprocess(cell: Cell, out_dir: Path, timeout_s: float | None,
                      path: Path | None = None) -> dict[str, Any]:
    """Run a cell in a fresh interpreter: isolated memory peak, a crash kills only the cell.
    The record goes to ``path`` (default: the cell's record path)."""
    path = path or record_path(out_dir, cell)
    suffix = "" if path == record_path(out_dir, cell) else "-rerun"
    log_path = out_dir / "logs" / f"{cell.slug}{suffix}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(cell.to_json(), handle)
        cell_file = handle.name
    command = [sys.executable, "-m", "recbole_vlm4rec.benchmark.cell", cell_file, str(path),
               str((out_dir / "saved").resolve())]
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))}
    try:
        with open(log_path, "w") as log:
            completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=out_dir,
                                       env=env, timeout=timeout_s)
        code: int | str = completed.returncode
    except subprocess.TimeoutExpired:
        code = f"timeout after {timeout_s:g} s"
    finally:
        Path(cell_file).unlink(missing_ok=True)
    record = read_record(path)
    if record is not None:
        return record
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:] if log_path.exists() else []
    reason = f"cell process ended without a record (exit {code}); log {log_path}: " + " | ".join(tail)
    return make_record(cell, "failed", reason, wall_seconds=time.perf_counter() - started)


def _describe(record: dict[str, Any], metric: str | None) -> str:
    if record["status"] != "ok":
        return f"{record['status']}: {record['reason']}"
    test = record["result"]["test_result"]
    split = "test"
    if not test:  # a tuning trial: validation only
        test, split = record["result"]["best_valid_result"], "valid"
    metric = metric if metric in test else next(iter(test), None)
    shown = f"{split} {metric}={test[metric]:.4f} " if metric else ""
    return f"ok {shown}({record['wall_seconds']:.1f} s)"


def run_grid(spec: BenchSpec, out_dir: Path | None = None, rerun: bool = False,
             isolation: str | None = None,
             on_record: Callable[[Cell, dict[str, Any]], None] | None = None) -> GridSummary:
    """Run every unfinished cell of ``spec``; records are written as each cell ends."""
    out_dir = Path(out_dir or default_out_dir(spec)).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "spec.yaml", yaml.safe_dump(spec.raw, sort_keys=False))
    primary = spec.metrics[0] if spec.metrics else None
    return run_cells(spec.cells(), out_dir, isolation or spec.isolation, spec.timeout_s,
                     rerun=rerun, on_record=on_record, metric=primary,
                     description=f"bench {spec.name}")


def run_cells(cells: list[Cell], out_dir: Path, isolation: str = "subprocess",
              timeout_s: float | None = None, rerun: bool = False,
              on_record: Callable[[Cell, dict[str, Any]], None] | None = None,
              metric: str | None = None, description: str = "cells",
              stop: Callable[[], str | None] | None = None) -> GridSummary:
    """Run the unfinished ``cells`` into ``out_dir`` (all checked first: GridConfigError before
    any runs). ``stop`` (tuning budgets) is asked before each cell starts: a reason ends the run."""
    summary = GridSummary(out_dir)
    pending = [cell for cell in cells if rerun or not is_finished(out_dir, cell)]
    prechecked = check_cells(pending)  # GridConfigError before any cell runs
    progress = tqdm(cells, desc=description, unit="cell", dynamic_ncols=True)
    try:
        for number, cell in enumerate(progress, start=1):
            progress.set_postfix_str(cell.describe())
            if cell.key not in prechecked:
                summary.counts["resumed"] = summary.counts.get("resumed", 0) + 1
                continue
            reason = stop() if stop else None
            if reason:
                summary.stopped = reason
                break
            record = prechecked[cell.key]
            if record is None and isolation == "subprocess":
                record = run_in_subprocess(cell, out_dir, timeout_s)
            elif record is None:
                record = run_cell(cell, out_dir / "saved")
            write_record(record_path(out_dir, cell), record)
            summary.counts[record["status"]] = summary.counts.get(record["status"], 0) + 1
            tqdm.write(f"[{number}/{len(cells)}] {cell.describe()}: {_describe(record, metric)}")
            sys.stdout.flush()  # a log file sees each cell as it ends
            if on_record:
                on_record(cell, record)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        progress.close()
    return summary


def _undertrained(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if not record or record["status"] != "ok":
        return None
    return ((record.get("result") or {}).get("training") or {}).get("undertrained")


def rerun_undertrained(cells: list[Cell], out_dir: Path, isolation: str = "subprocess",
                       timeout_s: float | None = None, patience: int | None = None,
                       max_epochs: int | None = None, description: str = "rerun undertrained"
                       ) -> GridSummary:
    """Rerun the ``cells`` whose record is flagged undertrained (run/training.py) with more
    patience: ``stopping_step`` = ``patience`` (default: twice the run's), and for a run that was
    still improving at its cap also twice the ``epochs`` (never above ``max_epochs``). The new
    run replaces the record only when it finishes ok; it keeps the spec's cell (its key: the
    grid treats it as that cell's result) and says, under ``rerun``, what changed and how the
    first run had ended. Other cells are not touched."""
    summary = GridSummary(out_dir)
    flagged = [(c, r) for c in cells if _undertrained(r := read_record(record_path(out_dir, c)))
               and r["cell"].get("key") == c.key]
    for number, (cell, record) in enumerate(flagged, start=1):
        training = record["result"]["training"]
        flag = training["undertrained"]
        settings = {"stopping_step": patience or 2 * int(training.get("stopping_step") or 10)}
        if flag["reason"] == "still-improving":
            epochs = 2 * int(training["epochs"])
            if max_epochs is not None and training["epochs"] >= max_epochs:
                tqdm.write(f"[{number}/{len(flagged)}] {cell.describe()}: {flag['reason']}, not "
                           f"rerun: its {training['epochs']} epochs are the cap (--max-epochs)")
                summary.counts["skipped"] = summary.counts.get("skipped", 0) + 1
                continue
            settings["epochs"] = min(epochs, max_epochs) if max_epochs else epochs
        boosted = Cell(cell.label, cell.model, cell.dataset, cell.seed,
                       {**cell.overrides, **settings}, cell.config_files, cell.stage)
        tqdm.write(f"[{number}/{len(flagged)}] {cell.describe()}: {flag['reason']} "
                   f"(best epoch {training['best_epoch']} of {training['epochs_run']}), rerun with "
                   + ", ".join(f"{k}={v}" for k, v in settings.items()))
        try:
            if isolation == "subprocess":
                scratch = out_dir / "reruns" / f"{cell.slug}.json"  # never read as a result
                new = run_in_subprocess(boosted, out_dir, timeout_s, path=scratch)
                scratch.unlink(missing_ok=True)
            else:
                new = run_cell(boosted, out_dir / "saved")
        except KeyboardInterrupt:
            summary.interrupted = True
            break
        summary.counts[new["status"]] = summary.counts.get(new["status"], 0) + 1
        if new["status"] != "ok":
            tqdm.write(f"  rerun {new['status']}: {new['reason']}; the first run's record is kept")
            continue
        new["cell"] = cell.to_json()
        new["rerun"] = {"because": flag, "settings": settings,
                        "first_run": {"training": {k: v for k, v in training.items()
                                                   if k != "valid_curve"},
                                      "best_valid_result": record["result"]["best_valid_result"],
                                      "test_result": record["result"]["test_result"],
                                      "wall_seconds": record["wall_seconds"]}}
        write_record(record_path(out_dir, cell), new)
        still = _undertrained(new)
        tqdm.write(f"  {_describe(new, None)}; " + (f"still {still['reason']}" if still
                                                    else "no longer flagged"))
    return summary
