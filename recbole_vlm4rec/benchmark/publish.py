"""Published results: a benchmark's summaries copied under docs/results/<name>/, and the tables in
README.md / docs/*.md rendered from them, so every published figure comes from one command.

``vlm4rec bench SPEC --publish docs/results/<name>`` (or ``vlm4rec report FOLDER --publish ...``,
``vlm4rec tune SPEC --publish ...``) copies the report files (report.md, summary.csv, runs.csv,
significance.csv, tuning.csv, plots/, spec.yaml) and writes ``provenance.json`` (the spec, the git
commit(s) and dirty flags the runs recorded, each run's result digest), then rewrites every table
block that cites that summary::

    <!-- results-table: docs/results/posters/summary.csv dataset=ml-100k-posters metrics=recall@20,ndcg@20 -->
    | model | recall@20 | ndcg@20 |
    ...
    <!-- /results-table -->

The path is relative to the checkout; ``dataset=`` and ``metrics=`` are optional (default: every
row, the summary's metrics). tests/test_published_results.py fails when a block in the docs
differs from what its summary renders.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from recbole_vlm4rec.benchmark.report_data import CAPPED, UNDERTRAINED
from recbole_vlm4rec.formats.files import atomic_write_text

BLOCK = re.compile(r"(<!-- results-table: (?P<args>[^>]*?) -->\n)(?P<body>.*?)(<!-- /results-table -->)",
                   re.S)
MARK_MEANING = {CAPPED: "epochs capped: training ended at the epochs limit before early stopping",
                UNDERTRAINED: "possibly undertrained, as flagged by the run (early-best: stopped "
                              "by patience with its best epoch among the first few; "
                              "still-improving: reached the epoch cap with its best epoch at or "
                              "near it)"}
COPIED = ("report.md", "summary.csv", "runs.csv", "significance.csv", "tuning.csv", "spec.yaml",
          "tuning.json")


def checkout_root() -> Path:
    """The checkout this package runs from (README.md and docs/ beside the package)."""
    return Path(__file__).resolve().parents[2]


def parse_block_args(text: str) -> tuple[str, dict[str, str]]:
    path, *options = text.split()
    parsed = {}
    for option in options:
        key, _, value = option.partition("=")
        if key not in ("dataset", "metrics"):
            raise ValueError(f"results-table: unknown option {key!r} (dataset=, metrics=)")
        parsed[key] = value
    return path, parsed


def render_table(summary_csv: Path, dataset: str | None = None,
                 metrics: list[str] | None = None) -> str:
    """A Markdown table of a summary.csv: model, then mean (± std over seeds) per metric; † / ‡
    after models with capped / possibly undertrained runs, each explained below the table."""
    with open(summary_csv, newline="") as handle:
        rows = [row for row in csv.DictReader(handle)
                if dataset is None or row["dataset"] == dataset]
    if not rows:
        raise ValueError(f"{summary_csv}: no rows" + (f" for dataset {dataset}" if dataset else ""))
    if not metrics:
        metrics = [name[:-5] for name in rows[0] if name.endswith("_mean")]
    lines = ["| model | " + " | ".join(metrics) + " | runs |",
             "|---|" + "---|" * (len(metrics) + 1)]
    marked: dict[str, list[str]] = {}
    for row in rows:
        cells = []
        for metric in metrics:
            mean, std = row.get(f"{metric}_mean", ""), row.get(f"{metric}_std", "")
            if mean == "":
                cells.append(row["status"])
                continue
            text = f"{float(mean):.4f}"
            if int(row["runs_ok"]) > 1 and std != "":
                text += f" ± {float(std):.4f}"
            cells.append(text)
        model = row["model"] if dataset else f"{row['model']} ({row['dataset']})"
        model += _training_marks(row, marked)
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {row['runs_ok']}/{row['runs']} |")
    for mark, labels in marked.items():
        lines += ["", f"{mark} {MARK_MEANING[mark]}: {'; '.join(labels)}."]
    return "\n".join(lines) + "\n"


def _training_marks(row: dict[str, str], marked: dict[str, list[str]]) -> str:
    """† / ‡ after a label whose runs were capped / flagged as undertrained (columns of the
    summary; summaries written before a column existed have no such runs), noted in ``marked``."""
    text = ""
    capped, flagged = int(row.get("runs_capped") or 0), int(row.get("runs_undertrained") or 0)
    if capped:
        text += f" {CAPPED}"
        marked.setdefault(CAPPED, []).append(f"{row['model']} ({capped}/{row['runs_ok']} runs)")
    if flagged:
        text += f" {UNDERTRAINED}"
        reasons = (row.get("undertrained_reasons") or "").replace(";", ", ")
        marked.setdefault(UNDERTRAINED, []).append(
            f"{row['model']} ({flagged}/{row['runs_ok']} runs" + (f": {reasons})" if reasons
                                                                     else ")"))
    return text


def render_blocks(text: str, root: Path, only: Path | None = None) -> str:
    """``text`` with every results-table block re-rendered (only those citing ``only``)."""
    def replace(match: re.Match) -> str:
        path, options = parse_block_args(match.group("args"))
        summary = (root / path).resolve()
        if only is not None and summary != only.resolve():
            return match.group(0)
        metrics = options["metrics"].split(",") if options.get("metrics") else None
        body = render_table(summary, options.get("dataset"), metrics)
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, text)


def doc_files(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if p.is_file()]


def stale_blocks(root: Path) -> list[str]:
    """``file: block`` for every table block that differs from what its summary renders."""
    stale = []
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            where = f"{path.relative_to(root)}: {match.group('args')}"
            try:
                fresh = render_blocks(match.group(0), root)
            except (OSError, ValueError, KeyError) as error:
                stale.append(f"{where} ({error})")
                continue
            if fresh != match.group(0):
                stale.append(where)
    return stale


def commit_of(result: dict[str, Any]) -> str:
    """The commit a run recorded: ``environment.commit`` (``<sha>[+dirty]``); records of the
    branch that introduced tie-safe ranking kept it as ``code: {commit, dirty}``."""
    commit = (result.get("environment") or {}).get("commit")
    if commit:
        return str(commit)
    code = result.get("code") or {}
    return f"{code.get('commit')}{'+dirty' if code.get('dirty') else ''}"


def provenance(folder: Path) -> dict[str, Any]:
    """The code and spec behind a benchmark folder's runs, from the run records themselves."""
    from recbole_vlm4rec.benchmark.grid import record_path
    from recbole_vlm4rec.benchmark.report_data import load_report
    from recbole_vlm4rec.benchmark.spec import Cell

    report = load_report(folder)  # the records the report shows, nothing stale
    code, runs = {}, []
    for record in (r for labels in report.datasets.values() for s in labels.values()
                   for r in s.records):
        path = record_path(folder, Cell.from_json(record["cell"]))
        result = record.get("result") or {}
        key = commit_of(result)
        code[key] = code.get(key, 0) + 1
        runs.append({"record": str(path.relative_to(folder)), "status": record["status"],
                     "cell_key": record["cell"]["key"],
                     "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    spec = folder / "spec.yaml"
    return {"published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source_folder": folder.resolve().name,  # its name: no machine path in the docs
            "spec_sha256": hashlib.sha256(spec.read_bytes()).hexdigest() if spec.is_file() else None,
            "code_versions": code, "runs": runs}


def publish(folder: str | Path, destination: str | Path, root: Path | None = None) -> list[Path]:
    """Copy a benchmark folder's report under ``destination`` and refresh the doc tables citing
    its summary. Returns the files written or changed."""
    folder, destination = Path(folder), Path(destination)
    root = root or checkout_root()
    destination.mkdir(parents=True, exist_ok=True)
    written = []
    for name in COPIED:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, destination / name)
            written.append(destination / name)
    if (folder / "plots").is_dir():
        shutil.copytree(folder / "plots", destination / "plots", dirs_exist_ok=True)
    atomic_write_text(destination / "provenance.json",
                      json.dumps(provenance(folder), indent=1, sort_keys=True))
    written.append(destination / "provenance.json")
    summary = destination / "summary.csv"
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        fresh = render_blocks(text, root, only=summary)
        if fresh != text:
            atomic_write_text(path, fresh)
            written.append(path)
    return written
