"""``vlm4rec audit``: do a feature's item neighbourhoods look like the ones users make?

The first question a team asks before adopting LVLM descriptions: compare, for each
representation, the k items nearest to an item (cosine) with the k items most often interacted
with by the same users in the training split (the shared protocol's split, seeded as a run is).

Items audited: the *universe* is the items with a vector in every audited feature and at least
one training interaction, so every feature is scored on the same items and candidates; a query
item is a universe item with at least one co-interacted universe item (``--sample`` of them,
seeded, on large catalogues). Per feature, over the query items (mean ± standard error):

``jaccard@k``  |feature top-k ∩ co-interaction top-k| / |union|
``ndcg@k``     the feature's top-k graded by co-interaction strength with the item (gain:
               users in common, or with ``--co-measure cosine`` that count over the geometric
               mean of both items' user counts), over the best possible top-k
``purity@k``   the share of neighbours sharing a category with the item (items with one; where
               the item table has a category column)
``reach``      distinct items in any top-k list / universe size (low: a few hubs everywhere)
``coverage``   items with a vector / all items (before the common universe is taken)

Reference rows on the same items: ``random`` (k random candidates), ``popular`` (the k most
interacted items) and ``co-interaction`` itself (its purity and reach; jaccard and ndcg are 1 by
definition). Equal scores are ordered by the evaluation's seeded priority (formats/ranking.py).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recbole_vlm4rec.formats.files import atomic_write_text
from recbole_vlm4rec.formats.ranking import top_k_by_priority, user_priorities
from recbole_vlm4rec.serving.co_interactions import CoInteractions

CATEGORY_COLUMNS = ("genre", "genres", "class", "categories", "category")
METRICS = ("jaccard", "ndcg", "purity")
REFERENCES = ("co-interaction", "popular", "random")


class AuditError(ValueError):
    """An audit that cannot run (unknown feature, no co-interactions, bad column); one line."""


@dataclass
class Row:
    label: str
    kind: str  # feature / reference
    values: dict[str, list[float]] = field(default_factory=dict)
    reach: float | None = None
    coverage: float | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "kind": self.kind}
        for metric in METRICS:
            values = np.asarray(self.values.get(metric, []), float)
            out[metric] = float(values.mean()) if len(values) else None
            out[f"{metric}_se"] = (float(values.std(ddof=1) / np.sqrt(len(values)))
                                   if len(values) > 1 else None)
            out[f"{metric}_n"] = int(len(values))
        out["reach"], out["coverage"] = self.reach, self.coverage
        return out


def categories_of(item_table: Path, tokens: Sequence[str], item_field: str,
                  column: str | None) -> tuple[str | None, list[frozenset[str]] | None]:
    """Per internal id, the item's category set (``None`` without a category column)."""
    from recbole_vlm4rec.formats.items import read_item_table

    if not item_table.is_file():
        if column:
            raise AuditError(f"--category-column {column}: no item table {item_table}")
        return None, None
    table = read_item_table(item_table)
    if column is None:
        column = next((c for c in CATEGORY_COLUMNS if c in table.columns), None)
        if column is None:
            return None, None
    elif column not in table.columns:
        raise AuditError(f"{item_table}: no column {column!r} (columns: "
                         f"{', '.join(table.columns)})")
    by_token = {str(t): frozenset(str(v).replace("|", " ").replace(",", " ").split())
                for t, v in zip(table[item_field], table[column])}
    return column, [by_token.get(str(t), frozenset()) for t in tokens]


def score_query(row: Row, query: int, ranked: np.ndarray, truth: np.ndarray,
                shared: np.ndarray, ideal: np.ndarray, discounts: np.ndarray,
                categories: list[frozenset[str]] | None) -> None:
    """Add one query item's metrics to ``row``: ``ranked`` its neighbours, ``truth`` its top-k
    co-interaction neighbours, ``shared`` its users in common with every item, ``ideal`` the
    best possible gains (sorted, descending)."""
    union = len(set(ranked.tolist()) | set(truth.tolist()))
    row.values.setdefault("jaccard", []).append(
        len(set(ranked.tolist()) & set(truth.tolist())) / union if union else 0.0)
    best = float((ideal * discounts[:len(ideal)]).sum())
    gained = float((shared[ranked] * discounts[:len(ranked)]).sum())
    row.values.setdefault("ndcg", []).append(gained / best if best > 0 else 0.0)
    if categories is not None and categories[query] and len(ranked):
        row.values.setdefault("purity", []).append(
            float(np.mean([bool(categories[query] & categories[j]) for j in ranked])))


