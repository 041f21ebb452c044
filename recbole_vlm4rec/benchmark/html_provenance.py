"""The report's "how the run was made": spec, source commit, library versions, machine, and per
dataset its card summary and item-feature coverage (from the files in the dataset folder).

Folders are named, never their absolute paths (``without_machine_paths``): the page may be mailed.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from recbole_vlm4rec.benchmark.report_data import Report, without_machine_paths


PROTOCOL_KEYS = ("eval_args", "metrics", "topk", "valid_metric", "eval_history_mask",
                 "epochs", "stopping_step", "eval_step", "train_batch_size", "cold_start_items",
                 "cold_start_targets")


def _records(report: Report) -> list[dict[str, Any]]:
    return [r for summaries in report.datasets.values() for s in summaries.values() for r in s.ok]


def _counted(values: list[str]) -> str:
    """``a (3 runs); b (1 run)``: several values mean the runs were not made alike."""
    counts = Counter(values)
    return "; ".join(f"{escape(without_machine_paths(v))} ({n} run{'s' * (n != 1)})"
                     for v, n in counts.most_common())


def run_section(report: Report) -> str:
    records = _records(report)
    environments = [r["result"].get("environment") or {} for r in records]
    rows = [("source commit", _counted([e.get("commit", "not recorded") for e in environments])),
            ("machine", _counted([e.get("machine", "not recorded") for e in environments])),
            ("platform", _counted([e.get("platform", "not recorded") for e in environments]))]
    packages = sorted({k for e in environments for k in e} - {"commit", "machine", "platform"})
    rows += [(name, _counted([e.get(name, "not recorded") for e in environments]))
             for name in packages]
    spec_path = report.folder / "spec.yaml"
    spec_text = without_machine_paths(spec_path.read_text()) if spec_path.is_file() \
        else "(no spec.yaml in the folder)"
    table = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    configs = [r["result"].get("config") or {} for r in records]
    protocol = "".join(
        f"<tr><th>{escape(key)}</th><td>{_counted([_short(c.get(key)) for c in configs])}</td></tr>"
        for key in PROTOCOL_KEYS if any(key in c for c in configs))
    return (f"<p>{len(records)} ok runs. Values below are as each run recorded them.</p>"
            f'<table class="kv">{table}</table>'
            "<h3>Protocol (from the runs' config snapshots)</h3>"
            f'<table class="kv">{protocol}</table>'
            f"<h3>Spec (<code>spec.yaml</code> of the benchmark folder)</h3>"
            f"<pre>{escape(spec_text)}</pre>")


def _short(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list)) \
        else str(value)


def dataset_section(dataset: str, records: list[dict[str, Any]]) -> str:
    """Card summary and feature coverage of the folder the runs read."""
    if not records:
        return "<p>No run of this dataset finished: nothing recorded about its files.</p>"
    config = records[0]["result"].get("config") or {}
    if not config.get("data_path"):
        return "<p>The runs recorded no dataset folder (no config snapshot).</p>"
    folder = Path(str(config["data_path"]))
    parts = [f"<p>Dataset folder: <code>{escape(folder.name)}</code> (in the runs' "
             "<code>data_path</code>)</p>"]
    parts.append(_card_summary(folder, records))
    parts.append(_feature_coverage(folder, config, records))
    return "\n".join(parts)


def _card_summary(folder: Path, records: list[dict[str, Any]]) -> str:
    card_path = folder / "card.json"
    if not card_path.is_file():
        return "<p>No dataset card (card.json) in the folder.</p>"
    data = card_path.read_bytes()
    try:
        card = json.loads(data)
    except ValueError as error:
        return f'<p class="note">card.json: not JSON ({escape(str(error))})</p>'
    recorded = {r["result"].get("dataset_card_sha256") for r in records}
    now = hashlib.sha256(data).hexdigest()
    if recorded == {now}:
        match = "the runs recorded this card's sha256"
    else:
        match = f"the card changed since the runs (runs recorded {sorted(map(str, recorded))})"
    counts, items = card.get("counts") or {}, card.get("items") or {}
    rows = [("source", card.get("source_kind")), ("command", card.get("command")),
            ("users / items / interactions",
             " / ".join(f"{counts.get(k, '?'):,}" if isinstance(counts.get(k), int) else "?"
                        for k in ("users", "items", "interactions"))),
            ("density", counts.get("density")),
            ("items with an image", f"{items.get('with_image', '?')} of {items.get('rows', '?')}"),
            ("split", (card.get("split") or {}).get("description")),
            ("card sha256", f"{now[:16]}... ({match})")]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(without_machine_paths(str(v)))}</td></tr>"
                   for k, v in rows if v is not None)
    return f'<h3>Dataset card</h3><table class="kv">{body}</table>'


def _read_by(records: list[dict[str, Any]]) -> dict[str, dict[str, set[str]]]:
    """feature -> {"labels": labels whose runs read it, "sha256": the file hashes they saw}."""
    found: dict[str, dict[str, set[str]]] = {}
    for record in records:
        for name, seen in (record["result"].get("features") or {}).items():
            entry = found.setdefault(name, {"labels": set(), "sha256": set()})
            entry["labels"].add(record["cell"]["label"])
            entry["sha256"].add(str(seen.get("sha256")))
    return found


def _feature_coverage(folder: Path, config: dict[str, Any],
                      records: list[dict[str, Any]]) -> str:
    declared = config.get("item_features") or {}
    features = sorted(set(declared) | {p.stem for p in (folder / "features").glob("*.npy")})
    if not features:
        return "<p>No item features declared or present.</p>"
    n_items = _count_items(folder, str(config.get("dataset") or folder.name))
    read_by = _read_by(records)
    rows = []
    for name in features:
        tokens = folder / "features" / f"{name}.tokens"
        meta = _read_json(folder / "features" / f"{name}.json")
        users = read_by.get(name, {"labels": set(), "sha256": set()})
        used = ", ".join(sorted(users["labels"])) or "no run"
        if not tokens.is_file():
            rows.append((name, "not built", "", "", "", used))
            continue
        npy = folder / "features" / f"{name}.npy"
        if users["sha256"] and users["sha256"] != {hashlib.sha256(npy.read_bytes()).hexdigest()}:
            used += " (the file changed since those runs)"
        covered = sum(1 for line in tokens.read_text().splitlines() if line.strip())
        share = f" ({100 * covered / n_items:.1f}%)" if n_items else ""
        dim = np.load(npy, mmap_mode="r").shape[1]
        skipped = meta.get("skipped_by_reason") or {}
        rows.append((name, f"{covered} of {n_items or '?'}{share}", str(dim),
                     str(meta.get("encoder") or meta.get("kind") or ""),
                     ", ".join(f"{k}: {v}" for k, v in skipped.items()), used))
    head = "<tr><th>feature</th><th>items with a vector</th><th>dim</th><th>encoder</th>" \
           "<th>skipped items by reason</th><th>read by</th></tr>"
    body = "".join("<tr>" + "".join(f"<td>{escape(without_machine_paths(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f'<h3>Item features</h3><table class="plain">{head}{body}</table>'


def _count_items(folder: Path, dataset: str) -> int | None:
    path = folder / f"{dataset}.item"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", errors="replace") as handle:
        return max(sum(1 for line in handle if line.strip()) - 1, 0)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
