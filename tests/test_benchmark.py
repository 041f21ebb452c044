"""Benchmark harness: grid (resume, skipped and failed cells), report files, stats, spec errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as scipy_stats

from recbole_vlm4rec import cli
from recbole_vlm4rec.benchmark.cell import make_record, write_record
from recbole_vlm4rec.benchmark.grid import GridConfigError, record_path, run_grid
from recbole_vlm4rec.benchmark.report import write_report
from recbole_vlm4rec.benchmark.report_data import load_report
from recbole_vlm4rec.benchmark.report_markdown import markdown
from recbole_vlm4rec.benchmark.spec import Cell, SpecError, load_spec, parse_spec
from recbole_vlm4rec.benchmark.stats import compare_to_reference, holm, paired_test
from recbole_vlm4rec.formats.features import save_feature

REPORT_FILES = ("report.md", "summary.csv", "runs.csv", "significance.csv",
                "plots/tiny-metrics.png", "plots/tiny-quality-vs-time.png")


def tiny_spec(tmp_path: Path, overrides: dict, models: dict, **extra) -> Path:
    spec = {"name": "tiny-bench", "models": models, "datasets": {"tiny": {}}, "seeds": [1, 2],
            "metrics": ["recall@10", "ndcg@10"], "reference": ["VLM4Rec"],
            "overrides": {**overrides, "epochs": 1}, "isolation": "inprocess", **extra}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_grid_records_every_cell_resumes_and_report_rebuilds(tiny_dataset, tmp_path):
    _, _, overrides = tiny_dataset
    models = {
        "VLM4Rec": {"model": "VLM4Rec"},
        "VLM4Rec (vlm)": {"model": "VLM4Rec", "item_feature": "vlm"},  # the dataset has no vlm
        "BPR": {},
        "VBPR-not-here": {"model": "NoSuchModel"},
        "Typo": {"model": "VLM4Rec", "profile_aggregation": "median"},
        "Not BPR's": {"model": "BPR", "reg_weight": 0.1},
    }
    out = tmp_path / "bench"
    with pytest.raises(GridConfigError) as refused:  # checked before any cell runs
        run_grid(load_spec(tiny_spec(tmp_path, overrides, models)), out)
    assert len(refused.value.problems) == 3  # once per cell setting, not per seed
    problems = "\n".join(refused.value.problems)
    assert "VBPR-not-here on tiny: unknown model 'NoSuchModel'" in problems
    assert "'profile_aggregation' (--profile_aggregation=median) " in problems
    assert "takes one of mean, max; got 'median'" in problems
    assert "'reg_weight' (--reg_weight=0.1) is not read by BPR" in problems
    assert not (out / "runs").exists()
    del models["Typo"], models["VBPR-not-here"], models["Not BPR's"]
    root, name, _ = tiny_dataset  # a feature file with a NaN row: fails when the cell loads it
    save_feature(root / name / "features", "broken", np.ones((2, 4)), ["i1", "i2"])
    np.save(root / name / "features" / "broken.npy", np.full((2, 4), np.nan, np.float32))
    models["Crashes"] = {"model": "VLM4Rec", "item_feature": "broken",
                         "item_features": {"emb": None, "broken": None}}
    spec = load_spec(tiny_spec(tmp_path, overrides, models))
    first = run_grid(spec, out)
    assert first.counts == {"ok": 4, "skipped": 2, "failed": 2}
    records = {c: json.loads(record_path(out, c).read_text()) for c in spec.cells()}
    by_label = {c.label: r for c, r in records.items()}
    assert by_label["VLM4Rec (vlm)"]["status"] == "skipped"
    assert "has no item feature 'vlm'" in by_label["VLM4Rec (vlm)"]["reason"]
    assert by_label["Crashes"]["status"] == "failed"
    assert "FeatureFileError" in by_label["Crashes"]["reason"]
    ok = by_label["BPR"]["result"]
    assert ok["seed"] == 2 and len(ok["per_user_test"]["users"]) == 30
    for name in REPORT_FILES:
        assert not (out / name).exists()
    write_report(out)
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    report_text = (out / "report.md").read_text()
    assert "| VLM4Rec (ref) |" in report_text and "skipped" in report_text
    assert "has no item feature 'vlm'" in report_text and "| recall@10 | BPR | 30 |" in report_text

    rerun_cells = []
    second = run_grid(spec, out, on_record=lambda cell, record: rerun_cells.append(cell.label))
    assert second.counts["resumed"] == 4  # VLM4Rec and BPR, 2 seeds each
    assert sorted(set(rerun_cells)) == ["Crashes", "VLM4Rec (vlm)"]

    changed = load_spec(tiny_spec(tmp_path, overrides, {**models, "BPR": {"learning_rate": 0.01}}))
    rerun_cells.clear()
    run_grid(changed, out, on_record=lambda cell, record: rerun_cells.append(cell.label))
    assert rerun_cells.count("BPR") == 2 and "VLM4Rec" not in rerun_cells

    before = (out / "summary.csv").read_text()
    for name in REPORT_FILES:
        (out / name).unlink()
    assert cli.main(["report", str(out)]) == 0
    assert all((out / name).is_file() for name in REPORT_FILES)
    assert "BPR" in (out / "summary.csv").read_text() and before  # rebuilt from records only


def test_subprocess_cell_and_timeout_are_recorded(tiny_dataset, tmp_path):
    _, _, overrides = tiny_dataset
    out = tmp_path / "bench"
    spec = load_spec(tiny_spec(tmp_path, overrides, {"Pop": {}}, isolation="subprocess",
                               seeds=[7], reference=[]))
    assert run_grid(spec, out).counts == {"ok": 1}
    record = json.loads(record_path(out, spec.cells()[0]).read_text())
    assert record["result"]["peak_memory_mb"]["rss"] > 50
    assert (out / "logs" / "tiny" / "Pop" / "seed-7.log").is_file()
    slow = load_spec(tiny_spec(tmp_path, overrides, {"Pop": {}}, isolation="subprocess",
                               seeds=[8], timeout_s=0.01, reference=[]))
    assert run_grid(slow, out).counts == {"failed": 1}
    failed = json.loads(record_path(out, slow.cells()[0]).read_text())
    assert "timeout after 0.01 s" in failed["reason"]


def fake_record(label: str, seed: int, users: list[str], values: list[float]) -> dict:
    cell = Cell(label, label, "tiny", seed, {"seed": seed})
    result = {"test_result": {"recall@10": float(np.mean(values))},
              "seconds": {"fit": 1.0, "test": 0.5}, "peak_memory_mb": {"rss": 100.0},
              "per_user_test": {"users": users, "metrics": {"recall@10": values}}}
    return make_record(cell, "ok", result=result, wall_seconds=1.0)


def test_report_marks_best_and_significant_differences(tmp_path):
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(200)]
    base = rng.uniform(0, 0.5, size=200)
    spec = {"models": {"Ref": {}, "Better": {}, "Same": {}}, "datasets": ["tiny"], "seeds": [1, 2],
            "reference": "Ref", "metrics": ["recall@10"]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    for seed in (1, 2):
        noise = rng.normal(0, 0.01, size=200)
        shuffled = rng.permutation(200)  # users in another order: pairing must go by token
        for label, values in {"Ref": base, "Better": base + 0.2 + noise, "Same": base}.items():
            record = fake_record(label, seed, [users[i] for i in shuffled],
                                 [float(values[i]) for i in shuffled])
            write_record(tmp_path / "runs" / f"{label}-{seed}.json", record)
    report = load_report(tmp_path)
    tests = report.tests[("tiny", "recall@10")]
    assert tests["Same"].t_p == 1.0 and tests["Same"].mean_difference == 0.0
    assert tests["Better"].t_p_holm < 1e-10 and tests["Better"].mean_difference > 0.19
    text = markdown(report)
    assert "▲" in text.split("| Better |")[1].splitlines()[0]
    assert "**" in text.split("| Better |")[1].splitlines()[0]  # best in its column
    assert "▲" not in text.split("| Same |")[1].splitlines()[0]
    models = text.split("## Models")[1]
    assert "| Better | Better | - |" in models and "| Ref | Ref | - |" in models


def test_holm_matches_hand_computation():
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # monotone: never below an earlier step
    nan_kept = holm([math.nan, 0.02])
    assert math.isnan(nan_kept[0]) and nan_kept[1] == pytest.approx(0.02)


def test_paired_tests_agree_with_scipy():
    rng = np.random.default_rng(3)
    reference = rng.uniform(size=50)
    model = reference + rng.normal(0.05, 0.1, size=50)
    test = paired_test(model, reference)
    assert test.t_p == pytest.approx(scipy_stats.ttest_rel(model, reference).pvalue)
    assert test.wilcoxon_p == pytest.approx(scipy_stats.wilcoxon(model, reference).pvalue)
    assert test.mean_difference == pytest.approx(float(np.mean(model - reference)))
    per_model = {"R": {1: {"a": 0.1, "b": 0.2, "c": 0.3}},
                 "M": {1: {"c": 0.3, "a": 0.1, "b": 0.2, "z": 0.9}}}  # z: not in the reference
    result = compare_to_reference(per_model, "R")["M"]
    assert result.n_users == 3 and result.t_p == 1.0


def test_spec_errors_name_the_field(tmp_path):
    good = {"models": {"BPR": {}}, "datasets": ["ml-100k"]}
    assert parse_spec(good).cells()[0].overrides == {"seed": 2020}
    cases = [({**good, "modles": {}}, "unknown keys"),
             ({**good, "metrics": ["recall20"]}, "name@k"),
             ({**good, "reference": "VLM4Rec"}, "not a model label"),
             ({**good, "seeds": [1, 1]}, "repeats"),
             ({"models": {"BPR": {}}}, "`datasets` is empty")]
    for data, message in cases:
        with pytest.raises(SpecError, match=message):
            parse_spec(data, source="x.yaml")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("models: [BPR\n")
    with pytest.raises(SpecError, match="not valid yaml"):
        load_spec(bad_yaml)


def test_shipped_specs_parse():
    root = Path(__file__).resolve().parents[1] / "configs" / "benchmarks"
    for path in sorted(root.glob("*.yaml")):
        spec = load_spec(path)
        assert spec.cells(), path


def test_seeds_and_epochs_cap_from_the_command_line_and_capped_runs_marked(tiny_dataset, tmp_path,
                                                                            capsys):
    _, _, overrides = tiny_dataset
    models = {"VLM4Rec": {"model": "VLM4Rec"}, "BPR": {}, "BPR short": {"model": "BPR",
                                                                       "epochs": 1}}
    path = tiny_spec(tmp_path, {**overrides, "stopping_step": 50}, models)
    spec = yaml.safe_load(path.read_text())
    spec["overrides"].pop("epochs")  # the protocol's 300 epochs: the cap decides
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "bench"
    assert cli.main(["bench", str(path), "--out", str(out), "--seeds", "7",
                     "--max-epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert "plan: 3 cells, 2 of them train a model (up to 2 epochs each" in err
    records = {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").rglob("*.json")}
    assert {p.name for p in (out / "runs").rglob("*.json")} == {"seed-7.json"}
    assert records["BPR"]["cell"]["overrides"]["epochs"] == 2
    assert records["BPR_short"]["cell"]["overrides"]["epochs"] == 1  # smaller: kept
    training = records["BPR"]["result"]["training"]
    assert (training["epochs"], training["epochs_run"], training["capped"]) == (2, 2, True)
    assert records["VLM4Rec"]["result"]["training"]["capped"] is False  # nothing to train
    report = (out / "report.md").read_text()
    # capped at 2 epochs with its best epoch at the cap: also flagged still-improving (‡)
    flagged = (records["BPR"]["result"]["training"].get("undertrained") or {}).get("reason")
    assert flagged in (None, "still-improving")
    assert ("| BPR † ‡ |" if flagged else "| BPR † |") in report and "| VLM4Rec (ref) |" in report
    assert "† epochs capped" in report and "BPR (1/1 runs, limit 2 epochs)" in report
    assert "BPR short (1/1 runs, limit 1 epochs)" not in report  # limit 1: not a cap
    runs = (out / "runs.csv").read_text().splitlines()
    assert runs[0].endswith("epochs_run,epochs,capped,undertrained")
    assert yaml.safe_load((out / "spec.yaml").read_text())["seeds"] == [7]
    assert cli.main(["bench", str(path), "--out", str(out), "--seeds", "x"]) == 2
    assert "--seeds takes comma-separated integers, got 'x'" in capsys.readouterr().err


def test_cost_warning_on_a_cpu_names_the_cheaper_options(monkeypatch, tmp_path):
    import torch

    from recbole_vlm4rec.benchmark.cli import cost_note
    from recbole_vlm4rec.benchmark.spec import load_spec, protocol_epochs
    from recbole_vlm4rec.data.registry import is_embedded
    from recbole_vlm4rec.formats.paths import configs_dir
    from recbole_vlm4rec.models import get_model_info

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("VLM4REC_HOME", str(tmp_path))  # only the embedded ml-100k is prepared
    paper = load_spec(configs_dir() / "benchmarks" / "paper.yaml")
    note = cost_note(paper)
    assert "warning: no GPU" in note and "--max-epochs" in note and "quick.yaml" in note
    # the counts, from the spec and the model registry: only the embedded datasets are prepared
    cells = paper.cells()
    prepared = [cell for cell in cells if is_embedded(cell.dataset)]
    trained = [int(cell.overrides.get("epochs", protocol_epochs())) for cell in prepared
               if get_model_info(cell.model).trained]
    assert trained and len(prepared) < len(cells)
    assert (f"plan: {len(cells)} cells, {len(trained)} of them train a model (up to "
            f"{max(trained)} epochs") in note
    assert f"{len(cells) - len(prepared)} on datasets not prepared" in note
    quick = load_spec(configs_dir() / "benchmarks" / "quick.yaml")
    assert "warning" not in cost_note(quick)
