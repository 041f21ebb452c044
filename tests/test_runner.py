"""The run pipeline and run_recbole.py: models by name, config layers, results, clear errors."""

from __future__ import annotations

import json

import pytest
import yaml

import run_recbole
from recbole_vlm4rec.data.registry import UnknownDatasetError
from recbole_vlm4rec.models import UnknownModelError
from recbole_vlm4rec.runner import build_config, format_metrics_table, run

METRICS = {f"{m}@{k}" for m in ("recall", "ndcg", "hit", "mrr") for k in (10, 20)}


@pytest.mark.parametrize("model", ["VLM4Rec", "BPR", "LightGCN"])
def test_models_run_through_recboles_trainer_and_write_results(tiny_dataset, model):
    _, name, overrides = tiny_dataset
    result = run(model, name, overrides=overrides)
    assert set(result.test_result) == METRICS
    assert set(result.best_valid_result) == METRICS
    assert all(0.0 <= v <= 1.0 for v in result.test_result.values())
    saved = json.loads(open(result.result_file).read())
    assert saved["model"] == model and saved["dataset"] == name
    assert saved["test_result"] == result.test_result
    assert saved["config"]["eval_args"]["mode"] == {"valid": "full", "test": "full"}
    assert "recbole" in saved["environment"]
    table = format_metrics_table(result)
    assert f"{model} on {name}" in table and "recall@20" in table


def test_config_layers_file_then_overrides(tiny_dataset, tmp_path):
    _, name, overrides = tiny_dataset
    assert build_config("VLM4Rec", name, overrides=overrides)["profile_aggregation"] == "mean"
    user_file = tmp_path / "mine.yaml"
    user_file.write_text(yaml.safe_dump({"profile_aggregation": "max", "topk": [5]}))
    config = build_config("VLM4Rec", name, [str(user_file)], {**overrides, "topk": "[3]"})
    assert config["profile_aggregation"] == "max"  # user file beats configs/model/VLM4Rec.yaml
    assert config["topk"] == [3]  # --key=value beats files
    assert config["valid_metric"] == "Recall@20"  # configs/overall.yaml beats RecBole's MRR@10


def test_default_dataset_layers_are_loaded():
    config = build_config("VLM4Rec", "ml-100k", overrides={"gpu_id": ""})
    assert config["default_item_feature"] == "text"
    assert config["data_path"].endswith("dataset_example/ml-100k")


def test_unknown_model_and_dataset_errors_say_what_exists(tiny_dataset):
    _, name, overrides = tiny_dataset
    with pytest.raises(UnknownModelError, match=r"(?s)Did you mean LightGCN.*VLM4Rec.*BPR"):
        build_config("LightGNC", name, overrides=overrides)
    with pytest.raises(UnknownDatasetError, match=r"(?s)unknown dataset 'tinny'.*Did you mean tiny"):
        build_config("BPR", "tinny", overrides=overrides)


def test_run_recbole_cli(tiny_dataset, capsys):
    _, name, overrides = tiny_dataset
    assert run_recbole.main(["--model=NoSuchModel", f"--dataset={name}"]) == 2
    assert "unknown model 'NoSuchModel'" in capsys.readouterr().err
    args = [f"--{key}={value}" for key, value in overrides.items()]  # as a shell would pass them
    assert run_recbole.main(["--model=VLM4Rec", f"--dataset={name}", *args]) == 0
    out = capsys.readouterr().out
    assert "VLM4Rec on tiny" in out and "results written to" in out
    assert run_recbole.main(["--model=VLM4Rec", *args, "--item_feature=nope"]) == 2
    assert "declares no item feature 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_recbole.main(["--model=BPR", "positional"])
