"""``report.html``: one self-contained page per benchmark (no network, no script).

Per dataset: the results table (mean ± std over seeds, best per column marked, ▲/▼ significance
vs the reference with the p-values on hover, skipped/failed models with their reason, capped-epoch
cells marked †), the plots (plots.py, embedded as PNG data URIs), and qualitative examples
(html_examples.py). Then how the run was made (html_provenance.py). Item thumbnails are embedded
JPEG data URIs, so the file can be mailed or opened from anywhere.
"""

from __future__ import annotations

import base64
import math
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from recbole_vlm4rec.benchmark.breakdowns import cold_start_note
from recbole_vlm4rec.benchmark.html_audit import audit_section
from recbole_vlm4rec.benchmark.catalogue import Catalogue
from recbole_vlm4rec.benchmark.html_examples import (
    DEFAULT_EXAMPLE_USERS,
    choose_examples,
    render_examples,
)
from recbole_vlm4rec.benchmark.html_provenance import dataset_section, run_section
from recbole_vlm4rec.benchmark.report_data import (
    BETTER,
    CAPPED,
    UNDERTRAINED,
    WORSE,
    ModelSummary,
    Report,
    settings_text,
    training_notes,
    undertrained_flag,
    undertrained_reason_text,
)
from recbole_vlm4rec.benchmark.spec import safe_name

PLOTS = (("metrics", "Test metrics, mean ± std over seeds"),
         ("activity", "Per-user-activity buckets: test users split at the tertiles of their "
                      "training interactions"),
         ("cold-vs-warm", "Warm vs item cold-start (labels that differ only in the cold-start "
                          "settings)"),
         ("quality-vs-time", "First metric vs test-evaluation seconds"))

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
 max-width:1240px;padding:0 18px 40px;color:#1d2330;background:#fff}
