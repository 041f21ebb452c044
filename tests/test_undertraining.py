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