def knn_lists(matrix: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int,
              priority: np.ndarray, batch: int = 512) -> dict[int, np.ndarray]:
    """Each query's k nearest candidates by cosine (itself left out), ties by ``priority``."""
    unit = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    candidate_vectors = unit[candidates]
    found = {}
    for start in range(0, len(queries), batch):
        chunk = queries[start:start + batch]
        scores = unit[chunk] @ candidate_vectors.T
        for offset, query in enumerate(chunk):
            row = scores[offset].astype(np.float64)
            row[candidates == query] = -np.inf
            found[int(query)] = candidates[top_k_by_priority(row, k, priority[candidates])]
    return found


CO_MEASURES = ("count", "cosine")


def co_strength(co: CoInteractions, query: int, popularity: np.ndarray,
                measure: str) -> np.ndarray:
    """How strongly every item goes with ``query`` in training: users in common (``count``),
    or that count over the geometric mean of the two items' user counts (``cosine``: without
    it, an item's strongest partners are mostly the most popular items)."""
    shared = co.counts(query).astype(np.float64)
    if measure == "cosine":
        shared /= np.sqrt(np.maximum(popularity, 1) * max(int(popularity[query]), 1))
    return shared


def training_split(dataset: str, overrides: dict[str, Any] | None) -> tuple[Any, Any, Any]:
    """``(config, dataset, training split)``, built by run/runner.build_run as a run builds them
    (same seed, cold-start protocol and split). Its model is the first registered one that reads
    no feature (no model key changes the split, and one that reads features would demand them);
    built untrained and unused."""
    from recbole_vlm4rec.models import all_model_info
    from recbole_vlm4rec.run.protocol import prepare_run
    from recbole_vlm4rec.run.runner import build_run

    featureless = next(name for name, info in all_model_info().items()
                       if info.contract.features is None)
    prepared = prepare_run(featureless, dataset, overrides={"state": "WARNING",
                                                            **(overrides or {})},
                           build_features=False)
    built = build_run(prepared.config, prepared.model_class)
    return built.config, built.dataset, built.train_data.dataset