h1{margin:18px 0 4px}h2{border-bottom:2px solid #d8dde6;padding-bottom:4px;margin-top:34px}
h3{margin:18px 0 6px}h4{margin:10px 0 4px;font-size:13px;color:#3b4454}
nav a{margin-right:12px}.meta{color:#5b6474}.note{color:#8a4b00}
table{border-collapse:collapse;margin:8px 0}th,td{padding:4px 9px;border-bottom:1px solid #e3e7ee;
 text-align:right;vertical-align:top}th:first-child,td:first-child{text-align:left}
table.kv th{text-align:left;color:#3b4454;font-weight:600}table.kv td{text-align:left}
table.plain td,table.plain th{text-align:left}
tr.skipped td,tr.failed td,tr.missing td{color:#7a8291;background:#f7f8fa}
td.reason{text-align:left;font-style:italic}.best{font-weight:700;background:#e6f4ea}
small.model{color:#5b6474}.up{color:#137333}.down{color:#b3261e}.capped,.undertrained{color:#8a4b00}
figure.plot{display:inline-block;margin:8px 16px 8px 0;vertical-align:top}
figure.plot img{max-width:580px;border:1px solid #e3e7ee}
figure.plot figcaption{font-size:12px;color:#5b6474;max-width:580px}
.user{border:1px solid #d8dde6;border-radius:8px;padding:4px 12px 10px;margin:16px 0}
.cards{display:flex;gap:6px;overflow-x:auto;padding-bottom:4px}
figure.item{position:relative;flex:0 0 106px;box-sizing:border-box;margin:0;padding:4px;
 border:2px solid #e3e7ee;
 border-radius:6px;background:#fafbfc;font-size:11px}
figure.item.hit{border-color:#1e8e3e;background:#e6f4ea}
.thumb{display:block;width:94px;height:141px;object-fit:contain;margin:0 auto;background:#eef0f4}
.noimg{display:flex;align-items:center;justify-content:center;text-align:center;color:#7a8291;
 font-size:11px;border:1px dashed #b8bfcc;box-sizing:border-box}
.title{font-weight:600;margin-top:3px;overflow:hidden;display:-webkit-box;-webkit-line-clamp:2;
 -webkit-box-orient:vertical}.token{color:#7a8291}
.desc{color:#3b4454;overflow:hidden;display:-webkit-box;-webkit-line-clamp:4;
 -webkit-box-orient:vertical}.missing{color:#9aa1ad;font-style:italic}
.rank{position:absolute;top:2px;left:2px;background:#1d2330;color:#fff;border-radius:3px;
 padding:0 4px;font-size:10px}.hitmark{position:absolute;top:2px;right:2px;background:#1e8e3e;
 color:#fff;border-radius:3px;padding:0 4px;font-size:10px}
pre{background:#f5f6f8;padding:10px;overflow-x:auto;font-size:12px}
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _value_cell(report: Report, dataset: str, metric: str, summary: ModelSummary,
                best: float) -> str:
    mean, std = summary.metric(metric)
    if math.isnan(mean):
        return "<td>-</td>"
    text = f"{mean:.4f}" + (f" ± {std:.4f}" if len(summary.ok) > 1 else "")
    classes = "best" if math.isclose(mean, best, abs_tol=1e-12) else ""
    test = report.tests.get((dataset, metric), {}).get(summary.label)
    marker = ""
    if test is not None:
        title = (f"vs {report.references[dataset]}: mean diff {test.mean_difference:+.4f}, "
                 f"t-test p={test.t_p_holm:.2g}, Wilcoxon p={test.wilcoxon_p_holm:.2g} "
                 f"(Holm), {test.n_users} users")
        significant = test.t_p_holm < report.alpha and test.wilcoxon_p_holm < report.alpha
        if significant:
            up = test.mean_difference > 0
            marker = (f' <span class="{"up" if up else "down"}" title="{escape(title)}">'
                      f'{BETTER if up else WORSE}</span>')
        else:
            marker = f' <span class="ns" title="{escape(title)}">·</span>'
    elif reference := report.references.get(dataset):
        if summary.label != reference and (
                summary.cold_start != report.datasets[dataset][reference].cold_start):
            marker = (' <span class="ns" title="not tested: another protocol (item cold-start or '
                      'not) than the reference, so other test sets">·</span>')
    return f'<td class="{classes}">{text}{marker}</td>'


def _epochs_cell(summary: ModelSummary) -> str:
    trainings = [r["result"].get("training") or {} for r in summary.ok]
    if not trainings or not all(trainings):
        return "<td>-</td>"
    best = "/".join(str(t.get("best_epoch")) for t in trainings)
    run = "/".join(str(t.get("epochs_run")) for t in trainings)
    capped = sum(bool(t.get("capped")) for t in trainings)
    mark = (f' <span class="capped" title="{capped} of {len(trainings)} runs trained every '
            f'one of their {trainings[0].get("epochs")} epochs without early stopping">'
            f'{CAPPED}</span>') if capped else ""
    flags = [flag for r in summary.ok if (flag := undertrained_flag(r))]
    if flags:
        said = "; ".join(dict.fromkeys(
            undertrained_reason_text(f["reason"]) + (f" ({f['message']})" if f["message"] else "")
            for f in flags))
        mark += (f' <span class="undertrained" title="{len(flags)} of {len(trainings)} runs '
                 f'possibly undertrained: {escape(said)}">{UNDERTRAINED}</span>')
    return f"<td>{best} of {run}{mark}</td>"


def results_table(report: Report, dataset: str, summaries: dict[str, ModelSummary]) -> str:
    reference = report.references.get(dataset)
    head = ["model", *report.metrics, "best epoch of run", "train s", "eval s", "runs"]
    rows = ["<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    best = {m: max((s.metric(m)[0] for s in summaries.values() if s.ok), default=math.nan)
            for m in report.metrics}
    for label, summary in summaries.items():
        runs = f"{len(summary.ok)}/{report.n_seeds or len(summary.records)}"
        name = escape(label) + (" <small>(ref)</small>" if label == reference else "")
        settings = report.label_settings.get(label)
        name += (f'<br><small class="model" title="{escape(settings_text(settings))}">'
                 f"{escape(summary.model)}</small>")
        if not summary.ok:
            reason = "; ".join(summary.reasons) or summary.status
            rows.append(f'<tr class="{escape(summary.status)}" data-model="{escape(label)}">'
                        f"<td>{name}</td><td class=\"reason\" colspan=\"{len(head) - 2}\">"
                        f"{escape(summary.status)}: {escape(reason)}</td><td>{runs}</td></tr>")
            continue
        cells = [_value_cell(report, dataset, m, summary, best[m]) for m in report.metrics]
        cells += [_epochs_cell(summary), f"<td>{summary.seconds('fit'):.1f}</td>",
                  f"<td>{summary.seconds('test'):.2f}</td>", f"<td>{runs}</td>"]
        rows.append(f'<tr class="{escape(summary.status)}" data-model="{escape(label)}">'
                    f"<td>{name}</td>{''.join(cells)}</tr>")
        if summary.reasons:  # a partial model: some seeds failed
            rows.append(f'<tr class="failed"><td></td><td class="reason" '
                        f'colspan="{len(head) - 1}">other runs: '
                        f'{escape("; ".join(summary.reasons))}'
                        "</td></tr>")
    legend = (f"Test metrics, mean ± std over seeds (RecBole full ranking). Green: best per "
              f"column. {BETTER}/{WORSE}: significantly better/worse than the reference "
              f"({escape(reference or 'none with results')}) on per-user values, paired t-test "
              f"and Wilcoxon both, Holm-corrected, α = {report.alpha}; · not significant (hover "
              f"for p-values). {CAPPED}: training ran into the epoch cap without early stopping "
              f"(possibly under-trained). {UNDERTRAINED}: the run flagged itself as possibly "
              "undertrained (hover for why).")
    notes = "".join(f'<p class="note training">{escape(note)}</p>'
                    for note in training_notes(summaries))
    return f'<table class="results" data-dataset="{escape(dataset)}">{"".join(rows)}</table>' \
           f'<p class="meta">{legend}</p>{notes}'


def plots_block(report: Report, dataset: str) -> str:
    figures = []
    for stem, caption in PLOTS:
        path = report.folder / "plots" / f"{safe_name(dataset)}-{stem}.png"
        if path.is_file():
            figures.append(f'<figure class="plot"><img src="{_data_uri(path)}" '
                           f'alt="{escape(dataset)} {stem}"><figcaption>{escape(caption)}'
                           "</figcaption></figure>")
    note = cold_start_note(report.datasets[dataset])
    if not (report.folder / "plots" / f"{safe_name(dataset)}-activity.png").is_file():
        figures.append('<p class="note">No activity buckets: the records hold no per-user '
                       "training counts (made before they were recorded; rerun with --rerun).</p>")
    if note:
        figures.append(f"<p>{escape(note)}.</p>")
    return "\n".join(figures) or '<p class="note">No plots: no model has results.</p>'


def _description_features(summaries: dict[str, ModelSummary], labels: list[str]) -> list[str]:
    features: list[str] = []
    for label in labels:
        for record in summaries[label].ok[:1]:
            config = record["result"].get("config") or {}
            chosen = config.get("item_feature") or config.get("content_features") or []
            features += [chosen] if isinstance(chosen, str) else list(chosen)
    return list(dict.fromkeys(features + ["vlm"]))


def examples_block(report: Report, dataset: str, seeds: list[int] | None,
                   example_models: list[str] | None, example_users: int) -> str:
    summaries = report.datasets[dataset]
    choice = choose_examples(summaries, report.references.get(dataset), example_models,
                             example_users, seeds,
                             report.metrics[0] if report.metrics else None)
    if choice is None:
        return ('<p class="note">No examples: no ok run recorded top-k lists (records made '
                "before they were kept: rerun with --rerun).</p>")
    record = summaries[choice.labels[0]].ok[0]
    folder = (record["result"].get("config") or {}).get("data_path") or ""
    catalogue = Catalogue(folder, dataset, _description_features(summaries, choice.labels))
    return render_examples(choice, catalogue)


def html_page(report: Report, seeds: list[int] | None = None,
              example_models: list[str] | None = None,
              example_users: int = DEFAULT_EXAMPLE_USERS) -> str:
    name = escape(report.folder.name)
    statuses = [r["status"] for summaries in report.datasets.values()
                for summary in summaries.values() for r in summary.records]
    counts = ", ".join(f"{statuses.count(k)} {k}" for k in ("ok", "skipped", "failed")
                       if statuses.count(k))
    nav = " ".join(f'<a href="#ds-{safe_name(d)}">{escape(d)}</a>' for d in report.datasets)
    parts = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Benchmark: '
             f'{name}</title><meta name="viewport" content="width=device-width">'
             f"<style>{STYLE}</style></head><body>",
             f"<header><h1>Benchmark report: {name}</h1><p class=\"meta\">{len(statuses)} cells: "
             f"{counts}. Built {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the "
             f"folder <code>{escape(report.folder.resolve().name)}</code> by "
             "<code>vlm4rec report</code>.</p>"
             f'<nav>{nav} <a href="#run">how the run was made</a></nav></header>']
    for dataset, summaries in report.datasets.items():
        anchor = safe_name(dataset)
        records = [r for s in summaries.values() for r in s.ok]
        parts += [f'<section class="dataset" id="ds-{anchor}"><h2>{escape(dataset)}</h2>',
                  f'<section class="results" id="results-{anchor}"><h3>Results</h3>'
                  f"{results_table(report, dataset, summaries)}</section>",
                  f'<section class="plots" id="plots-{anchor}"><h3>Plots</h3>'
                  f"{plots_block(report, dataset)}</section>",
                  f'<section class="examples" id="examples-{anchor}"><h3>Examples</h3>'
                  f"{examples_block(report, dataset, seeds, example_models, example_users)}"
                  "</section>",
                  audit_section(report.folder, dataset),  # vlm4rec audit, when written here
                  f'<section class="data" id="data-{anchor}"><h3>Data</h3>'
                  f"{dataset_section(dataset, records)}</section></section>"]
    parts.append(f'<section class="provenance" id="run"><h2>How the run was made</h2>'
                 f"{run_section(report)}</section></body></html>")
    return "\n".join(parts) + "\n"
