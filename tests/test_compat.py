"""One test per RecBole 1.2.1 breakage that compat.py shims."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch



def test_numpy_aliases_let_config_build_and_metrics_run():
    from recbole.evaluator.metrics import Hit

    assert np.float_ is np.float64 and np.bool is np.bool_
    # metrics.py uses np.float / np.bool internally
    hit = Hit.__new__(Hit)
    hit.topk = [2]
    result = hit.metric_info(np.array([[False, True], [False, False]]))
    np.testing.assert_array_equal(result[:, -1], [1.0, 0.0])


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


def test_config_ignores_sys_argv(monkeypatch):
    from recbole.config import Config

    monkeypatch.setattr(sys, "argv", ["prog", "--epochs=7", "--learning_rate=0.5"])
    config = Config(model="BPR", dataset="ml-100k", config_dict={"gpu_id": ""})
    assert config["epochs"] != 7 and config["learning_rate"] != 0.5


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
        "import sys, recbole_vlm4rec.runner as r\n"
        f"r.run('LightGCN', {name!r}, overrides={dict(overrides, epochs=1)!r}, write_results=False)\n"
        "bad = [m for m in ('recbole.quick_start', 'ray') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "clean" in out.stdout


def test_sparse_topk_hits_equal_recboles_dense_computation():
    from recbole.config import Config
    from recbole.evaluator.collector import Collector

    config = Config(model="BPR", dataset="ml-100k", config_dict={
        "gpu_id": "", "metrics": ["Recall", "NDCG", "MRR", "Hit"], "topk": [5, 10]})
    rng = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 300, generator=rng)
    scores[:, 7] = scores[:, 8]  # ties
    positive_u = torch.randint(0, 50, (400,), generator=rng)
    positive_i = torch.randint(1, 300, (400,), generator=rng)
    positive_u[-5:], positive_i[-5:] = positive_u[:5], positive_i[:5]  # duplicate pairs
    results = []
    for collect in (Collector.eval_batch_collect, Collector.eval_batch_collect._original):
        collector = Collector(config)
        collect(collector, scores.clone(), None, positive_u, positive_i)
        results.append(collector.data_struct.get("rec.topk"))
    assert Collector.eval_batch_collect._vlm4rec_shim
    torch.testing.assert_close(results[0], results[1])


def test_shims_wait_for_recbole_and_then_apply_before_it_is_used() -> None:
    """`vlm4rec --help` and the offline stages must not pay for importing RecBole's trainer, yet
    the first `recbole` import anywhere must get every shim before RecBole code runs."""
    script = (
        "import sys\n"
        "import recbole_vlm4rec.cli as cli\n"
        "from recbole_vlm4rec import compat\n"
        "cli.build_parser()\n"
        "assert 'recbole' not in sys.modules and not compat._applied, 'recbole imported early'\n"
        "from recbole.config import Config\n"
        "import numpy as np\n"
        "assert compat._applied and np.float_ is np.float64\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_itemknn_scores_are_csr_and_full_ranking_matches_predict(tiny_dataset, build_pipeline):
    from recbole.data.interaction import Interaction

    _, name, overrides = tiny_dataset
    _, data, *_, model = build_pipeline("ItemKNN", name, overrides)
    assert sp.isspmatrix_csr(model.pred_mat)
    users = torch.arange(1, 6)
    full = model.full_sort_predict(Interaction({"user_id": users})).reshape(len(users), -1)
    items = torch.arange(data.item_num)
    pairs = model.predict(Interaction({"user_id": users.repeat_interleave(data.item_num),
                                       "item_id": items.repeat(len(users))}))
    torch.testing.assert_close(pairs.reshape(len(users), -1).float(), full.float())
