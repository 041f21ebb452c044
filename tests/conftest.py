"""Small fixtures written on the fly: no network, no ../shared, no large downloads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Keep runs quiet and deterministic on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


from recbole_vlm4rec import compat  # noqa: E402
from recbole_vlm4rec.formats.features import save_feature  # noqa: E402

# Where the suite's runs start: every RecBole patch, as vlm4rec and run_recbole.py install them
# (tests/test_compat.py checks in a fresh process that nothing is patched before this call).
compat.install()


def write_inter(folder: Path, name: str, rows: list[tuple[str, str, float, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.inter"
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def random_interactions(n_users: int, n_items: int, per_user: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for t, i in enumerate(rng.choice(n_items, size=per_user, replace=False)):
            rows.append((f"u{u}", f"i{i}", float(rng.integers(1, 6)), 1000 * u + t))
    return rows


@pytest.fixture
def tiny_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A 30-user / 40-item dataset with a random 8-d feature 'emb'; returns (root, name, overrides).

    Runs happen inside tmp_path so RecBole's ./log and ./saved land there.
    """
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "datasets"
    name = "tiny"
    write_inter(root / name, name, random_interactions(30, 40, 10))
    rng = np.random.default_rng(1)
    tokens = [f"i{i}" for i in range(40)]
    rng.shuffle(tokens)
    save_feature(root / name / "features", "emb", rng.normal(size=(40, 8)), tokens)
    overrides: dict[str, Any] = {
        "data_path": str(root),
        "checkpoint_dir": str(tmp_path / "saved"),
        "results_dir": str(tmp_path / "results"),
        "show_progress": False,
        "item_features": {"emb": None},
        "default_item_feature": "emb",
        "epochs": 2,
        "state": "WARNING",
        "gpu_id": "",
    }
    return root, name, overrides


# Recall@10 a run must reach on ``taste_groups``: the ideal ranking scores 1.0 (a user's ~9 unseen
# group items fill the top 10), a random ranking of the ~29 candidates about 0.34.
LEARNED_RECALL_AT_10 = 0.8


@pytest.fixture
def taste_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A dataset with signal: 40 users, 40 items in two taste groups of 20 (items i0-i19, i20-i39);
    user u takes 12 items of group u % 2. Item features 'emb' (8-d) and 'txt' (5-d) are the
    group's one-hot plus noise. A model that learns from interactions or content ranks the
    user's unseen group items first (recall@10 near 1); one that does not, at random (~0.34).
    Returns (root, name, overrides); the overrides carry every model's size settings (hand each
    run ``read_by(model, overrides)``) and train long enough to learn (30 epochs, rate 0.05)."""
    monkeypatch.chdir(tmp_path)
    root, name = tmp_path / "datasets", "groups"
    rng = np.random.default_rng(0)
    rows = []
    for u in range(40):
        group = np.arange(20) + 20 * (u % 2)
        rows += [(f"u{u}", f"i{i}", 5.0, 1000 * u + t)
                 for t, i in enumerate(rng.choice(group, size=12, replace=False))]
    write_inter(root / name, name, rows)
    tokens = [f"i{i}" for i in range(40)]
    one_hot = np.eye(2)[np.arange(40) // 20]
    for feature, dim in (("emb", 8), ("txt", 5)):
        vectors = np.hstack([one_hot, np.zeros((40, dim - 2))])
        save_feature(root / name / "features", feature,
                     vectors + rng.normal(scale=0.3, size=(40, dim)), tokens)
    overrides: dict[str, Any] = {
        "data_path": str(root), "checkpoint_dir": str(tmp_path / "saved"),
        "results_dir": str(tmp_path / "results"), "show_progress": False, "state": "WARNING",
        "gpu_id": "", "item_features": {"emb": None, "txt": None}, "default_item_feature": "emb",
        "content_features": ["emb", "txt"], "epochs": 30, "learning_rate": 0.05,
        "embedding_size": 8, "feat_embed_dim": 8, "latent_dim": 6, "knn_k": 3,
    }
    return root, name, overrides


@pytest.fixture
def build_pipeline():
    """Build (config, dataset, train, valid, test, model), untrained, through the run layer a
    user's run goes through (run/protocol.prepare_run, run/runner.build_run): the same key and
    value checks, declared features, top-k check, cold-start protocol and masking."""
    from recbole_vlm4rec.run.protocol import prepare_run
    from recbole_vlm4rec.run.runner import build_run

    def build(model: str, dataset: str, overrides: dict[str, Any]):
        prepared = prepare_run(model, dataset, overrides=overrides)
        built = build_run(prepared.config, prepared.model_class)
        return (built.config, built.dataset, built.train_data, built.valid_data, built.test_data,
                built.model)

    return build


def read_by(model_name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``overrides`` that this model reads: a run refuses another model's keys
    (run/accounting.py), e.g. FREEDOM's feat_embed_dim given to VBPR, so fixtures that serve
    several models hand each only its own."""
    from recbole_vlm4rec.models import get_model_class
    from recbole_vlm4rec.run.accounting import known_keys

    known = known_keys()
    own = known.model_keys(model_name, get_model_class(model_name))
    return {key: value for key, value in overrides.items() if key in known.general or key in own}


