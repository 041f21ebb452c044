"""Build a benchmark's report from its run records, without rerunning anything.

Reads ``<folder>/spec.yaml`` and ``<folder>/runs/**/*.json`` (see grid.py, cell.py); writes:

``summary.csv``       one row per (dataset, model): status, runs, runs whose epochs were capped,
                      mean and std per metric over seeds, train / eval seconds (means), peak RSS
                      MB (max)
``runs.csv``          one row per cell record: status, reason, seed, every test metric, timings,
                      epochs run / epochs (the cap) and whether training was capped
``significance.csv``  per (dataset, metric, model): paired tests vs the reference on per-user
                      values, raw and Holm-corrected p-values
``report.md``         per dataset a table (mean ± std, best per column in bold, a marker where the
                      difference to the reference is significant, † on models whose training ended
                      at the epochs limit rather than by early stopping), the tests,
                      skipped/failed cells with their reasons, and the plots
``plots/*.png``       see plots.py
``report.html``       one self-contained page: the table, the plots, qualitative examples (a few
                      test users' training items and each model's top-10 with thumbnails and
                      descriptions) and how the run was made; see html_report.py
``tuning.csv``        (a ``vlm4rec tune`` folder) one row per trial: settings, validation metric;
                      report.md then also shows each model's search, trials and choice
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recbole_vlm4rec.benchmark.cell import read_record
from recbole_vlm4rec.benchmark.spec import load_spec
from recbole_vlm4rec.benchmark.stats import PairedTest, compare_to_reference
from recbole_vlm4rec.benchmark.tune import read_tuning, tuning_markdown, tuning_rows
from recbole_vlm4rec.formats.files import atomic_write_text

BETTER, WORSE = "▲", "▼"
CAPPED = "†"


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
        return sorted({r["reason"] for r in self.records if r["status"] != "ok" and r["reason"]})

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
                    seeds=list(spec.seeds) if spec else None, tuning=tuning)
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


def _significance_marker(report: Report, dataset: str, metric: str, label: str) -> str:
    test = report.tests.get((dataset, metric), {}).get(label)
    if test is None or not (test.t_p_holm < report.alpha and test.wilcoxon_p_holm < report.alpha):
        return ""
    return BETTER if test.mean_difference > 0 else WORSE


def markdown(report: Report) -> str:
    lines = [f"# Benchmark report: {report.folder.name}", ""]
    lines.append(
        f"Test metrics, mean ± std over seeds (RecBole full ranking). **Bold**: best per column. "
        f"{BETTER}/{WORSE}: significantly better/worse than the reference on per-user values "
        f"(paired t-test and Wilcoxon both, Holm-corrected, α = {report.alpha})."
    )
    for dataset, summaries in report.datasets.items():
        reference = report.references.get(dataset)
        lines += ["", f"## {dataset}", "",
                  f"Reference: {reference or 'none with results (no significance tests)'}", ""]
        header = ["model", *report.metrics, "train s", "eval s", "peak MB", "runs"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        best = {m: max((s.metric(m)[0] for s in summaries.values() if s.ok), default=math.nan)
                for m in report.metrics}
        for label, summary in summaries.items():
            runs = f"{len(summary.ok)}/{report.n_seeds or len(summary.records)}"
            if not summary.ok:
                cells = [f"{summary.status}"] + ["-"] * (len(header) - 3)
                lines.append(f"| {label} | " + " | ".join(cells) + f" | {runs} |")
                continue
            row = [label + (" (ref)" if label == reference else "")]
            for metric in report.metrics:
                mean, std = summary.metric(metric)
                if math.isnan(mean):
                    text = "-"
                else:  # one seed has no spread to report: "± 0.0000" would claim one
                    text = f"{mean:.4f}" + (f" ± {std:.4f}" if len(summary.ok) > 1 else "")
                if not math.isnan(mean) and math.isclose(mean, best[metric], abs_tol=1e-12):
                    text = f"**{text}**"
                row.append(text + _significance_marker(report, dataset, metric, label))
            if summary.capped:
                row[0] += f" {CAPPED}"
            row += [f"{summary.seconds('fit'):.1f}", f"{summary.seconds('test'):.2f}",
                    f"{summary.peak_rss_mb():.0f}", runs]
            lines.append("| " + " | ".join(row) + " |")
        lines += _capped_lines(summaries)
        lines += _significance_lines(report, dataset)
        problems = [(label, s) for label, s in summaries.items() if s.reasons]
        if problems:
            lines += ["", "Not run or failed:", ""]
            lines += [f"- {label}: {'; '.join(s.reasons)}" for label, s in problems]
        if report.tuning:
            lines += tuning_markdown(report.tuning, dataset)
        lines += ["", f"![metrics](plots/{_plot_stem(dataset)}-metrics.png)",
                  f"![quality vs eval time](plots/{_plot_stem(dataset)}-quality-vs-time.png)"]
        for stem, alt in (("activity", "recall by user activity"),
                          ("cold-vs-warm", "cold vs warm")):
            if (report.folder / "plots" / f"{_plot_stem(dataset)}-{stem}.png").is_file():
                lines.append(f"![{alt}](plots/{_plot_stem(dataset)}-{stem}.png)")
    lines += ["", "Examples (training items and each model's top-10 for a few test users), "
              "plots and how the run was made: [report.html](report.html)."]
    return "\n".join(lines) + "\n"


def _capped_lines(summaries: dict[str, ModelSummary]) -> list[str]:
    capped = [(label, s) for label, s in summaries.items() if s.capped]
    if not capped:
        return []
    parts = []
    for label, summary in capped:
        limits = sorted({r["result"]["training"]["epochs"] for r in summary.capped})
        parts.append(f"{label} ({len(summary.capped)}/{len(summary.ok)} runs, limit "
                     f"{', '.join(map(str, limits))} epochs)")
    return ["", f"{CAPPED} epochs capped: training ended at the epochs limit before early "
            f"stopping, so these models may be under-trained: {'; '.join(parts)}. Rerun with "
            "more epochs (no --max-epochs) for final numbers."]


def _significance_lines(report: Report, dataset: str) -> list[str]:
    rows = [(metric, label, test) for (d, metric), tests in report.tests.items() if d == dataset
            for label, test in tests.items()]
    if not rows:
        return []
    lines = ["", f"Paired tests vs {report.references[dataset]} (p-values Holm-corrected over "
             "models per metric):", "",
             "| metric | model | users | mean diff | t-test p | Wilcoxon p |", "|---|---|---|---|---|---|"]
    for metric, label, test in rows:
        lines.append(f"| {metric} | {label} | {test.n_users} | {test.mean_difference:+.4f} | "
                     f"{_p(test.t_p_holm)} | {_p(test.wilcoxon_p_holm)} |")
    return lines


def _p(value: float) -> str:
    return "-" if math.isnan(value) else (f"{value:.2e}" if value < 1e-3 else f"{value:.3f}")


def _plot_stem(dataset: str) -> str:
    from recbole_vlm4rec.benchmark.spec import safe_name

    return safe_name(dataset)


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def summary_rows(report: Report) -> list[dict[str, Any]]:
    rows = []
    for dataset, summaries in report.datasets.items():
        for label, summary in summaries.items():
            row: dict[str, Any] = {"dataset": dataset, "model": label, "class": summary.model,
                                   "status": summary.status, "runs_ok": len(summary.ok),
                                   "runs": len(summary.records),
                                   "runs_capped": len(summary.capped)}
            for metric in report.metrics:
                mean, std = summary.metric(metric)
                row[f"{metric}_mean"], row[f"{metric}_std"] = _num(mean), _num(std)
            row["train_s"] = _num(summary.seconds("fit"))
            row["eval_s"] = _num(summary.seconds("test"))
            row["peak_rss_mb"] = _num(summary.peak_rss_mb())
            row["reason"] = "; ".join(summary.reasons)
            rows.append(row)
    return rows


def run_rows(report: Report) -> list[dict[str, Any]]:
    rows = []
    for summaries in report.datasets.values():
        for summary in summaries.values():
            for record in summary.records:
                cell, result = record["cell"], record.get("result") or {}
                row = {"dataset": cell["dataset"], "model": cell["label"], "seed": cell["seed"],
                       "status": record["status"], "reason": record.get("reason") or ""}
                test = result.get("test_result", {})
                row.update({m: test.get(m, "") for m in report.metrics})
                row["train_s"] = result.get("seconds", {}).get("fit", "")
                row["eval_s"] = result.get("seconds", {}).get("test", "")
                training = result.get("training") or {}
                row["epochs_run"] = training.get("epochs_run", "")
                row["epochs"] = training.get("epochs", "")
                row["capped"] = training.get("capped", "")
                rows.append(row)
    return rows


def significance_rows(report: Report) -> list[dict[str, Any]]:
    return [{"dataset": dataset, "metric": metric, "model": label,
             "reference": report.references[dataset], "users": t.n_users,
             "mean_diff": _num(t.mean_difference), "t_p": _num(t.t_p),
             "t_p_holm": _num(t.t_p_holm), "wilcoxon_p": _num(t.wilcoxon_p),
             "wilcoxon_p_holm": _num(t.wilcoxon_p_holm)}
            for (dataset, metric), tests in report.tests.items() for label, t in tests.items()]


def _num(value: float) -> Any:
    return "" if math.isnan(value) else round(value, 6) if abs(value) >= 1e-6 else value


def write_report(folder: str | Path, example_models: list[str] | None = None,
                 example_users: int | None = None) -> list[Path]:
    """Rebuild every report file in ``folder``; returns the paths written."""
    from recbole_vlm4rec.benchmark.html_examples import DEFAULT_EXAMPLE_USERS
    from recbole_vlm4rec.benchmark.html_report import html_page
    from recbole_vlm4rec.benchmark.plots import write_plots

    report = load_report(folder)
    written = []
    outputs = {"summary.csv": _csv(summary_rows(report)), "runs.csv": _csv(run_rows(report)),
               "significance.csv": _csv(significance_rows(report)), "report.md": markdown(report)}
    if report.tuning:
        outputs["tuning.csv"] = _csv(tuning_rows(report.tuning))
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
