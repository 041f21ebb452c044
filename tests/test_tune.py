"""vlm4rec tune: trials validated only, the best validation metric chosen, the choice on every seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from recbole_vlm4rec import cli
from recbole_vlm4rec.benchmark.grid import GridConfigError, record_path
from recbole_vlm4rec.benchmark.spec import SpecError, load_spec
from recbole_vlm4rec.benchmark.tune import grid_points, plan, read_tuning, run_tune


def tune_spec(tmp_path: Path, overrides: dict, models: dict, search: dict, **extra) -> Path:
    spec = {"name": "tiny-tune", "models": models, "datasets": {"tiny": {}}, "seeds": [1, 2],
            "metrics": ["recall@10"], "overrides": {**overrides, "epochs": 1},
            "isolation": "inprocess", "search": search, **extra}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_tune_chooses_on_validation_and_runs_the_choice_on_every_seed(tiny_dataset, tmp_path):
    _, _, overrides = tiny_dataset
    models = {"LightGCN": {}, "VLM4Rec": {}, "Pop": {}}
    search = {"seed": 7, "space": {"LightGCN": {"n_layers": [1, 2], "reg_weight": 1e-4}}}
    spec = load_spec(tune_spec(tmp_path, overrides, models, search))
    out = tmp_path / "tune"
    trials, finals = run_tune(spec, out)
    assert trials.counts == {"ok": 4}  # LightGCN: 2 points; VLM4Rec: its yaml's mean / max
    assert finals.counts == {"ok": 6}  # 3 labels x 2 seeds
    tuning = read_tuning(out)
    found = tuning["datasets"]["tiny"]
    assert found["Pop"]["space"] == {} and found["Pop"]["chosen"] is None
    assert found["VLM4Rec"]["space"] == {"profile_aggregation": ["mean", "max"]}
    for label in ("LightGCN", "VLM4Rec"):
        trial_values = [t["valid"]["recall@20"] for t in found[label]["trials"]]
        best = found[label]["trials"][trial_values.index(max(trial_values))]
        assert found[label]["chosen"] == best["params"]
        assert found[label]["chosen_valid"] == max(trial_values)
    for cell in plan(spec)[0].trials:  # trials never touched the test split
        record = json.loads(record_path(out, cell).read_text())
        assert record["result"]["test_result"] == {} and cell.seed == 7
        assert record["cell"]["stage"] == "trial"
    chosen = found["LightGCN"]["chosen"]
    for seed in (1, 2):
        record = json.loads((out / "runs" / "tiny" / "LightGCN" / f"seed-{seed}.json").read_text())
        assert record["result"]["test_result"]
        assert record["cell"]["overrides"]["n_layers"] == chosen["n_layers"]
    assert cli.main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "Tuning: grid search, trials on seed 7, ranked by validation" in report
    assert "| LightGCN | n_layers: 1, 2; reg_weight: 0.0001 | 2/2 |" in report
    assert (out / "tuning.csv").read_text().count("\n") == 5  # header + 4 trials

    again_trials, again_finals = run_tune(spec, out)  # everything resumes
    assert again_trials.counts == {"resumed": 4} and again_finals.counts == {"resumed": 6}


def test_budgets_in_trials_and_minutes(tiny_dataset, tmp_path):
    _, _, overrides = tiny_dataset
    search = {"method": "random", "seed": 3, "max_trials": 3,
              "space": {"LightGCN": {"n_layers": [1, 2, 3], "reg_weight": [1e-3, 1e-4]}}}
    spec = load_spec(tune_spec(tmp_path, overrides, {"LightGCN": {}}, search, seeds=[1]))
    found = plan(spec)[0]
    assert len(found.trials) == 3 and found.stopped == "max_trials 3 of 6 grid points"
    assert [t.overrides["n_layers"] for t in found.trials] == [
        p["n_layers"] for p in grid_points(found.space, "random", 3)[:3]]
    trials, _ = run_tune(spec, tmp_path / "out", max_minutes=1e-6)
    assert trials.counts == {"ok": 1}  # the budget is spent after the first trial
    stopped = read_tuning(tmp_path / "out")["datasets"]["tiny"]["LightGCN"]["stopped"]
    assert stopped.startswith("max_minutes 1e-06")


def test_a_bad_search_space_stops_before_any_trial(tiny_dataset, tmp_path, capsys):
    _, _, overrides = tiny_dataset
    search = {"space": {"BPR": {"reg_weight": [0.1, 0.01]}}}  # RecBole's BPR reads no reg_weight
    path = tune_spec(tmp_path, overrides, {"BPR": {}}, search)
    with pytest.raises(GridConfigError, match="'reg_weight' .* is not read by BPR"):
        run_tune(load_spec(path), tmp_path / "out")
    assert not (tmp_path / "out" / "trials").exists()
    assert cli.main(["tune", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "is not read by BPR" in capsys.readouterr().err


def test_search_block_errors_name_the_field(tmp_path):
    bad = {"models": {"BPR": {}}, "datasets": ["tiny"], "search": {"method": "tpe"}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(SpecError, match=r"search.method must be one of \('grid', 'random'\)"):
        load_spec(path)
    bad["search"] = {"space": {"LightGCN": {"n_layers": []}}}
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(SpecError, match="'LightGCN' is not a model label"):
        load_spec(path)
