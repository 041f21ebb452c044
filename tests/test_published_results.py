"""Every results table in README.md / docs/ is rendered from a committed run summary."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from recbole_vlm4rec.benchmark.cell import make_record, write_record
from recbole_vlm4rec.benchmark.grid import record_path
from recbole_vlm4rec.benchmark.publish import checkout_root, publish, render_table, stale_blocks
from recbole_vlm4rec.benchmark.report import write_report
from recbole_vlm4rec.benchmark.spec import Cell


def test_every_table_in_the_docs_equals_its_committed_summary():
    """Regenerate with `vlm4rec report <run folder> --publish docs/results/<name>` (docs/results.md)."""
    root = checkout_root()
    assert stale_blocks(root) == []
    cited = [p for p in (root / "docs" / "results").rglob("summary.csv")]
    assert cited, "docs/results/ holds no published summary"
    for summary in cited:
        provenance = json.loads((summary.parent / "provenance.json").read_text())
        assert provenance["runs"] and provenance["code_versions"]
        assert (summary.parent / "spec.yaml").is_file()


def _bench_folder(tmp_path: Path, recall: dict[str, list[float]]) -> Path:
    folder = tmp_path / "bench"
    spec = {"name": "tiny", "models": {label: {} for label in recall}, "datasets": ["tiny"],
            "seeds": [1, 2], "metrics": ["recall@10"]}
    (folder).mkdir()
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    for label, values in recall.items():
        for seed, value in zip((1, 2), values):
            cell = Cell(label, label, "tiny", seed, {"seed": seed})
            result = {"test_result": {"recall@10": value}, "seconds": {"fit": 1.0, "test": 0.5},
                      "peak_memory_mb": {"rss": 100.0}, "per_user_test": {},
                      "environment": {"commit": "abc123"}}
            write_record(record_path(folder, cell), make_record(cell, "ok", result=result))
    write_report(folder)
    return folder


def test_publish_copies_the_summary_and_rewrites_the_tables_citing_it(tmp_path):
    folder = _bench_folder(tmp_path, {"BPR": [0.25, 0.35], "Pop": [0.1, 0.1]})
    root = tmp_path / "checkout"
    (root / "docs").mkdir(parents=True)
    page = root / "docs" / "results.md"
    page.write_text("# Results\n\n<!-- results-table: docs/results/tiny/summary.csv "
                    "dataset=tiny metrics=recall@10 -->\nold table\n<!-- /results-table -->\n")
    missing = stale_blocks(root)  # nothing published yet
    assert len(missing) == 1 and "No such file" in missing[0]
    written = publish(folder, root / "docs" / "results" / "tiny", root=root)
    assert page in written
    text = page.read_text()
    assert "| BPR | 0.3000 ± 0.0707 | 2/2 |" in text and "| Pop | 0.1000 ± 0.0000 | 2/2 |" in text
    assert stale_blocks(root) == []
    provenance = json.loads((root / "docs/results/tiny/provenance.json").read_text())
    assert provenance["code_versions"] == {"abc123": 4} and len(provenance["runs"]) == 4
    # a hand edit of the table (or a new summary without a republish) is caught
    page.write_text(text.replace("0.3000", "0.3100"))
    assert len(stale_blocks(root)) == 1


def test_render_table_marks_cells_that_did_not_run(tmp_path):
    summary = tmp_path / "summary.csv"
    summary.write_text("dataset,model,class,status,runs_ok,runs,recall@20_mean,recall@20_std\n"
                       "d,VLM4Rec,VLM4Rec,ok,1,1,0.0123,0.0\nd,MMGCN,MMGCN,skipped,0,1,,\n")
    assert render_table(summary, "d") == ("| model | recall@20 | runs |\n|---|---|---|\n"
                                          "| VLM4Rec | 0.0123 | 1/1 |\n| MMGCN | skipped | 0/1 |\n")