def run_audit(dataset: str, features: Sequence[str], k: int = 10, out: str | Path | None = None,
              category_column: str | None = None, overrides: dict[str, Any] | None = None,
              sample: int = 5000, measure: str = "count") -> dict[str, Any]:
    """Audit ``features`` of ``dataset``; writes audit.json / audit.md / audit.png under ``out``
    and prints the table."""
    from recbole_vlm4rec.data.dataset import MissingFeatureError, item_file
    from recbole_vlm4rec.data.registry import UnknownDatasetError
    from recbole_vlm4rec.formats.features import FeatureFileError
    from recbole_vlm4rec.run.protocol import build_declared_features
    from recbole_vlm4rec.run.runner import _machine, _source_commit  # as a run records them

    if measure not in CO_MEASURES:
        raise AuditError(f"co-interaction measure {measure!r}: use one of {', '.join(CO_MEASURES)}")
    if not features:
        raise AuditError("--features names no feature (e.g. --features visual,vlm,text)")
    clash = [f for f in features if f in REFERENCES] + [f for f in set(features)
                                                         if list(features).count(f) > 1]
    if clash:
        raise AuditError(f"feature names {clash} are repeated or clash with the reference rows "
                         f"({', '.join(REFERENCES)})")
    try:
        config, data, train = training_split(dataset, overrides)
        build_declared_features(config, list(features))
        aligned = {name: data.item_feature(name) for name in features}
    except (MissingFeatureError, FeatureFileError, UnknownDatasetError, FileNotFoundError,
            ValueError) as error:
        raise AuditError(str(error).strip().splitlines()[0]) from None
    tokens = [str(t) for t in data.field2id_token[data.iid_field]]
    history = train.inter_matrix(form="csr")
    co = CoInteractions(history.indptr.astype(np.int64), history.indices.astype(np.int64),
                        len(tokens))
    popularity = np.diff(co.item_indptr)
    seed = int(config["seed"])
    priority = user_priorities(0, len(tokens), seed)
    universe = popularity > 0
    universe[0] = False
    for feature in aligned.values():
        universe &= feature.has_vector
    candidates = np.flatnonzero(universe)
    rng = np.random.default_rng(seed)
    co_top: dict[int, np.ndarray] = {}  # query -> its top-k co-interaction neighbours
    for query in (candidates if len(candidates) <= sample else rng.permutation(candidates)):
        shared = co_strength(co, int(query), popularity, measure)[candidates]
        partners = np.flatnonzero(shared > 0)
        if len(partners):
            co_top[int(query)] = candidates[partners[top_k_by_priority(
                shared[partners], k, priority[candidates][partners])]]
            if len(co_top) == sample:
                break
    queries = np.sort(np.fromiter(co_top, np.int64, len(co_top)))
    if not len(queries):
        raise AuditError(f"no item of {dataset} has a co-interacted item among the "
                         f"{len(candidates)} items every feature covers")
    column, categories = categories_of(item_file(config), tokens, data.iid_field,
                                       category_column)
    lists = {name: knn_lists(feature.matrix, queries, candidates, k, priority)
             for name, feature in aligned.items()}
    lists["co-interaction"] = co_top
    lists["popular"] = {int(q): candidates[top_k_by_priority(
        np.where(candidates == q, -np.inf, popularity[candidates]).astype(np.float64), k,
        priority[candidates])] for q in queries}
    lists["random"] = {int(q): rng.choice(candidates[candidates != q], replace=False,
                                          size=min(k, len(candidates) - 1)) for q in queries}
    rows = [Row(name, "feature" if name in aligned else "reference",
                coverage=float(aligned[name].has_vector[1:].mean()) if name in aligned else None)
            for name in lists]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for query in queries:  # users in common recomputed per query: memory stays O(items)
        shared = co_strength(co, int(query), popularity, measure)
        ideal = np.sort(shared[candidates])[::-1][:k]
        for row in rows:
            score_query(row, int(query), lists[row.label][int(query)], co_top[int(query)],
                        shared, ideal, discounts, categories)
    for row in rows:
        row.reach = len(set(np.concatenate(list(lists[row.label].values())).tolist())) / len(
            candidates)
    result = {
        "dataset": dataset, "k": k, "features": list(features), "seed": seed,
        "co_measure": measure,
        "n_items": len(tokens) - 1, "universe": int(len(candidates)), "queries": int(len(queries)),
        "category_column": column, "split": "the shared protocol's training split "
        f"(eval_args {config['eval_args']})", "rows": [r.summary() for r in rows],
        "command": "vlm4rec " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["audit"] else None,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _source_commit(), "machine": _machine(),
    }
    folder = Path(out) if out else Path("results") / "audit" / dataset
    write_audit(folder, result)
    print(audit_markdown(result))
    print(f"\nwritten: {folder / 'audit.json'}, audit.md, audit.png")
    return result


def _cell(row: dict[str, Any], metric: str) -> str:
    if row[metric] is None:
        return "–"
    se = row.get(f"{metric}_se")
    return f"{row[metric]:.4f}" + (f" ± {se:.4f}" if se else "")


def audit_markdown(result: dict[str, Any]) -> str:
    k = result["k"]
    purity = f"purity@{k} ({result['category_column']})" if result["category_column"] else \
        f"purity@{k}"
    lines = [f"audit of {result['dataset']}: {result['queries']} query items, "
             f"{result['universe']} items covered by every feature, k={k}, co-interaction "
             f"strength: {result.get('co_measure', 'count')}",
             "", f"| neighbours | jaccard@{k} | ndcg@{k} | {purity} | reach | coverage |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        coverage = f"{row['coverage']:.3f}" if row["coverage"] is not None else "–"
        lines.append(f"| {row['label']} | {_cell(row, 'jaccard')} | {_cell(row, 'ndcg')} | "
                     f"{_cell(row, 'purity')} | {row['reach']:.3f} | {coverage} |")
    return "\n".join(lines)


def write_audit(folder: Path, result: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "audit.json", json.dumps(result, indent=2))
    atomic_write_text(folder / "audit.md", audit_markdown(result) + "\n")
    plot_audit(result, folder / "audit.png")


def plot_audit(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    metrics = [m for m in METRICS if any(r[m] is not None for r in rows)]
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(rows) * len(metrics) / 2, 3.6))
    width = 0.8 / len(metrics)
    x = np.arange(len(rows))
    for i, metric in enumerate(metrics):
        values = [r[metric] or 0.0 for r in rows]
        errors = [r.get(f"{metric}_se") or 0.0 for r in rows]
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, values, width, yerr=errors,
               label=f"{metric}@{result['k']}", capsize=2)
    ax.set_xticks(x, [r["label"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel("mean over query items")
    ax.set_title(f"{result['dataset']}: feature neighbourhoods vs co-interactions "
                 f"(k={result['k']})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
