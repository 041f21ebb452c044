"""report.html's "Neighbourhood audit" section: the ``vlm4rec audit`` result of a dataset, when
one was written into the benchmark folder (``<bench>/audit/<dataset>/audit.json`` and its
``audit.png``; see docs/serving.md). Reads only those files (the audit is made by the serving
stage; this stage renders what it wrote)."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

from recbole_vlm4rec.benchmark.spec import safe_name


def audit_file(folder: Path, dataset: str) -> Path:
    return folder / "audit" / safe_name(dataset) / "audit.json"


def _cell(row: dict[str, Any], metric: str) -> str:
    value, se = row.get(metric), row.get(f"{metric}_se")
    if value is None:
        return "<td>–</td>"
    hover = f' title="± {se:.4f} (standard error)"' if se else ""
    return f"<td{hover}>{value:.4f}</td>"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def audit_section(folder: Path, dataset: str) -> str:
    """The section's HTML, or "" when the benchmark folder holds no audit of ``dataset``."""
    path = audit_file(folder, dataset)
    if not path.is_file():
        return ""
    try:
        audit = json.loads(path.read_text(encoding="utf-8"))
        k, rows = int(audit["k"]), list(audit["rows"])
    except (ValueError, KeyError, TypeError) as error:
        return (f'<section class="audit"><h3>Neighbourhood audit</h3><p class="note">'
                f"{escape(path.name)} is unreadable ({escape(str(error))}): rerun vlm4rec "
                "audit</p></section>")
    purity = f"purity@{k}" + (f" ({escape(str(audit['category_column']))})"
                              if audit.get("category_column") else "")
    head = "".join(f"<th>{h}</th>" for h in ("neighbours", f"jaccard@{k}", f"ndcg@{k}", purity,
                                             "reach", "coverage"))
    body = "".join(
        f'<tr class="{escape(str(r.get("kind", "")))}"><td>{escape(str(r["label"]))}</td>'
        f"{_cell(r, 'jaccard')}{_cell(r, 'ndcg')}{_cell(r, 'purity')}"
        f"<td>{r['reach']:.3f}</td><td>{_share(r.get('coverage'))}</td></tr>"
        for r in rows)
    picture = path.with_name("audit.png")
    figure = (f'<figure class="plot"><img alt="audit plot" src="data:image/png;base64,'
              f'{base64.b64encode(picture.read_bytes()).decode("ascii")}"></figure>'
              if picture.is_file() else "")
    return (f'<section class="audit" id="audit-{safe_name(dataset)}"><h3>Neighbourhood audit</h3>'
            f"<p class=\"meta\">Each feature's {k} nearest items against the {k} items most "
            f"co-interacted with in training ({escape(str(audit.get('co_measure', 'count')))}), "
            f"over {audit.get('queries')} items covered by every feature; mean per item, "
            "standard error on hover. Made by <code>"
            f"{escape(str(audit.get('command') or 'vlm4rec audit'))}</code> at "
            f"{escape(str(audit.get('created_utc')))}.</p>"
            f"<table><tr>{head}</tr>{body}</table>{figure}</section>")
