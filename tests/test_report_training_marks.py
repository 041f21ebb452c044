"""The report's training marks: † capped and ‡ possibly undertrained (``training.undertrained``),
in report.md, summary.csv, runs.csv, report.html and the published tables, from hand-made records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from recbole_vlm4rec.benchmark.publish import render_table
from recbole_vlm4rec.benchmark.report import write_report


def _record(label: str, model: str, seed: int, recall: float, training: dict) -> dict:
    """A results JSON as the grid writes it (cell.py), typed out by hand."""
    return {
        "status": "ok", "reason": None, "wall_seconds": 3.0,
        "finished_at": "2026-01-01T00:00:00+00:00",
        "cell": {"label": label, "model": model, "dataset": "tiny", "seed": seed,
                 "overrides": {"seed": seed}, "config_files": [], "key": f"{label}-{seed}"},
        "result": {"test_result": {"recall@20": recall}, "valid_result": {"recall@20": recall},
                   "seconds": {"fit": 2.0, "test": 0.1}, "peak_memory_mb": {"rss": 10.0},
                   "training": training},
    }


def _training(best: int, run: int, epochs: int, capped: bool = False, **extra) -> dict:
    return {"best_epoch": best, "epochs_run": run, "epochs": epochs, "capped": capped, **extra}


EARLY = {"reason": "early-best", "message": "best epoch 0 of 11: stopped by patience"}
STILL = {"reason": "still-improving", "message": "best epoch 59 of 60"}


def _bench(tmp_path: Path) -> Path:
    records = {
        # flagged in one of two runs; the other run is from before the field existed
        ("LightGCN", 1): _record("LightGCN", "LightGCN", 1, 0.30,
                                 _training(0, 11, 300, undertrained=EARLY)),
        ("LightGCN", 2): _record("LightGCN", "LightGCN", 2, 0.32, _training(40, 51, 300)),
        ("FREEDOM", 1): _record("FREEDOM", "FREEDOM", 1, 0.33,
                                _training(59, 60, 60, capped=True, undertrained=STILL)),
        ("FREEDOM", 2): _record("FREEDOM", "FREEDOM", 2, 0.34,
                                _training(59, 60, 60, capped=True, undertrained=STILL)),
        ("Pop", 1): _record("Pop", "Pop", 1, 0.10, _training(0, 1, 300, undertrained=None)),
        ("Pop", 2): _record("Pop", "Pop", 2, 0.11, _training(0, 1, 300, undertrained=None)),
    }
    for (label, seed), record in records.items():
        path = tmp_path / "runs" / "tiny" / label / f"seed-{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    return tmp_path


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_undertrained_runs_are_marked_in_every_table_with_their_reason(tmp_path):
    folder = _bench(tmp_path)
    write_report(folder)

    markdown = (folder / "report.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in markdown.splitlines()
            if line.startswith("| ") and " | " in line}
    assert "LightGCN ‡" in rows and "FREEDOM † ‡" in rows and "Pop" in rows  # Pop: null = no flag
    note = next(line for line in markdown.splitlines() if line.startswith("‡ "))
    assert "LightGCN (1/2 runs; early-best: stopped by patience with its best epoch among the " \
           "first few)" in note
    assert "FREEDOM (2/2 runs; still-improving: reached the epoch cap" in note
    assert "Pop" not in note
    assert any(line.startswith("† epochs capped") and "FREEDOM (2/2 runs" in line
               for line in markdown.splitlines())

    summary = {row["model"]: row for row in _csv_rows(folder / "summary.csv")}
    assert (summary["LightGCN"]["runs_undertrained"], summary["LightGCN"]["undertrained_reasons"]) \
        == ("1", "early-best")
    assert summary["FREEDOM"]["undertrained_reasons"] == "still-improving"
    assert (summary["Pop"]["runs_undertrained"], summary["Pop"]["undertrained_reasons"]) == ("0", "")
    runs = {(row["model"], row["seed"]): row["undertrained"]
            for row in _csv_rows(folder / "runs.csv")}
    assert runs == {("LightGCN", "1"): "early-best", ("LightGCN", "2"): "",
                    ("FREEDOM", "1"): "still-improving", ("FREEDOM", "2"): "still-improving",
                    ("Pop", "1"): "", ("Pop", "2"): ""}

    page = (folder / "report.html").read_text()
    light = page[page.index('data-model="LightGCN"'):]
    light = light[:light.index("</tr>")]
    assert 'class="undertrained" title="1 of 2 runs possibly undertrained: early-best: ' in light
    assert "(best epoch 0 of 11: stopped by patience)" in light
    pop = page[page.index('data-model="Pop"'):]
    assert "undertrained" not in pop[:pop.index("</tr>")]
    note = page[page.index("‡ possibly undertrained, as flagged by the run: "):]
    assert "LightGCN (1/2 runs; early-best: stopped by patience" in note[:note.index("</p>")]

    published = render_table(folder / "summary.csv", "tiny", ["recall@20"])
    assert "| LightGCN ‡ |" in published and "| FREEDOM † ‡ |" in published
    assert "| Pop |" in published
    assert "‡ possibly undertrained" in published and "LightGCN (1/2 runs: early-best)" in published


def test_a_summary_written_before_the_flag_existed_renders_unmarked(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("dataset,model,class,status,runs_ok,runs,runs_capped,recall@20_mean,"
                    "recall@20_std\ntiny,BPR,BPR,ok,1,1,0,0.3,0\n")
    assert render_table(path, "tiny") == ("| model | recall@20 | runs |\n|---|---|---|\n"
                                          "| BPR | 0.3000 | 1/1 |\n")
