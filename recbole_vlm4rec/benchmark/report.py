"""Build a benchmark's report from its run records, without rerunning anything.

Reads ``<folder>/spec.yaml`` and ``<folder>/runs/**/*.json`` into the report's data model
(report_data.py), then writes each file with its renderer:

``summary.csv``, ``runs.csv``, ``significance.csv``   see report_csv.py
``report.md``         see report_markdown.py
``plots/*.png``       see plots.py
``report.html``       one self-contained page: the table, the plots, qualitative examples (a few
                      test users' training items and each model's top-10 with thumbnails and
                      descriptions) and how the run was made; see html_report.py
``tuning.csv``        (a ``vlm4rec tune`` folder) one row per trial: settings, validation metric
                      (tune.py); report.md then also shows each model's search, trials and choice
"""

from __future__ import annotations

from pathlib import Path

from recbole_vlm4rec.benchmark.html_examples import DEFAULT_EXAMPLE_USERS
from recbole_vlm4rec.benchmark.html_report import html_page
from recbole_vlm4rec.benchmark.plots import write_plots
from recbole_vlm4rec.benchmark.report_csv import (
    csv_text,
    run_rows,
    significance_rows,
    summary_rows,
)
from recbole_vlm4rec.benchmark.report_data import load_report
from recbole_vlm4rec.benchmark.report_markdown import markdown
from recbole_vlm4rec.benchmark.tune import tuning_rows
from recbole_vlm4rec.formats.files import atomic_write_text


def write_report(folder: str | Path, example_models: list[str] | None = None,
                 example_users: int | None = None) -> list[Path]:
    """Rebuild every report file in ``folder``; returns the paths written."""
    report = load_report(folder)
    written = []
    outputs = {"summary.csv": csv_text(summary_rows(report)), "runs.csv": csv_text(run_rows(report)),
               "significance.csv": csv_text(significance_rows(report)),
               "report.md": markdown(report)}
    if report.tuning:
        outputs["tuning.csv"] = csv_text(tuning_rows(report.tuning))
    for name, text in outputs.items():
        path = report.folder / name
        atomic_write_text(path, text)
        written.append(path)
    written += write_plots(report)
    page = html_page(report, report.seeds, example_models,
                     DEFAULT_EXAMPLE_USERS if example_users is None else example_users)
    atomic_write_text(report.folder / "report.html", page)
    written.append(report.folder / "report.html")
    return written
