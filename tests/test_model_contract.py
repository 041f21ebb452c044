"""The contract suite: every registered model, ours or a plug-in's, is held to its contract.

Parametrised over the registry, so a new model (one file + one yaml) is covered with no edit here.
Everything is built through the run layer a user's run goes through (prepare_run + build_run).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from recbole_vlm4rec.formats.features import save_feature
from recbole_vlm4rec.models import get_model_info, project_models
from recbole_vlm4rec.models.contract import ITEM_FEATURE_KEY, Setting
from recbole_vlm4rec.run.accounting import ConfigValueError, known_keys
from recbole_vlm4rec.run.protocol import prepare_run
from recbole_vlm4rec.run.runner import build_run

from conftest import random_interactions, write_inter

MODELS = sorted(project_models())
CONFIG_READ = re.compile(r"""config\[\s*["']([A-Za-z_]\w*)["']\s*\]""")
FEATURES = ("emb", "emb2", "emb3")


@pytest.fixture
def contract_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, Any]]:
    """30 users x 40 items, three non-negative features of different sizes; (name, overrides)."""
    monkeypatch.chdir(tmp_path)
    root, name = tmp_path / "datasets", "contract"
    write_inter(root / name, name, random_interactions(30, 40, 10))
    rng = np.random.default_rng(1)
    tokens = [f"i{i}" for i in range(40)]
    for feature, dim in zip(FEATURES, (8, 6, 5)):
        save_feature(root / name / "features", feature, rng.random((40, dim)), tokens)
    overrides = {"data_path": str(root), "checkpoint_dir": str(tmp_path / "saved"),
                 "results_dir": str(tmp_path / "results"), "show_progress": False,
                 "item_features": {f: None for f in FEATURES}, "default_item_feature": "emb",
                 "epochs": 1, "state": "ERROR", "gpu_id": "", "train_batch_size": 64}
    return name, overrides


def with_features(model: str, overrides: dict[str, Any], count: int | None = None) -> dict:
    """``overrides`` naming enough features for ``model`` (``count`` of them when given)."""
    features = get_model_info(model).contract.features
    if features is None:
        return overrides
    if features.key == ITEM_FEATURE_KEY:
        return {**overrides, features.key: "emb"}
    wanted = count if count is not None else max(features.minimum, 2)
    return {**overrides, features.key: list(FEATURES[:wanted])}


def build(model: str, overrides: dict[str, Any]) -> Any:
    prepared = prepare_run(model, "contract", overrides=overrides)
    return build_run(prepared.config, prepared.model_class)


def all_scores(built: Any) -> torch.Tensor:
    """``(n_users - 1, n_items)`` full-ranking scores of every real user (id 0 is padding)."""
    from recbole.data.interaction import Interaction

    model = built.model
    model.eval()
    users = torch.arange(1, built.dataset.user_num)
    with torch.no_grad():
        scores = model.full_sort_predict(Interaction({model.USER_ID: users}))
    return scores.reshape(len(users), -1)


def train_steps(built: Any, steps: int) -> list[float]:
    """``steps`` optimiser steps on the first training batch; the loss before each."""
    model = built.model
    if hasattr(model, "pre_epoch_processing"):
        model.pre_epoch_processing()
    model.train()
    batch = next(iter(built.train_data))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(steps):
        loss = model.calculate_loss(batch)
        loss = sum(loss) if isinstance(loss, tuple) else loss
        losses.append(float(loss.detach()))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return losses


@pytest.mark.parametrize("model", MODELS)
def test_predict_equals_full_sort_predict(model, contract_data):
    from recbole.data.interaction import Interaction

    _, overrides = contract_data
    built = build(model, with_features(model, overrides))
    scores = all_scores(built)
    rng = np.random.default_rng(0)
    users = torch.from_numpy(rng.integers(1, built.dataset.user_num, 50))
    items = torch.from_numpy(rng.integers(1, built.dataset.item_num, 50))
    with torch.no_grad():
        pointwise = built.model.predict(Interaction({built.model.USER_ID: users,
                                                     built.model.ITEM_ID: items}))
    assert torch.allclose(pointwise.float(), scores[users - 1, items].float(), atol=1e-5)
    assert scores.std() > 0, "every score is the same: the model ranks nothing"


@pytest.mark.parametrize("model", MODELS)
def test_training_lowers_the_loss(model, contract_data):
    _, overrides = contract_data
    if not get_model_info(model).trained:
        pytest.skip(f"{model} is closed form: nothing to train")
    built = build(model, with_features(model, overrides))
    losses = train_steps(built, 15)
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("model", MODELS)
def test_one_seed_gives_identical_scores(model, contract_data):
    _, overrides = contract_data
    runs = []
    for _ in range(2):
        built = build(model, with_features(model, overrides))
        if get_model_info(model).trained:
            train_steps(built, 3)
        runs.append(all_scores(built))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("model", MODELS)
