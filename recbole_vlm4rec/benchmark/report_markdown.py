"""``report.md``: per dataset a table (mean ± std, best per column in bold, ▲/▼ where the
difference to the reference is significant, † / ‡ on models whose training was capped / flagged as
possibly undertrained, with footnotes naming why), the paired tests, skipped/failed cells with
their reasons, the tuning searches and the plots."""

from __future__ import annotations

import math

from recbole_vlm4rec.benchmark.report_data import (
    BETTER,
    CAPPED,
    UNDERTRAINED,
    WORSE,
    ModelSummary,
    Report,
    settings_text,
    training_notes,
)
from recbole_vlm4rec.benchmark.spec import safe_name
from recbole_vlm4rec.benchmark.tune import tuning_markdown


def training_marks(summary: ModelSummary) -> str:
    """`` †``, `` ‡`` or both after a label: some runs capped / flagged as undertrained."""
    return (f" {CAPPED}" if summary.capped else "") + (
        f" {UNDERTRAINED}" if summary.undertrained else "")


def label_lines(report: Report) -> list[str]:
    """Which model and settings each label runs (one label, one model: the labels are names)."""
    lines = ["", "| label | model | settings |", "|---|---|---|"]
    for label, (model, settings) in report.label_models().items():
        lines.append(f"| {label} | {model} | {settings_text(settings)} |")
    return lines


def significance_marker(report: Report, dataset: str, metric: str, label: str) -> str:
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
                row.append(text + significance_marker(report, dataset, metric, label))
            row[0] += training_marks(summary)
            row += [f"{summary.seconds('fit'):.1f}", f"{summary.seconds('test'):.2f}",
                    f"{summary.peak_rss_mb():.0f}", runs]
            lines.append("| " + " | ".join(row) + " |")
        lines += [line for note in training_notes(summaries) for line in ("", note)]
        lines += _significance_lines(report, dataset)
        problems = [(label, s) for label, s in summaries.items() if s.reasons]
        if problems:
            lines += ["", "Not run or failed:", ""]
            lines += [f"- {label}: {'; '.join(s.reasons)}" for label, s in problems]
        if report.tuning:
            lines += tuning_markdown(report.tuning, dataset)
        lines += ["", f"![metrics](plots/{safe_name(dataset)}-metrics.png)",
                  f"![quality vs eval time](plots/{safe_name(dataset)}-quality-vs-time.png)"]
        for stem, alt in (("activity", "recall by user activity"),
                          ("cold-vs-warm", "cold vs warm")):
            if (report.folder / "plots" / f"{safe_name(dataset)}-{stem}.png").is_file():
                lines.append(f"![{alt}](plots/{safe_name(dataset)}-{stem}.png)")
    lines += ["", "## Models", "", "What each label runs: the model and the settings its spec entry "
              "gives (the protocol and the spec's overrides apply to every label)."]
    lines += label_lines(report)
    # Not a link: published copies of report.md (docs/results/) leave report.html behind.
    lines += ["", "Examples (training items and each model's top-10 for a few test users), "
              "plots and how the run was made: report.html, beside report.md in the benchmark "
              "folder."]
    return "\n".join(lines) + "\n"


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
