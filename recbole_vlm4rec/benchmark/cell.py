"""One benchmark cell through ``runner.run`` (the code ``run_recbole.py`` runs), as a record.

A record is the JSON file the grid writes per cell (``runs/<dataset>/<label>/seed-<seed>.json``)::

    {"status": "ok" | "skipped" | "failed",
     "reason": null | "why it was skipped or failed",
     "cell": {label, model, dataset, seed, overrides, config_files, key},
     "result": runner.RunResult as a dict (status ok only: metrics, per-user test metrics,
               seconds, peak memory, config snapshot, library versions, card checksum),
     "wall_seconds": float, "finished_at": ISO time}

``skipped`` means the cell cannot run on this dataset as prepared (a feature it needs is not
declared or its file is not there, or the dataset is not prepared); ``failed`` means it should have
run and did not (unknown model, a crash: the error is kept).

Run as ``python -m recbole_vlm4rec.benchmark.cell <cell.json> <record.json>`` for a subprocess per
cell: exit code 0 when a record was written (whatever its status).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from recbole_vlm4rec.benchmark.spec import Cell
from recbole_vlm4rec.formats.files import atomic_write_text


def make_record(cell: Cell, status: str, reason: str | None = None,
                result: dict[str, Any] | None = None, wall_seconds: float = 0.0) -> dict[str, Any]:
    return {
        "status": status,
        "reason": reason,
        "cell": cell.to_json(),
        "result": result,
        "wall_seconds": round(wall_seconds, 3),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_record(path: Path, record: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True))


def read_record(path: Path) -> dict[str, Any] | None:
    """A record, or None when the file is missing or unreadable (then the cell reruns)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "status" in record else None


def classify_error(error: BaseException) -> tuple[str, str]:
    """``(status, reason)``: missing data -> skipped, everything else -> failed."""
    from recbole_vlm4rec.data.dataset import MissingFeatureError
    from recbole_vlm4rec.formats.features import FeatureFileError
    from recbole_vlm4rec.data.registry import UnknownDatasetError

    message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    if isinstance(error, MissingFeatureError):
        return "skipped", f"dataset lacks a feature the model needs: {message}"
    if isinstance(error, FeatureFileError) and "file not found" in message:
        return "skipped", f"feature declared but not built: {message}"
    if isinstance(error, UnknownDatasetError):
        return "skipped", f"dataset not available: {message}"
    return "failed", f"{type(error).__name__}: {message}"


def run_cell(cell: Cell, checkpoint_dir: Path) -> dict[str, Any]:
    """Run the cell in this process and return its record (never raises, except Ctrl-C)."""
    from recbole_vlm4rec import compat
    from recbole_vlm4rec.run.runner import run

    compat.install()  # where a run starts: a subprocess per cell, or the grid's own process

    started = time.perf_counter()
    overrides = {**cell.overrides, "checkpoint_dir": str(checkpoint_dir), "show_progress": False}
    try:
        result = run(cell.model, cell.dataset, cell.config_files, overrides, write_results=False,
                     evaluate_test=cell.stage != "trial")
    except KeyboardInterrupt:
        raise
    except Exception as error:  # a crashed cell is a result to record, not the end of the grid
        status, reason = classify_error(error)
        record = make_record(cell, status, reason, wall_seconds=time.perf_counter() - started)
        if status == "failed":
            record["traceback"] = traceback.format_exc(limit=8)
        return record
    return make_record(cell, "ok", result=asdict(result),
                       wall_seconds=time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print("usage: python -m recbole_vlm4rec.benchmark.cell CELL.json RECORD.json CKPT_DIR",
              file=sys.stderr)
        return 2
    cell = Cell.from_json(json.loads(Path(argv[0]).read_text()))
    write_record(Path(argv[1]), run_cell(cell, Path(argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
