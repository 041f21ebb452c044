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


def write_predefined_split(root: Path, name: str, splits: dict[str, list[tuple[str, str]]]) -> None:
    """``<name>.train/.valid/.test.inter`` for RecBole's ``benchmark_filename``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for part, pairs in splits.items():
        lines = ["user_id:token\titem_id:token"] + [f"{u}\t{i}" for u, i in pairs]
        (folder / f"{name}.{part}.inter").write_text("\n".join(lines) + "\n")
