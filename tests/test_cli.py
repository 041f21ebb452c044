"""The vlm4rec command: stage registration and the foundation's inspection commands."""

from __future__ import annotations

import re

import pytest

from recbole_vlm4rec import cli


def test_help_lists_every_stage_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("models", "datasets", "features"):
        assert command in out


def test_models_and_datasets_listings(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "VLM4Rec" in out and "LightGCN" in out
    listed = set(re.findall(r"\b[A-Z][A-Za-z]+\b", out.split("general recommenders")[1]))
    assert not listed & {"SASRec", "GRU4Rec", "BERT4Rec", "FM", "DeepFM", "KGAT", "RippleNet"}
    assert cli.main(["datasets"]) == 0
    assert "ml-100k" in capsys.readouterr().out


def test_other_kinds_of_recbole_models_are_refused_with_the_reason():
    from recbole_vlm4rec.models import UnknownModelError, get_model_class

    with pytest.raises(UnknownModelError, match="'SASRec' is one of RecBole's sequential"):
        get_model_class("SASRec")
    with pytest.raises(UnknownModelError, match="'DeepFM' is one of RecBole's context-aware"):
        get_model_class("DeepFM")


# Settings that let RecBole's models run on a 30-user dataset (`vlm4rec models` says so).
SMALL_DATA = {"NCL": {"num_clusters": 5}, "DGCF": {"train_batch_size": 64}}


def test_every_listed_recbole_model_runs_here(tiny_dataset):
    from recbole_vlm4rec.models import recbole_models
    from recbole_vlm4rec.run.runner import run

    _, name, overrides = tiny_dataset
    failures = {}
    for model in sorted(recbole_models()):
        try:
            run(model, name, overrides={**overrides, "epochs": 1, "state": "ERROR",
                                        **SMALL_DATA.get(model, {})}, write_results=False)
        except Exception as error:  # noqa: BLE001  (collected: every failing model is named)
            failures[model] = f"{type(error).__name__}: {error}"
    assert not failures, failures


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
