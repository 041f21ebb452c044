"""One test per RecBole 1.2.1 breakage that compat.py shims, and the shims' scope."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recbole_vlm4rec import compat

# tests/conftest.py calls compat.install(), as every entry point does.


def test_numpy_aliases_reach_recbole_only():
    from recbole.evaluator.metrics import Hit

    # numpy itself is untouched; RecBole's Config builds and its metrics find np.float / np.bool
    assert "float_" not in vars(np) and "float" not in vars(np)
    config = compat.config_class()(model="BPR", dataset="ml-100k", config_dict={"gpu_id": ""})
    assert config["model"] == "BPR"
    assert "float_" not in vars(np)
    hit = Hit.__new__(Hit)
    hit.topk = [2]
    result = hit.metric_info(np.array([[False, True], [False, False]]))
    np.testing.assert_array_equal(result[:, -1], [1.0, 0.0])


def test_every_recbole_module_using_removed_numpy_names_gets_the_view():
    import re
    from pathlib import Path

    import recbole

    root = Path(recbole.__file__).parent
    pattern = re.compile(r"np\.(float|int|bool|complex|object|str|long|unicode)(?![_0-9a-zA-Z])")
    using = {".".join(("recbole", *p.relative_to(root).with_suffix("").parts))
             for p in root.rglob("*.py") if pattern.search(p.read_text())}
    using.discard("recbole.config.configurator")  # compatibility_settings: made a no-op
    covered = set(compat.RECBOLE_MODULES_USING_NUMPY_ALIASES) | set(compat.RECBOLE_MODULES_NOT_USED)
    assert using <= covered, sorted(using - covered)


def test_dok_matrix_update_restored():
    matrix = sp.dok_matrix((3, 3), dtype=np.float32)
    matrix._update({(0, 1): 1.0, (2, 0): 2.0})
    np.testing.assert_array_equal(matrix.toarray(), [[0, 1, 0], [0, 0, 0], [2, 0, 0]])
    assert matrix.nnz == 2


def test_pandas_3_is_refused_with_the_fix(monkeypatch):
    import pandas as pd

    from recbole_vlm4rec import compat

    monkeypatch.setattr(pd, "__version__", "3.1.1")
    with pytest.raises(ImportError, match=r"pip install 'pandas>=2.2,<3'"):
        compat._require_pandas_below_3()


def test_missing_values_in_atomic_files_load_as_recbole_intends(tiny_dataset, build_pipeline):
    """Empty seq cells, missing floats and missing tokens in a .item file (what pandas 3 breaks)."""
    root, name, overrides = tiny_dataset
    lines = ["item_id:token\ttitle:token_seq\tprice:float\tbrand:token\tvec:float_seq"]
    lines += [f"i{i}\tred shoe\t10.0\tacme\t1.0 2.0" for i in range(0, 40, 2)]
    lines += [f"i{i}\tblue hat\t20.0\tbeta\t3.0 4.0" for i in range(3, 40, 2)]
    lines.append("i1\t\t\t\t")  # every feature missing
    (root / name / f"{name}.item").write_text("\n".join(lines) + "\n")
    load = {"inter": ["user_id", "item_id"], "item": ["item_id", "title", "price", "brand", "vec"]}
    _, data, *_ = build_pipeline("BPR", name, {**overrides, "load_col": load, "normalize_all": False})
    item = data.item_feat
    row = data.field2token_id["item_id"]["i1"]
    # empty sequences become all-padding rows once RecBole packs them into tensors
    assert not item["title"][row].any() and not item["vec"][row].any()
    assert item["title"][data.field2token_id["item_id"]["i3"]].all()
    assert float(item["price"][row]) == pytest.approx((20 * 10.0 + 19 * 20.0) / 39)  # the mean
    assert int(item["brand"][row]) == 0  # [PAD]
    assert data.field2id_token["brand"][int(item["brand"][data.field2token_id["item_id"]["i3"]])] == "beta"


class NotATensor:  # stands for the pickled Config in RecBole checkpoints
    pass


def test_own_checkpoints_load_with_pickle_others_stay_weights_only(tmp_path):
    import recbole.trainer.trainer as trainer_module
    from recbole_vlm4rec import compat

    trusted, other = tmp_path / "saved", tmp_path / "elsewhere"
    for folder in (trusted, other):
        folder.mkdir()
        torch.save({"config": NotATensor(), "w": torch.ones(1)}, folder / "m.pth")
    compat.trust_checkpoint_dir(trusted)
    assert isinstance(trainer_module.torch.load(trusted / "m.pth")["config"], NotATensor)
    with pytest.raises(pickle.UnpicklingError):
        trainer_module.torch.load(other / "m.pth")


def test_our_config_ignores_sys_argv_recboles_own_still_reads_it(monkeypatch):
    from recbole.config import Config

    monkeypatch.setattr(sys, "argv", ["prog", "--epochs=7", "--learning_rate=0.5"])
    config = compat.config_class()(model="BPR", dataset="ml-100k", config_dict={"gpu_id": ""})
    assert config["epochs"] != 7 and config["learning_rate"] != 0.5
    assert Config(model="BPR", dataset="ml-100k", config_dict={"gpu_id": ""})["epochs"] == 7
    # checkpoints pickle it: as the plain dict of its values, rebuilt by config_from_dict
    values = pickle.loads(pickle.dumps(config))
    assert type(values) is dict and values == config.final_config_dict
    rebuilt = compat.config_from_dict(values)
    assert isinstance(rebuilt, Config) and rebuilt["epochs"] == config["epochs"]
    assert rebuilt.model == "BPR" and "Training Hyper Parameters" in str(rebuilt)


@pytest.mark.parametrize("cuda", [False, True])
def test_use_gpu_says_whether_the_run_uses_a_gpu(monkeypatch, cuda):
    """RecBole's yaml says use_gpu: True; our Config says what the device is."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    config = compat.config_class()(model="BPR", dataset="ml-100k", config_dict={"gpu_id": "0"})
    assert config["device"].type == ("cuda" if cuda else "cpu")
    assert config["use_gpu"] is cuda


