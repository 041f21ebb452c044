"""Report plots (matplotlib, Agg backend: no display needed).

Per dataset, in ``<folder>/plots/``:

``<dataset>-metrics.png``          grouped bars: one group per metric, one bar per model, error
                                   bars = std over seeds; models without results stay in the
                                   legend, marked with their status
``<dataset>-quality-vs-time.png``  the first metric against mean test-evaluation seconds (log x),
                                   error bars = std over seeds, one labelled point per model
``<dataset>-activity.png``         Recall@20 per user-activity bucket (breakdowns.py), when the
                                   records hold training counts per user
``<dataset>-cold-vs-warm.png``     the first metric of warm / cold-start label pairs, when run

Each label keeps one colour and one marker in every plot of a report (``model_styles``): no two
labels share a colour (up to 60 labels) or a marker (up to 21), and no two share both.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from recbole_vlm4rec.benchmark.breakdowns import (  # noqa: E402
    Buckets,
    ColdWarmPair,
    activity_buckets,
    cold_warm_pairs,
)
from recbole_vlm4rec.benchmark.spec import safe_name  # noqa: E402

if TYPE_CHECKING:
    from recbole_vlm4rec.benchmark.report_data import Report

# Strong hues first (tab10), then their light variants, then tab20b / tab20c: 60 distinct colours.
_COLOURS = [matplotlib.colors.to_hex(c) for c in (
    list(matplotlib.colormaps["tab10"].colors) + list(matplotlib.colormaps["tab20"].colors[1::2])
    + list(matplotlib.colormaps["tab20b"].colors) + list(matplotlib.colormaps["tab20c"].colors))]
_COLOURS = list(dict.fromkeys(_COLOURS))
# Filled markers first, then line markers: 21 distinct shapes.
_MARKERS = ["o", "s", "D", "^", "v", "P", "X", "*", "<", ">", "p", "h", "8", "d", "H",
            "+", "x", "1", "2", "3", "4"]


def model_styles(labels: list[str]) -> dict[str, tuple[str, str]]:
    """``label -> (colour, marker)``, by position: no two labels share a colour (beyond the
    palette: evenly spaced hues) and no two share both colour and marker."""
    styles = {}
    for index, label in enumerate(dict.fromkeys(labels)):
        if index < len(_COLOURS):
            colour = _COLOURS[index]
        else:  # golden-ratio hue steps never repeat a hue
            hue = (index * 0.618033988749895) % 1.0
            colour = matplotlib.colors.to_hex(matplotlib.colors.hsv_to_rgb((hue, 0.75, 0.8)))
        styles[label] = (colour, _MARKERS[index % len(_MARKERS)])
    return styles


def write_plots(report: "Report") -> list[Path]:
    folder = report.folder / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    # one style per label across the whole report, in table order
    styles = model_styles([label for summaries in report.datasets.values()
                           for label in summaries])
    for dataset, summaries in report.datasets.items():
        ok = {label: s for label, s in summaries.items() if s.ok}
        if not ok or not report.metrics:
            continue
        stem = folder / safe_name(dataset)
        written.append(_metric_bars(dataset, summaries, report.metrics, styles,
                                    Path(f"{stem}-metrics.png")))
        written.append(_quality_vs_time(dataset, ok, report.metrics[0], styles,
                                        Path(f"{stem}-quality-vs-time.png")))
        buckets = activity_buckets(ok, report.metrics)
        if buckets is not None:
            written.append(_activity_bars(dataset, buckets, styles,
                                          Path(f"{stem}-activity.png")))
        pairs = cold_warm_pairs(ok, report.metrics[0])
        if pairs:
            written.append(_cold_warm_bars(dataset, pairs, report.metrics[0],
                                           Path(f"{stem}-cold-vs-warm.png")))
    return written


def _spread(summary, metric: str) -> tuple[float, float]:
    """Mean and std over seeds; std NaN (no error bar) from a single run, which has no spread."""
    mean, std = summary.metric(metric)
    return mean, std if len(summary.ok) > 1 else math.nan


def _legend_below(axes, handles=None, n: int = 1) -> None:
    axes.legend(handles=handles, fontsize="small", loc="upper center", frameon=False,
                bbox_to_anchor=(0.5, -0.16), ncol=min(3, max(n, 1)))


def _save(figure, path: Path) -> Path:
    figure.savefig(path, dpi=110, bbox_inches="tight")  # keeps the legend under the axes
    plt.close(figure)
    return path


def _grouped_bars(axes, groups: list[str], series: dict[str, list[tuple[float, float]]],
                  styles: dict[str, tuple[str, str]] | None = None) -> None:
    """One bar per series in each group (coloured by ``styles`` when given); error bars only
    where the std is a number."""
    width = 0.8 / max(len(series), 1)
    positions = np.arange(len(groups))
    for index, (label, values) in enumerate(series.items()):
        x = positions + (index - (len(series) - 1) / 2) * width
        means = np.array([0.0 if math.isnan(m) else m for m, _ in values])
        stds = np.array([s for _, s in values], dtype=float)
        colour = styles[label][0] if styles and label in styles else None
        axes.bar(x, means, width, label=label, color=colour)
        shown = ~np.isnan(stds)
        if shown.any():
            axes.errorbar(x[shown], means[shown], yerr=stds[shown], fmt="none", capsize=2,
                          ecolor="black", elinewidth=1)
    axes.set_xticks(positions, groups)


def _metric_bars(dataset: str, all_summaries: dict, metrics: list[str],
                 styles: dict[str, tuple[str, str]], path: Path) -> Path:
    summaries = {label: s for label, s in all_summaries.items() if s.ok}
    figure, axes = plt.subplots(figsize=(7.0, 4.0))
    _grouped_bars(axes, metrics, {label: [_spread(s, m) for m in metrics]
                                  for label, s in summaries.items()}, styles)
    handles, _ = axes.get_legend_handles_labels()
    handles += [Patch(facecolor="white", edgecolor="grey", hatch="//",  # a missing bar says why
                      label=f"{label}: {summary.status}, no result")
                for label, summary in all_summaries.items() if not summary.ok]
    axes.set_ylabel("test value (mean ± std over seeds)")
    axes.set_title(f"{dataset}: test metrics")
    _legend_below(axes, handles, len(handles))
    return _save(figure, path)


def _quality_vs_time(dataset: str, summaries: dict, metric: str,
                     styles: dict[str, tuple[str, str]], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7.0, 4.0))
    for label, summary in summaries.items():
        seconds = [r["result"]["seconds"]["test"] for r in summary.ok]
        mean, std = _spread(summary, metric)
        if math.isnan(mean):
            continue
        spread = len(seconds) > 1
        axes.errorbar([max(float(np.mean(seconds)), 1e-3)], [mean],
                      yerr=[std] if spread else None,
                      xerr=[float(np.std(seconds))] if spread else None,
                      fmt=styles[label][1], color=styles[label][0], capsize=3, label=label)
    axes.set_xscale("log")
    axes.set_xlabel("test evaluation seconds (full ranking, mean over seeds)")
    axes.set_ylabel(metric)
    axes.set_title(f"{dataset}: {metric} vs evaluation time")
    _legend_below(axes, n=len(summaries))
    axes.legend_.set_bbox_to_anchor((0.5, -0.2))
    return _save(figure, path)


def _activity_bars(dataset: str, buckets: Buckets, styles: dict[str, tuple[str, str]],
                   path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7.0, 4.0))
    groups = [f"{name}\n{n} test users" for name, n in zip(buckets.names, buckets.users)]
    _grouped_bars(axes, groups, buckets.values, styles)
    axes.set_xlabel("training interactions per user (tertiles)")
    axes.set_ylabel(f"{buckets.metric} (mean over users; ± std over seeds)")
    axes.set_title(f"{dataset}: {buckets.metric} by user activity")
    _legend_below(axes, n=len(buckets.values))
    axes.legend_.set_bbox_to_anchor((0.5, -0.25))
    return _save(figure, path)


def _cold_warm_bars(dataset: str, pairs: list[ColdWarmPair], metric: str, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7.0, 4.0))
    _grouped_bars(axes, [p.label for p in pairs], {"warm (normal split)": [p.warm for p in pairs],
                                                   "cold-start items": [p.cold for p in pairs]})
    axes.set_ylabel(f"{metric} (mean ± std over seeds)")
    axes.set_title(f"{dataset}: {metric}, warm vs item cold-start")
    _legend_below(axes, n=2)
    return _save(figure, path)
