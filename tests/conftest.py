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


from recbole_vlm4rec.formats.features import save_feature  # noqa: E402


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


@pytest.fixture
def build_pipeline():
    """Build (config, dataset, train, valid, test, model) exactly as runner.run does, untrained."""
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_vlm4rec.models import get_model_class
    from recbole_vlm4rec.run.protocol import build_config
    from recbole_vlm4rec.run.runner import create_dataset

    def build(model: str, dataset: str, overrides: dict[str, Any]):
        config = build_config(model, dataset, overrides=overrides)
        init_seed(config["seed"], config["reproducibility"])
        data = create_dataset(config)
        train, valid, test = data_preparation(config, data)
        instance = get_model_class(model)(config, train._dataset)
        return config, data, train, valid, test, instance

    return build


def read_by(model_name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The settings in ``overrides`` that ``model_name`` reads: a run refuses another model's
    keys (run/accounting.py), e.g. FREEDOM's feat_embed_dim given to VBPR."""
    from recbole_vlm4rec.models import get_model_class
    from recbole_vlm4rec.run.accounting import known_keys

    known = known_keys()
    own = known.model_keys(model_name, get_model_class(model_name))
    return {key: value for key, value in overrides.items() if key in known.general or key in own}


def write_predefined_split(root: Path, name: str, splits: dict[str, list[tuple[str, str]]]) -> None:
    """``<name>.train/.valid/.test.inter`` for RecBole's ``benchmark_filename``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for part, pairs in splits.items():
        lines = ["user_id:token\titem_id:token"] + [f"{u}\t{i}" for u, i in pairs]
        (folder / f"{name}.{part}.inter").write_text("\n".join(lines) + "\n")