def test_traditional_models_evaluate_their_one_epoch_even_with_eval_step(tiny_dataset, build_pipeline):
    from recbole.utils import get_trainer

    _, name, overrides = tiny_dataset
    config, _, train, valid, _, model = build_pipeline("Pop", name, {**overrides, "eval_step": 5})
    trainer = get_trainer(config["MODEL_TYPE"], "Pop")(config, model)
    assert trainer.eval_step == 1
    trainer.fit(train, valid, saved=True, show_progress=False)
    assert (tmp := trainer.saved_model_file) and __import__("os").path.isfile(tmp)


def test_full_run_never_imports_quick_start_or_ray(tiny_dataset):
    """recbole.quick_start imports ray, which breaks on numpy 2; our pipeline must not need it."""
    root, name, overrides = tiny_dataset
    code = (
        "import sys, recbole_vlm4rec.run.runner as r\n"
        "from recbole_vlm4rec import compat\n"
        "compat.install()\n"
        f"r.run('LightGCN', {name!r}, overrides={dict(overrides, epochs=1)!r}, write_results=False)\n"
        "bad = [m for m in ('recbole.quick_start', 'ray') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "clean" in out.stdout


def test_importing_the_package_or_building_a_config_changes_nothing_until_install() -> None:
    """Another RecBole user in the same process keeps RecBole's and numpy's own behaviour however
    much of ours is imported and however many configs are built (the bench precheck builds them):
    every patched function and class attribute is RecBole's own, no warning filter is added,
    Config still reads sys.argv. compat.install() then patches each of them.
    `vlm4rec --help` does not import RecBole at all."""
    script = (
        "import sys, importlib, pkgutil, warnings\n"
        "import numpy as np, scipy.sparse as sp, torch\n"
        "import recbole_vlm4rec, recbole_vlm4rec.cli as cli\n"
        "from recbole_vlm4rec import compat\n"
        "cli.build_parser()\n"
        "assert 'recbole' not in sys.modules, 'recbole imported by --help'\n"
        "for info in pkgutil.walk_packages(recbole_vlm4rec.__path__, 'recbole_vlm4rec.'):\n"
        "    importlib.import_module(info.name)\n"
        "filters = list(warnings.filters)\n"
        "from recbole.config import Config\n"
        "from recbole.evaluator.collector import Collector\n"
        "from recbole.model.general_recommender.itemknn import ItemKNN\n"
        "from recbole.trainer import TraditionalTrainer\n"
        "from recbole.trainer.trainer import AbstractTrainer, Trainer\n"
        "from recbole.data.dataloader import FullSortEvalDataLoader, NegSampleEvalDataLoader\n"
        "import recbole.trainer.trainer as trainer_module, recbole.evaluator.metrics as metrics\n"
        "def recboles_own():\n"
        "    return {'Config.compatibility_settings': Config.compatibility_settings,\n"
        "            'AbstractTrainer.__init__': AbstractTrainer.__init__,\n"
        "            'Trainer.__init__': Trainer.__init__, 'Trainer.fit': Trainer.fit,\n"
        "            'Trainer._map_reduce': Trainer._map_reduce,\n"
        "            'FullSortEvalDataLoader.__init__': FullSortEvalDataLoader.__init__,\n"
        "            'NegSampleEvalDataLoader.__init__': NegSampleEvalDataLoader.__init__,\n"
        "            'Collector.eval_batch_collect': Collector.eval_batch_collect,\n"
        "            'ItemKNN.__init__': ItemKNN.__init__,\n"
        "            'TraditionalTrainer.__init__': TraditionalTrainer.__init__,\n"
        "            'trainer torch': trainer_module.torch, 'metrics numpy': metrics.np,\n"
        "            'dok_matrix._update': getattr(sp.dok_matrix, '_update', None)}\n"
        "before = recboles_own()\n"
        "from recbole_vlm4rec.run.protocol import build_config, prepare_run\n"
        f"build_config('Pop', 'ml-100k', overrides={{'gpu_id': ''}})\n"
        f"prepare_run('BPR', 'ml-100k', overrides={{'gpu_id': ''}}, build_features=False)\n"
        "assert recboles_own() == before, [k for k, v in recboles_own().items() if before[k] != v]\n"
        "assert before['trainer torch'] is torch and before['metrics numpy'] is np\n"
        "assert before['dok_matrix._update'] is None\n"
        "assert warnings.filters == filters, 'a warning filter was added'\n"
        "assert 'float_' not in vars(np) and 'float' not in vars(np)\n"
        "assert Config._load_cmd_line.__module__.startswith('recbole.')\n"
        "assert not compat.installed()\n"
        "from recbole_vlm4rec.run.runner import build_run\n"
        "try:\n"
        "    build_run(None, None)\n"
        "except compat.NotInstalledError as error:\n"
        "    assert 'compat.install()' in str(error)\n"
        "else:\n"
        "    raise AssertionError('a run was built on an unpatched RecBole')\n"
        "compat.install()\n"
        "after = recboles_own()\n"
        "changed = sorted(k for k in after if after[k] is not before[k])\n"
        "assert changed == sorted(before), sorted(set(before) - set(changed))\n"
        "assert warnings.filters != filters and 'float_' not in vars(np)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


BLOCK_OUR_PACKAGE = (
    "import sys\n"
    "class Blocked:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'recbole_vlm4rec':\n"
    "            raise ImportError(f'{name} is not importable here')\n"
    "sys.meta_path.insert(0, Blocked())\n"
)


def test_checkpoints_pickle_no_class_of_ours_and_still_export(tiny_dataset, tmp_path, capsys):
    """A checkpoint's config is a plain dict: it loads with torch.load where recbole_vlm4rec
    cannot be imported, its pickle names no class of ours, and `vlm4rec export --checkpoint`
    rebuilds the run from it."""
    import pickletools
    import zipfile

    from recbole_vlm4rec import cli
    from recbole_vlm4rec.run.runner import run

    _, name, overrides = tiny_dataset
    result = run("BPR", name, overrides={**overrides, "epochs": 1}, write_results=False)
    with zipfile.ZipFile(result.checkpoint) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    modules = {str(arg) for op, arg, _ in pickletools.genops(pickled)
               if op.name in ("GLOBAL", "SHORT_BINUNICODE", "BINUNICODE") and arg}
    assert not [m for m in modules if "recbole_vlm4rec" in m], modules
    code = BLOCK_OUR_PACKAGE + (
        "import torch\n"
        "try:\n"
        "    import recbole_vlm4rec\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('recbole_vlm4rec importable')\n"
        f"state = torch.load({result.checkpoint!r}, weights_only=False)\n"
        "assert type(state['config']) is dict, type(state['config'])\n"
        "print(state['config']['model'], state['config']['dataset'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["BPR", name]
    out = tmp_path / "bundle"
    assert cli.main(["export", "--checkpoint", result.checkpoint, "--out", str(out),
                     "--top-n", "5"]) == 0, capsys.readouterr().err
    assert "topn bundle of BPR written to" in capsys.readouterr().out
    assert (out / "bundle.json").is_file()


def test_two_runs_started_together_keep_their_own_checkpoints(tiny_dataset, build_pipeline):
    # RecBole names a checkpoint by the second: two seeds launched at once in one folder wrote
    # the same file, and each run tested the other's best weights (seen on the posters export).
    from pathlib import Path

    from recbole.utils import get_trainer

    _, name, overrides = tiny_dataset
    files = []
    for seed in (1, 2):
        config, *_, model = build_pipeline("BPR", name, {**overrides, "seed": seed})
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        files.append(trainer.saved_model_file)
    assert files[0] != files[1]
    assert all(Path(f).parent == Path(overrides["checkpoint_dir"]) for f in files)