def test_a_saved_checkpoint_scores_identically(model, contract_data, tmp_path):
    _, overrides = contract_data
    overrides = with_features(model, overrides)
    built = build(model, overrides)
    if get_model_info(model).trained:
        train_steps(built, 3)
    torch.manual_seed(0)  # models that sample while scoring (LGMRec's Gumbel noise) sample alike
    expected = all_scores(built)
    path = tmp_path / "model.pth"
    torch.save({"state_dict": built.model.state_dict()}, path)
    other = build(model, overrides)
    with torch.no_grad():  # weights unlike the saved ones, so only loading can make them equal
        for parameter in other.model.parameters():
            parameter.normal_()
    other.model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    torch.manual_seed(0)
    assert torch.allclose(all_scores(other), expected, atol=1e-6)


def bad_values(setting: Setting) -> list[Any]:
    """Values the setting must refuse."""
    values: list[Any] = []
    if setting.choices:
        values.append("not-a-choice")
    elif setting.kind in (int, float):
        values.append("abc")
        if setting.minimum is not None:
            values.append(setting.minimum - 1)
        if setting.maximum is not None:
            values.append(setting.maximum + 1)
        if setting.above is not None:
            values.append(setting.above)
        if setting.kind is int:
            values.append(1.5)
    elif setting.kind is bool:
        values.append("maybe")
    if setting.per_feature:
        good = setting.choices[0] if setting.choices else setting.minimum or 1
        values.append([good] * 7)  # one value per feature, but not 7 features
    if not setting.optional:
        values.append(None)
    return values


def declared_settings() -> list[tuple[str, Setting]]:
    return [(m, s) for m in MODELS for s in get_model_info(m).contract.settings]


@pytest.mark.parametrize("model, setting", declared_settings(),
                         ids=[f"{m}.{s.name}" for m, s in declared_settings()])
def test_every_bad_value_is_refused_before_loading(model, setting, contract_data, monkeypatch):
    from recbole_vlm4rec.run import runner

    _, overrides = contract_data
    overrides = with_features(model, overrides)
    monkeypatch.setattr(runner, "create_dataset", _must_not_load)
    for value in bad_values(setting):
        given = value if not isinstance(value, str) or value == "abc" else value
        with pytest.raises(ConfigValueError, match=rf"'{setting.name}'"):
            prepare_run(model, "contract", overrides={**overrides, setting.name: given},
                        build_features=False)


def _must_not_load(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the dataset was loaded before the configuration was checked")


@pytest.mark.parametrize("model", MODELS)
def test_declared_features_are_enforced(model, contract_data):
    from recbole_vlm4rec.data.dataset import MissingFeatureError

    _, overrides = contract_data
    features = get_model_info(model).contract.features
    if features is None:
        pytest.skip(f"{model} reads no features")
    prepared = prepare_run(model, "contract", overrides=with_features(model, overrides),
                           build_features=False)
    assert prepared.features  # what the model will load, known before loading
    if features.minimum > 1:
        with pytest.raises(ConfigValueError, match=rf"'{features.key}'.*at least {features.minimum}"):
            prepare_run(model, "contract", build_features=False,
                        overrides=with_features(model, overrides, features.minimum - 1))
    named = with_features(model, overrides)[features.key]
    missing = "nope" if features.key == ITEM_FEATURE_KEY else ["nope", *named[1:]]
    with pytest.raises(MissingFeatureError, match="nope"):
        prepare_run(model, "contract", overrides={**overrides, features.key: missing},
                    build_features=False)


@pytest.mark.parametrize("model", MODELS)
def test_contract_yaml_and_source_agree(model):
    """Each setting has a value in the model yaml; each yaml key and each ``config[...]`` the
    module reads is a setting or a general key; the tuning grid only holds valid values."""
    info = get_model_info(model)
    general = set(known_keys().general)
    declared = set(info.contract.keys())
    values = info.defaults()
    assert declared <= set(values), f"settings without a value in {info.yaml_path}: " \
        f"{sorted(declared - set(values))}"
    assert set(values) <= declared | general, f"{info.yaml_path} sets keys nothing reads: " \
        f"{sorted(set(values) - declared - general)}"
    module = Path(inspect.getsourcefile(info.model_class)).read_text(encoding="utf-8")
    read = set(CONFIG_READ.findall(module))
    assert read <= declared | general, f"{model} reads undeclared keys {sorted(read - declared - general)}"
    problems = info.contract.problems({k: v for k, v in values.items() if k in declared})
    assert problems == [], problems
    for key, grid in (values.get("search_space") or {}).items():
        setting = info.contract.setting(key)
        assert setting is not None or key in general, f"search_space key {key} is not a setting"
        for value in grid if setting is not None else []:
            assert setting.problem(value) is None, (key, value)


def test_the_docs_model_table_is_the_registry():
    from recbole_vlm4rec.models.cli import TABLE_END, TABLE_START, markdown_table

    docs = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    shipped = docs[docs.index(TABLE_START):docs.index(TABLE_END) + len(TABLE_END)]
    assert shipped == markdown_table(), "docs/models.md's table drifted: paste `vlm4rec models --markdown`"