def metrics_by_hand(checkpoint: str | Path, k: int) -> dict[str, float]:
    """A run's test recall@k and mrr@k recomputed outside RecBole's evaluator, from its checkpoint: the model
    the run evaluated scores every test user; each user's training items (and validation items,
    unless the run's ``eval_history_mask`` is ``train``) are excluded, test positives never; the
    top k are taken as the docs define the ranking (ties by the run's seeded tie-break,
    formats/ranking.py); recall is hits over distinct test items, mrr one over the rank of the
    first hit (0 without one), each averaged over test users."""
    import torch
    from recbole.data.interaction import Interaction

    from recbole_vlm4rec.formats.ranking import tie_safe_topk
    from recbole_vlm4rec.models import get_model_class
    from recbole_vlm4rec.run.runner import build_run

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = compat.config_from_dict(state["config"])
    built = build_run(config, get_model_class(config["model"]))
    built.model.load_state_dict(state["state_dict"])
    built.model.load_other_parameter(state.get("other_parameter"))
    built.model.eval()
    uid, iid = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]

    def items_by_user(loader: Any) -> dict[int, set[int]]:
        inter = loader._dataset.inter_feat
        found: dict[int, set[int]] = {}
        for user, item in zip(inter[uid].tolist(), inter[iid].tolist()):
            found.setdefault(user, set()).add(item)
        return found

    train, valid, test = map(items_by_user, (built.train_data, built.valid_data, built.test_data))
    users = sorted(test)
    with torch.no_grad():
        scores = built.model.full_sort_predict(Interaction({uid: torch.tensor(users)}))
    scores = scores.view(len(users), -1).clone()
    scores[:, 0] = -torch.inf  # padding
    for row, user in enumerate(users):
        seen = train.get(user, set())
        if config["eval_history_mask"] != "train":
            seen = seen | valid.get(user, set())
        scores[row, sorted(seen - test[user])] = -torch.inf
    top = tie_safe_topk(scores, max(config["topk"]), torch.tensor(users), int(config["seed"]))
    recall, mrr = [], []
    for row, user in enumerate(users):
        hits = [item in test[user] for item in top.indices[row, :k].tolist()]
        recall.append(sum(hits) / len(test[user]))
        mrr.append(1 / (hits.index(True) + 1) if any(hits) else 0.0)
    return {f"recall@{k}": float(np.mean(recall)), f"mrr@{k}": float(np.mean(mrr))}


def write_predefined_split(root: Path, name: str, splits: dict[str, list[tuple[str, str]]]) -> None:
    """``<name>.train/.valid/.test.inter`` for RecBole's ``benchmark_filename``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for part, pairs in splits.items():
        lines = ["user_id:token\titem_id:token"] + [f"{u}\t{i}" for u, i in pairs]
        (folder / f"{name}.{part}.inter").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def benchmark_script():
    """Import a script of benchmarks/ by name (the folder is not a package)."""
    import importlib.util

    def load(name: str) -> Any:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
