"""The report's CSV files.

``summary.csv``       one row per (dataset, model): status, runs, runs whose epochs were capped,
                      runs flagged as possibly undertrained (and why), mean and std per metric over
                      seeds, train / eval seconds (means), peak RSS MB (max)
``runs.csv``          one row per cell record: status, reason, seed, every test metric, timings,
                      epochs run / epochs (the cap), whether training was capped, and the
                      undertraining flag's reason (empty when not flagged)
``significance.csv``  per (dataset, metric, model): paired tests vs the reference on per-user
                      values, raw and Holm-corrected p-values
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from recbole_vlm4rec.benchmark.report_data import Report, undertrained_flag


def csv_text(rows: list[dict[str, Any]]) -> str:
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
                                   "runs_capped": len(summary.capped),
                                   "runs_undertrained": len(summary.undertrained),
                                   "undertrained_reasons": ";".join(
                                       summary.undertrained_reasons())}
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
                flag = undertrained_flag(record)
                row["undertrained"] = flag["reason"] if flag else ""
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
