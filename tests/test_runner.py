"""The run pipeline and run_recbole.py: models by name, config layers, results, clear errors."""

from __future__ import annotations

import json

import pytest
import yaml

import run_recbole
from recbole_vlm4rec.data.registry import UnknownDatasetError
from recbole_vlm4rec.models import UnknownModelError
from recbole_vlm4rec.run.protocol import build_config
from recbole_vlm4rec.run.runner import format_metrics_table, run

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
    assert "has no item feature 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_recbole.main(["--model=BPR", "positional"])


def test_topk_over_the_catalogue_size_is_one_clear_line(tiny_dataset, capsys):
    _, name, overrides = tiny_dataset
    args = [f"--{key}={value}" for key, value in overrides.items() if key != "topk"]
    assert run_recbole.main(["--model=Pop", f"--dataset={name}", *args, "--topk=[5,100000]"]) == 2
    err = capsys.readouterr().err
    assert "topk [5, 100000]: [100000] ask for more items than the catalogue of tiny has" in err
    assert "--topk=\"[5]\"" in err and "Traceback" not in err


def test_results_record_each_config_layer_and_feature(tiny_dataset):
    _, name, overrides = tiny_dataset
    result = run("VLM4Rec", name, overrides=overrides)
    roles = [layer["role"] for layer in result.config_layers]
    assert roles[:2] == ["overall", "model"] and all(len(l["sha256"]) == 64 for l in result.config_layers)
    assert result.features["emb"]["items_covered"] == 40 and len(result.features["emb"]["sha256"]) == 64


def test_a_missing_protocol_layer_is_an_error_not_a_fallback(tiny_dataset, tmp_path, monkeypatch):
    from recbole_vlm4rec.formats import paths

    _, name, overrides = tiny_dataset
    monkeypatch.setattr(paths, "PACKAGE_DIR", tmp_path / "broken-install")
    with pytest.raises(paths.ProtocolMissingError, match="shipped protocol is missing"):
        build_config("BPR", name, overrides=overrides)


def test_feature_written_by_encode_is_what_the_next_run_uses(tiny_dataset, monkeypatch):
    """A declared item-text feature that `vlm4rec encode` wrote is used as written, not rebuilt."""
    import hashlib

    from recbole_vlm4rec import cli
    from recbole_vlm4rec.encoding import encode

    root, name, overrides = tiny_dataset
    (root / name / f"{name}.item").write_text(
        "item_id:token\ttitle:token_seq\n" + "".join(f"i{i}\tthing {i}\n" for i in range(40)))

    class HashEncoder:
        def __init__(self, spec, device=None, batch_size=64, processes=1):
            pass

        def close(self):
            pass

        def encode(self, texts, show_progress=True):
            import numpy as np
            return np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], np.uint8)
                             for t in texts]).astype("float32") + 1

    monkeypatch.setattr(encode, "TextEncoder", HashEncoder)
    features = root / name / "features"
    assert cli.main(["encode", name, "--data-path", str(root), "--template", "my own {title}",
                     "--feature", "txt", "--quiet"]) == 0
    written = hashlib.sha256((features / "txt.npy").read_bytes()).hexdigest()
    declared = {"emb": None, "txt": {"build": "item_text", "template": "{title}"}}
    result = run("VLM4Rec", name, overrides={**overrides, "item_features": declared,
                                             "item_feature": "txt"})
    assert result.features["txt"]["sha256"] == written
    assert result.features["txt"]["origin"] == "vlm4rec encode"


CONFIGURATIONS = [
    ("VLM4Rec", {}),
    ("VLM4Rec", {"item_feature": "nope"}),
    ("VBPR", {"content_features": "emb,txt"}),  # a string list: once skipped by bench only
    ("VBPR", {"content_features": ["emb"]}),
    ("VBPR", {"content_features": "[emb]"}),
    ("FREEDOM", {"content_features": ["txt"]}),
    ("NoSuchModel", {}),
    ("BPR", {"dataset": "tinny"}),
]


@pytest.mark.parametrize("model, extra", CONFIGURATIONS)
def test_bench_precheck_and_run_accept_and_refuse_the_same(tiny_dataset, model, extra):
    from recbole_vlm4rec.benchmark.grid import precheck
    from recbole_vlm4rec.benchmark.spec import Cell
    from recbole_vlm4rec.run.accounting import ConfigError

    _, name, overrides = tiny_dataset
    extra = dict(extra)
    dataset = extra.pop("dataset", name)
    settings = {**overrides, **extra, "epochs": 1}
    try:  # missing data: a skipped record; a configuration no run accepts: raised (check_cells)
        refused_by_bench = precheck(Cell("x", model, dataset, 0, settings, ())) is not None
    except (UnknownModelError, ConfigError):
        refused_by_bench = True
    try:
        run(model, dataset, overrides=settings, write_results=False)
        refused_by_run = False
    except (UnknownModelError, UnknownDatasetError, KeyError, ConfigError):
        refused_by_run = True
    assert refused_by_bench == refused_by_run


def test_console_shows_what_differs_from_the_protocol_and_the_log_keeps_the_config(tiny_dataset):
    """RecBole's ~150-line config dump goes to the log file only; the console names each setting
    given for the run that differs from the protocol. use_gpu says what the run uses (CPU here),
    and LightGCN's torch sparse-tensor deprecation warning is not printed."""
    import subprocess
    import sys
    from pathlib import Path

    from recbole_vlm4rec.formats.paths import configs_dir

    _, name, overrides = tiny_dataset
    args = [f"--{key}={value}" for key, value in {**overrides, "state": "INFO", "epochs": 1}.items()]
    done = subprocess.run([sys.executable, str(Path(run_recbole.__file__).resolve()),
                           "--model=LightGCN", f"--dataset={name}", *args],
                          capture_output=True, text=True, timeout=600)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    protocol = yaml.safe_load((configs_dir() / "overall.yaml").read_text())
    assert f"differs from the protocol: epochs = 1 (protocol: {protocol['epochs']})" in console
    assert "Hyper Parameters" not in console and "SparseTensor" not in console
    log_file = Path(console.split("full config: ")[1].split()[0])
    logged = log_file.read_text()
    assert "General Hyper Parameters" in logged and "use_gpu = False" in logged
    assert "device = cpu" in logged
