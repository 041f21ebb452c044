"""`vlm4rec audit`: feature neighbourhoods against training co-interactions, checked by brute
force on a tiny dataset; a feature made from behaviour agrees with it, a one-hot category feature
is pure; bad input is one line, exit 2; report.html gets the section."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recbole_vlm4rec import cli
from recbole_vlm4rec.benchmark.html_audit import audit_section
from recbole_vlm4rec.formats.features import save_feature
from recbole_vlm4rec.formats.ranking import top_k_by_priority, user_priorities
from recbole_vlm4rec.serving.audit import AuditError, run_audit

GENRES = ["drama", "comedy", "horror", "western"]


@pytest.fixture
def audited(tiny_dataset):
    """tiny + an item table with genres + features 'behaviour' (each item's training users) and
    'genre' (one-hot of its genre)."""
    from recbole_vlm4rec.run.protocol import prepare_run
    from recbole_vlm4rec.run.runner import build_run

    root, name, overrides = tiny_dataset
    tokens = [f"i{i}" for i in range(40)]
    (root / name / f"{name}.item").write_text(
        "item_id:token\tgenre:token_seq\n" + "".join(f"i{i}\t{GENRES[i % 4]}\n" for i in range(40)))
    overrides = {**overrides, "item_features": {"emb": None, "behaviour": None, "genre": None}}
    built = build_run(prepare_run("Pop", name, overrides=overrides).config,
                      prepare_run("Pop", name, overrides=overrides).model_class)
    data = built.dataset
    ids = {str(t): i for i, t in enumerate(data.field2id_token[data.iid_field])}
    history = built.train_data.dataset.inter_matrix(form="csr").toarray() > 0
    save_feature(root / name / "features", "behaviour",
                 np.stack([history[:, ids[t]].astype(float) + 1e-3 for t in tokens]), tokens)
    save_feature(root / name / "features", "genre", np.eye(4)[[i % 4 for i in range(40)]], tokens)
    return name, overrides, built, history, ids


def brute_force(built, history, feature_rows: np.ndarray, k: int) -> tuple[float, float]:
    """Mean Jaccard@k and NDCG@k (gain: users in common) of a feature, written out directly."""
    counts = history.T.astype(int) @ history.astype(int)
    np.fill_diagonal(counts, 0)
    n = counts.shape[0]
    priority = user_priorities(0, n, int(built.config["seed"]))
    candidates = np.flatnonzero(history.any(axis=0))
    candidates = candidates[candidates > 0]
    unit = feature_rows / np.maximum(np.linalg.norm(feature_rows, axis=1, keepdims=True), 1e-12)
    jaccards, ndcgs = [], []
    for q in candidates:
        if not (counts[q, candidates] > 0).any():
            continue
        co = np.full(n, -np.inf)
        co[candidates] = np.where(counts[q, candidates] > 0, counts[q, candidates], -np.inf)
        truth = set(top_k_by_priority(co, k, priority).tolist())
        cosine = np.full(n, -np.inf)
        cosine[candidates] = (unit[candidates] @ unit[q]).astype(np.float32)
        cosine[q] = -np.inf
        ranked = top_k_by_priority(cosine.astype(np.float64), k, priority)
        jaccards.append(len(truth & set(ranked.tolist())) / len(truth | set(ranked.tolist())))
        discounts = 1 / np.log2(np.arange(2, k + 2))
        ideal = np.sort(counts[q, candidates])[::-1][:k]
        ndcgs.append((counts[q, ranked] * discounts[:len(ranked)]).sum()
                     / (ideal * discounts[:len(ideal)]).sum())
    return float(np.mean(jaccards)), float(np.mean(ndcgs))


def test_audit_against_brute_force_and_references(audited, tmp_path, capsys):
    name, overrides, built, history, ids = audited
    result = run_audit(name, ["emb", "behaviour", "genre"], k=5, out=tmp_path / "a",
                       overrides={k: v for k, v in overrides.items()})
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["emb", "behaviour", "genre", "co-interaction", "popular", "random"]
    assert result["category_column"] == "genre" and result["universe"] == 40
    emb = built.dataset.item_feature("emb").matrix
    jaccard, ndcg = brute_force(built, history, emb, 5)
    assert rows["emb"]["jaccard"] == pytest.approx(jaccard, abs=1e-9)
    assert rows["emb"]["ndcg"] == pytest.approx(ndcg, abs=1e-9)
    assert rows["co-interaction"]["jaccard"] == 1.0 and rows["co-interaction"]["ndcg"] == 1.0
    assert rows["behaviour"]["ndcg"] > rows["random"]["ndcg"] + 0.1
    assert rows["genre"]["purity"] == 1.0 and rows["random"]["purity"] < 0.5
    assert rows["popular"]["reach"] < 0.3 < rows["emb"]["reach"]
    assert rows["emb"]["coverage"] == 1.0 and rows["random"]["coverage"] is None
    assert all(rows[r]["jaccard_n"] == result["queries"] for r in rows)
    out = capsys.readouterr().out
    assert "| behaviour |" in out and "purity@5 (genre)" in out
    saved = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert saved["rows"] == result["rows"]
    assert (tmp_path / "a" / "audit.png").read_bytes()[:4] == b"\x89PNG"
    assert "| genre |" in (tmp_path / "a" / "audit.md").read_text()
    # the report hook: the benchmark renders what the audit wrote, and nothing when absent
    bench = tmp_path / "bench"
    assert audit_section(bench, name) == ""
    (bench / "audit").mkdir(parents=True)
    (tmp_path / "a").rename(bench / "audit" / name)
    section = audit_section(bench, name)
    assert "Neighbourhood audit" in section and "data:image/png;base64," in section
    assert section.count("<tr") == 1 + 6 and "purity@5 (genre)" in section


def test_cosine_strength_and_bad_input(audited, tmp_path, capsys):
    name, overrides, *_ = audited
    cosine = run_audit(name, ["emb"], k=3, out=tmp_path / "c", overrides=dict(overrides),
                       measure="cosine")
    assert cosine["co_measure"] == "cosine"
    with pytest.raises(AuditError, match="clash with the reference rows"):
        run_audit(name, ["emb", "random"], overrides=dict(overrides))
    with pytest.raises(AuditError, match="'smell'"):
        run_audit(name, ["smell"], overrides=dict(overrides))
    assert cli.main(["audit", name, "--features", "emb,smell", "--out", str(tmp_path / "x"),
                     f"--data_path={overrides['data_path']}",
                     "--item_features={'emb': None, 'behaviour': None, 'genre': None}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "smell" in err


def test_published_audit_tables_are_the_committed_files():
    """docs/serving.md shows the audit tables committed under docs/results/audit/ (written by the
    command printed beside them), line for line."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    docs = (repo / "docs" / "serving.md").read_text(encoding="utf-8")
    folders = sorted((repo / "docs" / "results" / "audit").iterdir())
    assert folders
    for folder in folders:
        saved = json.loads((folder / "audit.json").read_text())
        assert saved["command"] and saved["commit"] and saved["machine"]
        assert f"`{saved['command']}`" in docs, saved["command"]
        table = [line for line in (folder / "audit.md").read_text().splitlines()
                 if line.startswith("|")]
        assert len(table) == 2 + len(saved["rows"])
        for line in table[2:]:
            assert line in docs, line
