"""docs/performance.md's scaling table and docs/images/scale.png from bench_scale.py's results JSON
(``python benchmarks/bench_scale.py report``; nothing is measured here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

BEGIN, END = "<!-- scale-table:begin -->", "<!-- scale-table:end -->"
ESTIMATE = re.compile(r"estimated peak ([\d.]+) GB")


def scale_items(record: dict[str, Any]) -> int:
    return int(record.get("dataset", {}).get("items") or 0)


def phase_seconds(record: dict[str, Any], phase: str) -> tuple[float | None, bool]:
    """(seconds, projected) of a phase: measured, or projected from the batches that ran."""
    found = record.get("phases", {}).get(phase)
    if not found:
        return None, False
    if found.get("complete", True):
        return float(found["s"]), False
    if "projected_s" in found:
        return float(found["projected_s"]), True
    return None, False


def fit_seconds(record: dict[str, Any]) -> tuple[float | None, bool]:
    """Build + one epoch (for a model that does not train: build + RecBole's one pass)."""
    build, _ = phase_seconds(record, "build")
    epoch, projected = phase_seconds(record, "epoch")
    if build is None or epoch is None:
        return None, False
    return build + epoch, projected


def _cell(value: float | None, projected: bool = False, digits: int = 1) -> str:
    if value is None:
        return "-"
    text = f"{value:,.{digits}f}"
    return f"~{text}" if projected else text


def estimate_gb(record: dict[str, Any]) -> float | None:
    for note in record.get("phases", {}).get("check", {}).get("notes", []):
        found = ESTIMATE.search(note)
        if found:
            return float(found.group(1))
    refused = record.get("phases", {}).get("check", {}).get("refused", "")
    found = re.search(r"needs about ([\d.]+) GB", refused)
    return float(found.group(1)) if found else None


def table(records: list[dict[str, Any]]) -> str:
    lines = []
    scales = sorted({r["scale"] for r in records}, key=lambda s: (
        "@" in s, min((scale_items(r) for r in records if r["scale"] == s), default=0)))
    for scale in scales:
        rows = [r for r in records if r["scale"] == scale]
        prepare = next((r for r in rows if r["model"] == "(prepare)"), None)
        counts = (prepare or rows[0]).get("dataset", {})
        head = (f"**{scale}**: {counts.get('users', 0):,} users x {counts.get('items', 0):,} "
                f"items, {counts.get('interactions', 0):,} interactions")
        if prepare:
            head += (f"; `vlm4rec prepare mmrec` {prepare['phases']['prepare']['s']:.0f} s, peak "
                     f"{prepare['peak_rss_gb']:.2f} GB")
        lines += ["", head, "",
                  "| model | check s | load s | build s | epoch s | fit s | eval s | peak RSS GB "
                  "| estimate GB | outcome |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            if r["model"] == "(prepare)":
                continue
            trained = r.get("phases", {}).get("epoch", {}).get("trained", True)
            epoch, epoch_projected = phase_seconds(r, "epoch")
            fit, fit_projected = fit_seconds(r)
            evaluation, eval_projected = phase_seconds(r, "eval")
            outcome = r["outcome"]
            refused = r.get("phases", {}).get("check", {}).get("refused")
            if refused:
                # the estimate has its own column; the message's end is the setting that fixes it
                outcome = "refused before loading; " + refused.rsplit("): ", 1)[-1]
            lines.append(
                f"| {r['model']} | {_cell(phase_seconds(r, 'check')[0], digits=2)} | "
                f"{_cell(phase_seconds(r, 'load')[0])} | {_cell(phase_seconds(r, 'build')[0])} | "
                f"{_cell(epoch, epoch_projected) if trained else '(one pass)'} | "
                f"{_cell(fit, fit_projected)} | {_cell(evaluation, eval_projected)} | "
                f"{r['peak_rss_gb']:.2f} | {_cell(estimate_gb(r), digits=2)} | {outcome} |")
    return "\n".join(lines)


def _costs(record: dict[str, Any]) -> list[float | None]:
    """(fit seconds, evaluation seconds, peak RSS GB) of a finished cell."""
    return [fit_seconds(record)[0], phase_seconds(record, "eval")[0], record["peak_rss_gb"]]


def exponents(records: list[dict[str, Any]]) -> str:
    """Least-squares slopes of log(cost) on log(|I|) over the diagonal scales (users and
    interactions grow with the catalogue there, so the slope is also the one in interactions)."""
    lines = ["| model | fit time ~ \\|I\\|^a | eval time ~ \\|I\\|^b | peak RSS ~ \\|I\\|^c | scales |",
             "|---|---:|---:|---:|---|"]
    for model in _models(records):
        rows = _diagonal(records, model)
        if len({r["scale"] for r in rows}) < 2:
            continue
        slopes = _diagonal_slopes(rows)
        lines.append(f"| {model} | {slopes[0]} | {slopes[1]} | {slopes[2]} | "
                     f"{', '.join(r['scale'] for r in rows)} |")
    return "\n".join(lines)


def _models(records: list[dict[str, Any]]) -> list[str]:
    return [m for m in dict.fromkeys(r["model"] for r in records) if m != "(prepare)"]


def _diagonal(records: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """The model's finished cells on the diagonal scales (not ``@``), smallest catalogue first."""
    return sorted((r for r in records if r["model"] == model and "@" not in r["scale"]
                   and r["outcome"] == "ok"), key=scale_items)


def _diagonal_slopes(rows: list[dict[str, Any]]) -> list[str]:
    """Slopes of each of :func:`_costs` on log |I| over ``rows``."""
    items = [scale_items(r) for r in rows]
    return [_slope([(x, y) for x, y in zip(items, values) if y])
            for values in zip(*(_costs(r) for r in rows))]


def interaction_exponents(records: list[dict[str, Any]], base: str = "10k",
                          denser: str = "10k@3M") -> str:
    """Slopes in the interactions at a fixed catalogue (``base`` against ``denser``: same items,
    more users and interactions), and what is left for the catalogue at fixed interactions:
    with cost ~ |I|^x N^y and N growing with |I| on the diagonal, x = diagonal slope - y."""
    def finished(model: str, scale: str) -> dict[str, Any] | None:
        return next((r for r in records if (r["model"], r["scale"]) == (model, scale)
                     and r["outcome"] == "ok"), None)

    lines = [f"| model | fit time ~ N^y | eval time ~ N^y | peak RSS ~ N^y | fit time ~ \\|I\\|^x at "
             f"fixed N | eval time ~ \\|I\\|^x at fixed N |", "|---|---:|---:|---:|---:|---:|"]
    for model in _models(records):
        low, high = finished(model, base), finished(model, denser)
        if not (low and high):
            continue
        sizes = [r.get("dataset", {}).get("interactions") or 0 for r in (low, high)]
        in_interactions = [_slope([(n, c) for n, c in zip(sizes, pair) if c])
                           for pair in zip(_costs(low), _costs(high))]
        diagonal = _diagonal_slopes(_diagonal(records, model))
        left = ["-" if "-" in (total, part) else f"{float(total) - float(part):.2f}"
                for total, part in zip(diagonal[:2], in_interactions[:2])]
        lines.append(f"| {model} | {' | '.join(in_interactions)} | {left[0]} | {left[1]} |")
    return "\n".join(lines) if len(lines) > 2 else f"(no model has both {base} and {denser} cells)"


def _slope(pairs: list[tuple[float, float]]) -> str:
    if len(pairs) < 2:
        return "-"
    x = np.log([p[0] for p in pairs])
    y = np.log([p[1] for p in pairs])
    return f"{np.polyfit(x, y, 1)[0]:.2f}"


def plot(records: list[dict[str, Any]], path: Path) -> None:
    figure, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for index, model in enumerate(_models(records)):
        rows = sorted((r for r in records if r["model"] == model and "@" not in r["scale"]),
                      key=scale_items)
        # 20 colours; tab20's neighbours share a hue, so every other model is dashed
        colour, style = plt.cm.tab20(index % 20), "--" if index % 2 else "-"
        for axis, value in zip(axes, (fit_seconds, lambda r: phase_seconds(r, "eval"),
                                      lambda r: (r["peak_rss_gb"], False))):
            points = [(scale_items(r), *value(r)) for r in rows
                      if value(r)[0] and not r.get("phases", {}).get("check", {}).get("refused")]
            if not points:
                continue
            xs, ys, projected = zip(*points)
            axis.plot(xs, ys, style, color=colour, label=model, linewidth=1.2)
            for x, y, guess in points:
                axis.plot(x, y, "o", color=colour, markerfacecolor="white" if guess else colour)
    titles = ("build + one epoch (s)", "one full-ranking evaluation (s)", "peak RSS (GB)")
    for axis, title in zip(axes, titles):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("items |I| (users = 2 |I|, interactions ~ 100 |I|)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    labelled = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            labelled.setdefault(label, handle)
    figure.legend(labelled.values(), labelled.keys(), loc="center right", fontsize=7)
    figure.suptitle("bench_scale.py: hollow markers = projected from the batches run in the limit")
    figure.tight_layout(rect=(0, 0, 0.86, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(records: list[dict[str, Any]], doc: Path, image: Path) -> None:
    """Replace the text between the markers of ``doc`` and write ``image``."""
    text = doc.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} has no {BEGIN} ... {END} markers")
    environments = sorted({(r.get("commit", "?"), r.get("machine", "?"), r.get("threads", "?"),
                            r.get("date", "?")) for r in records if r["model"] != "(prepare)"})
    provenance = "\n".join(f"- commit `{c}`, {m}, torch threads {t}, {d}"
                           for c, m, t, d in environments)
    body = (f"{BEGIN}\n<!-- generated by `python benchmarks/bench_scale.py report` from "
            f"docs/results/scale.json: edit neither by hand -->\n\nMeasured on:\n\n{provenance}\n"
            f"{table(records)}\n\nCost exponents (least-squares slope of log cost on log |I| over "
            f"the scales where the cell finished; `~` projected figures included):\n\n"
            f"{exponents(records)}\n\nIn the interactions N at a fixed catalogue (10k items: the "
            f"10k row against 10k@3M; users grow with N, 50 interactions each, so evaluation "
            f"ranks 3x the users), and the catalogue's share at fixed N (the diagonal slope above "
            f"minus the one in N):\n\n{interaction_exponents(records)}\n\n![scaling plot](images/{image.name})\n{END}")
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    doc.write_text(text[:start] + body + text[stop:], encoding="utf-8")
    plot(records, image)
