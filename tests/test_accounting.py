"""Config accounting: every key a run is given is read by RecBole, the dataset or the run's model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recbole_vlm4rec import cli
from recbole_vlm4rec.formats import paths
from recbole_vlm4rec.run.accounting import (ConfigKeyError, ConfigValueError, known_keys,
                                            read_yaml, source_keys)
from recbole_vlm4rec.run.protocol import prepare_run


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = cli.main(["run", *args])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("args, message", [
    (["--profile_agregation=max"],
     "unknown config key 'profile_agregation' (--profile_agregation=max); did you mean "
     "profile_aggregation?"),
    (["--model=BPR", "--reg_weight=1.0"], "config key 'reg_weight' (--reg_weight=1.0) is not read "
     "by BPR (a setting of "),
    (["--model=BPR", "--epochs=abc"], "config key 'epochs' (--epochs=abc) takes an integer"),
    (["--model=BPR", "--learning_rate=abc"], "config key 'learning_rate' (--learning_rate=abc) takes a number"),
    (["--profile_aggregation=maxx"],
     "config key 'profile_aggregation' (--profile_aggregation=maxx) takes one of mean, max; "
     "got 'maxx'"),
    (["--model=BPR", "--learner=adamm"], "config key 'learner' (--learner=adamm) takes one of adam, adamw, sgd"),
    (["--eval_history_mask=train_only"], "config key 'eval_history_mask' (--eval_history_mask=train_only) "
     "takes one of train_valid, train; got 'train_only'"),
])
def test_cli_mistakes_are_one_line_and_exit_2(tiny_dataset, capsys, args, message):
    _, name, overrides = tiny_dataset
    given = [f"--data_path={overrides['data_path']}", "--item_features={'emb': None}"]
    code, err = run_cli([f"--dataset={name}", *given, *args], capsys)
    assert code == 2
    assert err.startswith("error: " + message), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_keys_the_model_reads_are_accepted(tiny_dataset):
    _, name, overrides = tiny_dataset
    prepared = prepare_run("LightGCN", name, overrides={**overrides, "reg_weight": 0.01,
                                                        "n_layers": 2}, build_features=False)
    assert prepared.config["reg_weight"] == 0.01 and prepared.accounting.not_read == {}
    prepare_run("VLM4Rec", name, overrides={**overrides, "profile_aggregation": "max",
                                            "epochs": 3, "learning_rate": 1}, build_features=False)


def test_a_user_config_file_is_checked_like_the_command_line(tiny_dataset, tmp_path):
    _, name, overrides = tiny_dataset
    mine = tmp_path / "mine.yaml"
    mine.write_text("n_layer: 3\n")
    with pytest.raises(ConfigKeyError, match=r"unknown config key 'n_layer' \(n_layer in the "
                       r"user: .*mine.yaml layer\); did you mean n_layers\?"):
        prepare_run("LightGCN", name, [str(mine)], overrides, build_features=False)
    mine.write_text("n_layers: 1.5\n")
    with pytest.raises(ConfigValueError, match=r"'n_layers' \(n_layers in the user: .*mine.yaml layer\) takes an integer"):
        prepare_run("LightGCN", name, [str(mine)], overrides, build_features=False)


def test_a_shared_dataset_layer_reports_keys_this_model_does_not_read(tiny_dataset):
    from recbole_vlm4rec.run.runner import run

    root, name, overrides = tiny_dataset
    layer = root / name / f"{name}.yaml"  # the dataset's own yaml: shared by every model
    layer.write_text("reg_weight: 0.5\n")
    result = run("BPR", name, overrides=overrides)
    assert result.config_accounting == {"not_read": {"reg_weight": "dataset-folder"}}
    saved = json.loads(Path(result.result_file).read_text())
    assert saved["config_accounting"]["not_read"] == {"reg_weight": "dataset-folder"}
    layer.write_text("reg_weigth: 0.5\n")  # a typo is an error in any layer
    with pytest.raises(ConfigKeyError, match="did you mean reg_weight"):
        prepare_run("BPR", name, overrides=overrides, build_features=False)


def test_known_keys_come_from_recbole_and_this_project():
    known = known_keys()
    assert known.general["epochs"].source == "RecBole overall.yaml"
    assert known.general["epochs"].type == "int"
    assert known.general["eval_history_mask"].source == "configs/overall.yaml"
    assert known.general["item_features"].source.startswith("configs/dataset/")
    assert "reg_weight" not in known.general  # RecBole's trainer only warns with it
    assert set(known.by_model["BPR"]) == {"embedding_size"}
    assert {"n_layers", "reg_weight"} <= set(known.by_model["LightGCN"])
    assert "item_feature" not in known.by_model["VLM4RecFusion"]  # overridden, not read


def test_the_source_scan_sees_config_reads():
    found = source_keys([("m.py", 'x = config["alpha"] + self.config[\'beta\']\n')], "test")
    assert set(found) == {"alpha", "beta"}


def test_shipped_yamls_only_set_keys_something_reads():
    """Every shipped model yaml passes for its model, every dataset yaml for every model."""
    from recbole_vlm4rec.models import get_model_class, project_models
    from recbole_vlm4rec.run.accounting import check_keys
    from recbole_vlm4rec.run.protocol import ConfigLayer

    configs = paths.configs_dir()
    models = sorted(project_models()) + ["BPR", "LightGCN", "Pop", "ItemKNN"]
    for model in models:
        layers = [ConfigLayer("overall", configs / "overall.yaml")]
        if (configs / "model" / f"{model}.yaml").is_file():
            layers.append(ConfigLayer("model", configs / "model" / f"{model}.yaml"))
        layers += [ConfigLayer("dataset", path) for path in sorted(configs.glob("dataset/*.yaml"))]
        accounting = check_keys(model, get_model_class(model), layers, {})
        assert accounting.not_read == {}, (model, accounting.not_read)


def test_a_key_another_model_reads_names_every_model_that_reads_it(tiny_dataset, capsys):
    from recbole_vlm4rec.models import all_model_info

    _, name, overrides = tiny_dataset
    readers = sorted(n for n, info in all_model_info().items()
                     if info.declared and "reg_weight" in info.contract.keys())
    given = [f"--data_path={overrides['data_path']}", "--item_features={'emb': None}"]
    code, err = run_cli([f"--dataset={name}", *given, "--model=BPR", "--reg_weight=1.0"], capsys)
    assert code == 2
    assert f"a setting of {', '.join(readers[:6])}" in err, err
