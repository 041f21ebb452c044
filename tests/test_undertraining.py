"""No silent undertraining: every trained run says how its training ended, and a run stopped by
patience with its best epoch at the start, or capped while still improving, is flagged by name in
the log and the results JSON (run/training.py)."""

from __future__ import annotations

import json
import logging

import pytest
from recbole.trainer import Trainer

from recbole_vlm4rec.run.runner import run
from recbole_vlm4rec.run.training import ValidCurve, undertrained


def crafted_validation(monkeypatch: pytest.MonkeyPatch, scores: list[float]) -> None:
    """RecBole's validation returns these scores, one per evaluation (the real evaluation
    still runs, so the checkpoint and the result dict are RecBole's own)."""
    calls = iter(scores)
    real = Trainer._valid_epoch

    def valid_epoch(self, valid_data, show_progress=False):
        _, result = real(self, valid_data, show_progress=show_progress)
        return next(calls), result

    monkeypatch.setattr(Trainer, "_valid_epoch", valid_epoch)


def read_json(result) -> dict:
    return json.loads(open(result.result_file).read())


def test_a_run_stopped_by_patience_at_best_epoch_0_is_flagged_early_best(tiny_dataset, monkeypatch,
                                                                        caplog):
    _, name, overrides = tiny_dataset
    crafted_validation(monkeypatch, [0.5 - 0.01 * i for i in range(50)])  # only ever worse
    with caplog.at_level(logging.WARNING):
        result = run("BPR", name, overrides={**overrides, "epochs": 50, "stopping_step": 3})
    training = read_json(result)["training"]
    assert training["best_epoch"] == 0 and training["epochs_run"] == 5  # 4 worse evaluations
    assert training["stopped_early"] and not training["capped"]
    assert training["undertrained"]["reason"] == "early-best"
    assert "stopping_step=3" in training["undertrained"]["message"]
    assert "\n" not in training["undertrained"]["message"]
    assert [epoch for epoch, _ in training["valid_curve"]] == [0, 1, 2, 3, 4]
    assert any("undertrained (early-best): BPR" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


def test_a_capped_run_still_improving_is_flagged_still_improving(tiny_dataset, monkeypatch):
    _, name, overrides = tiny_dataset
    crafted_validation(monkeypatch, [0.1, 0.2, 0.3, 0.4])
    result = run("BPR", name, overrides={**overrides, "epochs": 4, "stopping_step": 10})
    training = read_json(result)["training"]
    assert (training["epochs_run"], training["best_epoch"], training["capped"]) == (4, 3, True)
    assert training["undertrained"]["reason"] == "still-improving"
    assert "epoch cap (4)" in training["undertrained"]["message"]


def test_a_run_that_learns_and_stops_by_patience_is_not_flagged(tiny_dataset, monkeypatch,
                                                                caplog):
    _, name, overrides = tiny_dataset
    scores = [0.1, 0.2, 0.3, 0.35, 0.4, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    crafted_validation(monkeypatch, scores)
    with caplog.at_level(logging.WARNING):
        result = run("BPR", name, overrides={**overrides, "epochs": 20, "stopping_step": 3})
    training = read_json(result)["training"]
    assert (training["best_epoch"], training["epochs_run"]) == (4, 9)
    assert training["undertrained"] is None
    assert not any("undertrained" in r.getMessage() for r in caplog.records)


def test_one_pass_models_are_never_flagged(tiny_dataset):
    _, name, overrides = tiny_dataset
    training = read_json(run("VLM4Rec", name, overrides=overrides))["training"]
    assert training["epochs"] == 1 and training["undertrained"] is None


def test_best_epoch_follows_recboles_rule_ties_count_as_better():
    curve = ValidCurve()
    for epoch, score in enumerate([0.2, 0.3, 0.3, 0.1]):
        curve(epoch, score)
    assert curve.best_epoch() == 2  # RecBole saves the checkpoint again on a tie
    assert curve.best_epoch(bigger=False) == 3


@pytest.mark.parametrize("training, reason", [
    ({"epochs": 300, "epochs_run": 12, "best_epoch": 0, "stopped_early": True}, "early-best"),
    ({"epochs": 300, "epochs_run": 14, "best_epoch": 2, "stopped_early": True}, "early-best"),
    ({"epochs": 300, "epochs_run": 15, "best_epoch": 3, "stopped_early": True}, None),
    # eval_step 5: the first three validations are epochs 4, 9, 14
    ({"epochs": 300, "epochs_run": 70, "best_epoch": 14, "stopped_early": True, "eval_step": 5},
     "early-best"),
    ({"epochs": 60, "epochs_run": 60, "best_epoch": 54, "capped": True}, "still-improving"),
    ({"epochs": 60, "epochs_run": 60, "best_epoch": 53, "capped": True}, None),
    ({"epochs": 1, "epochs_run": 1, "best_epoch": 0, "stopped_early": False}, None),
    ({"epochs": 300, "epochs_run": 0, "best_epoch": None, "stopped_early": True}, None),
])
def test_flag_thresholds(training, reason):
    flag = undertrained({"stopping_step": 10, "valid_metric": "recall@20", **training})
    assert (flag or {}).get("reason") == reason


def dip_then_recover(epoch: int) -> float:
    """A validation curve that dips after epoch 0, recovers from epoch 5, peaks at epoch 8."""
    if epoch < 5:
        return 0.5 - 0.01 * epoch
    return 0.6 + 0.01 * min(epoch, 8) - 0.001 * max(epoch - 8, 0)


def rise_and_fall(epoch: int) -> float:
    return 0.3 + 0.01 * min(epoch, 4) - 0.001 * max(epoch - 4, 0)


@pytest.fixture
def curves_by_learning_rate(monkeypatch):
    """Validation scores chosen by the run's learning_rate: 0.0011 dips then recovers (stopped
    early by a patience of 3), anything else rises to epoch 4 then falls (learns, then stops)."""
    real = Trainer._valid_epoch

    def valid_epoch(self, valid_data, show_progress=False):
        _, result = real(self, valid_data, show_progress=show_progress)
        epoch = self.__dict__.setdefault("_crafted_epoch", 0)
        self._crafted_epoch += 1
        curve = dip_then_recover if self.config["learning_rate"] == 0.0011 else rise_and_fall
        return curve(epoch), result

    monkeypatch.setattr(Trainer, "_valid_epoch", valid_epoch)


def test_bench_rerun_undertrained_reruns_only_flagged_cells(tiny_dataset, tmp_path, capsys,
                                                             curves_by_learning_rate):
    import yaml

    from recbole_vlm4rec import cli

    _, _, overrides = tiny_dataset
    spec = {"name": "rerun", "datasets": {"tiny": {}}, "seeds": [1], "isolation": "inprocess",
            "metrics": ["recall@10"],
            "models": {"Dips": {"model": "BPR", "learning_rate": 0.0011},
                       "Learns": {"model": "BPR", "learning_rate": 0.001}},
            "overrides": {**overrides, "epochs": 30, "stopping_step": 3}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "bench"
    assert cli.main(["bench", str(path), "--out", str(out)]) == 0
    dips, learns = (out / "runs/tiny/Dips/seed-1.json", out / "runs/tiny/Learns/seed-1.json")
    first = json.loads(dips.read_text())
    assert first["result"]["training"]["undertrained"]["reason"] == "early-best"
    assert json.loads(learns.read_text())["result"]["training"]["undertrained"] is None
    learns_before = learns.read_text()

    assert cli.main(["bench", str(path), "--out", str(out), "--patience", "10"]) == 2
    assert "--patience applies to --rerun-undertrained" in capsys.readouterr().err
    assert cli.main(["bench", str(path), "--out", str(out), "--rerun-undertrained",
                     "--patience", "10"]) == 0
    printed = capsys.readouterr().out
    assert "undertrained cells rerun: 1 ok" in printed
    rerun = json.loads(dips.read_text())
    assert learns.read_text() == learns_before  # not flagged: not touched
    assert rerun["cell"] == first["cell"]  # still the spec's cell: reported as its result
    assert rerun["rerun"]["because"]["reason"] == "early-best"
    assert rerun["rerun"]["settings"] == {"stopping_step": 10}
    assert rerun["rerun"]["first_run"]["training"]["best_epoch"] == 0
    training = rerun["result"]["training"]
    assert training["stopping_step"] == 10 and training["best_epoch"] == 8
    assert training["undertrained"] is None
    assert rerun["result"]["config"]["stopping_step"] == 10
    assert not list((out / "runs").rglob("*rerun*"))  # the scratch record is not a result
    # nothing flagged any more: a second call reruns nothing
    assert cli.main(["bench", str(path), "--out", str(out), "--rerun-undertrained"]) == 0
    assert "undertrained cells rerun: 0 ok" in capsys.readouterr().out


def test_tune_reruns_undertrained_trials_before_choosing(tiny_dataset, tmp_path,
                                                        curves_by_learning_rate):
    import yaml

    from recbole_vlm4rec.benchmark.grid import record_path
    from recbole_vlm4rec.benchmark.spec import load_spec
    from recbole_vlm4rec.benchmark.tune import plan, read_tuning, run_tune

    _, _, overrides = tiny_dataset
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "tune-rerun", "datasets": {"tiny": {}}, "seeds": [1], "isolation": "inprocess",
        "models": {"BPR": {}}, "overrides": {**overrides, "epochs": 30, "stopping_step": 3},
        "search": {"space": {"BPR": {"learning_rate": [0.0011, 0.001]}}}}))
    spec = load_spec(spec_file)
    out = tmp_path / "tune"
    run_tune(spec, out)
    assert read_tuning(out)["datasets"]["tiny"]["BPR"]["chosen"] == {"learning_rate": 0.001}
    run_tune(spec, out, rerun_undertrained=True, patience=10)
    dipping = plan(spec)[0].trials[0]
    record = json.loads(record_path(out, dipping).read_text())
    assert record["rerun"]["settings"] == {"stopping_step": 10}
    # recovered with more patience, the first grid point wins on validation (0.68 > 0.34)
    assert read_tuning(out)["datasets"]["tiny"]["BPR"]["chosen"] == {"learning_rate": 0.0011}
