"""Report plots (matplotlib, Agg backend: no display needed).

Per dataset, in ``<folder>/plots/``:

``<dataset>-metrics.png``          grouped bars: one group per metric, one bar per model, error
                                   bars = std over seeds
``<dataset>-quality-vs-time.png``  the first metric against mean test-evaluation seconds (log x),
                                   error bars = std over seeds, one labelled point per model
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from recbole_vlm4rec.benchmark.spec import safe_name  # noqa: E402

if TYPE_CHECKING:
    from recbole_vlm4rec.benchmark.report import Report


def write_plots(report: "Report") -> list[Path]:
    folder = report.folder / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset, summaries in report.datasets.items():
        ok = {label: s for label, s in summaries.items() if s.ok}
        if not ok or not report.metrics:
            continue
        stem = folder / safe_name(dataset)
        written.append(_metric_bars(dataset, ok, report.metrics, Path(f"{stem}-metrics.png")))
        written.append(_quality_vs_time(dataset, ok, report.metrics[0],
                                        Path(f"{stem}-quality-vs-time.png")))
    return written


def _metric_bars(dataset: str, summaries: dict, metrics: list[str], path: Path) -> Path:
    labels = list(summaries)
    width = 0.8 / len(labels)
    positions = np.arange(len(metrics))
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(metrics) * max(1, len(labels) / 3)), 4))
    for index, label in enumerate(labels):
        values = [summaries[label].metric(m) for m in metrics]
        means = [0.0 if math.isnan(v[0]) else v[0] for v in values]
        stds = [0.0 if math.isnan(v[1]) else v[1] for v in values]
        axes.bar(positions + (index - (len(labels) - 1) / 2) * width, means, width, yerr=stds,
                 capsize=2, label=label)
    axes.set_xticks(positions, metrics)
    axes.set_ylabel("test value (mean ± std over seeds)")
    axes.set_title(f"{dataset}: test metrics")
    axes.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _quality_vs_time(dataset: str, summaries: dict, metric: str, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, summary in summaries.items():
        seconds = [r["result"]["seconds"]["test"] for r in summary.ok]
        mean, std = summary.metric(metric)
        if math.isnan(mean):
            continue
        x = max(float(np.mean(seconds)), 1e-3)
        axes.errorbar([x], [mean], yerr=[std], xerr=[float(np.std(seconds))], fmt="o", capsize=3)
        axes.annotate(label, (x, mean), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("test evaluation seconds (full ranking, mean over seeds)")
    axes.set_ylabel(metric)
    axes.set_title(f"{dataset}: {metric} vs evaluation time")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
