"""Memory linear in the catalogue: a run that cannot fit is refused before loading (with its
estimate and the setting that fixes it), top-k EASE is dense EASE when every item is a neighbour,
and chunked full-ranking evaluation gives the metrics of unchunked evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recbole_vlm4rec.formats.features import save_feature
from recbole_vlm4rec.models._ease import topk_ease
from recbole_vlm4rec.run.memory import MemoryBudgetError, dataset_size
from recbole_vlm4rec.run.protocol import prepare_run

from conftest import random_interactions, write_inter

CATALOGUE = 100_000


@pytest.fixture
def huge_by_line_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A dataset whose .item file lists 100,000 items (its interactions are a handful): big by
    its line counts, tiny on disk. Loading it is forbidden."""
    from recbole_vlm4rec.run import runner

    monkeypatch.chdir(tmp_path)
    root, name = tmp_path / "datasets", "huge"
    write_inter(root / name, name, random_interactions(20, 40, 5))
    items = "\n".join(["item_id:token", *(f"i{i}" for i in range(CATALOGUE))])
    (root / name / f"{name}.item").write_text(items + "\n")
    save_feature(root / name / "features", "emb", np.ones((4, 16)), [f"i{i}" for i in range(4)])

    def must_not_load(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the memory check")

    monkeypatch.setattr(runner, "create_dataset", must_not_load)
    overrides = {"data_path": str(root), "item_features": {"emb": None},
                 "content_features": ["emb"], "state": "ERROR", "gpu_id": ""}
    return name, overrides


def test_sizes_come_from_line_counts(huge_by_line_counts):
    name, overrides = huge_by_line_counts
    prepared = prepare_run("VLM4RecHybrid", name, build_features=False,
                           overrides={**overrides, "ease_backbone": "topk", "memory_budget": 24})
    size = prepared.memory.size
    assert (size.n_users, size.n_items, size.n_interactions) == (20, CATALOGUE, 100)
    assert size.feature_dims == {"emb": 16}
    assert dataset_size(prepared.config).n_items == CATALOGUE


def test_dense_backbone_is_refused_before_loading_with_the_fix(huge_by_line_counts):
    name, overrides = huge_by_line_counts
    with pytest.raises(MemoryBudgetError) as refused:
        prepare_run("VLM4RecHybrid", name, build_features=False,
                    overrides={**overrides, "memory_budget": 24})
    message = str(refused.value)
    assert "\n" not in message
    assert "needs about" in message and "24.0 GB (memory_budget)" in message
    estimate = float(message.split("needs about ")[1].split(" GB")[0])
    assert estimate > 3 * CATALOGUE ** 2 * 8 / 2**30  # three dense float64 |I| x |I| matrices
    assert "--ease_backbone=topk" in message
    # the fix it names fits
    prepare_run("VLM4RecHybrid", name, build_features=False,
                overrides={**overrides, "memory_budget": 24, "ease_backbone": "topk"})


def test_the_cli_refuses_in_one_line_with_exit_2(huge_by_line_counts, capsys):
    from recbole_vlm4rec.run.cli import main

    name, overrides = huge_by_line_counts
    argv = ["--model=EASE", f"--dataset={name}", f"--data_path={overrides['data_path']}",
            "--memory_budget=24", "--state=ERROR"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: EASE on huge") and "needs about" in error
    assert len(error.splitlines()) == 1


def test_item_similarity_is_bounded_by_auto_and_refused_when_forced(huge_by_line_counts):
    name, overrides = huge_by_line_counts
    overrides = {**overrides, "item_feature": "emb", "memory_budget": 24}
    overrides.pop("content_features")
    prepared = prepare_run("VLM4Rec", name, build_features=False, overrides=overrides)
    assert "item x item similarity" not in prepared.memory.estimate.parts
    with pytest.raises(MemoryBudgetError, match="--profile_scoring=profiles"):
        prepare_run("VLM4Rec", name, build_features=False,
                    overrides={**overrides, "profile_scoring": "item_similarity"})


def dense_ease(history: sp.csr_matrix, reg: float, content: np.ndarray | None = None,
               semantic: float = 0.0) -> np.ndarray:
    gram = (history.T @ history).toarray().astype(np.float64)
    if content is not None:
        gram += semantic * content @ content.T
    inverse = np.linalg.inv(gram + reg * np.eye(gram.shape[0]))
    weights = inverse / -np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return weights


def small_history(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random((40, 25)) < 0.2).astype(np.float32))


def test_topk_ease_with_every_item_as_neighbour_is_dense_ease():
    history = small_history()
    np.testing.assert_allclose(topk_ease(history, 3.0, k=24).toarray(), dense_ease(history, 3.0),
                               atol=1e-10)


def test_topk_ease_with_a_semantic_prior_is_dense_ease_with_it():
    history = small_history(1)
    content = np.random.default_rng(2).normal(size=(25, 6))
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    found = topk_ease(history, 2.0, k=24, content=torch.from_numpy(content), semantic_weight=0.7)
    np.testing.assert_allclose(found.toarray(), dense_ease(history, 2.0, content, 0.7), atol=1e-10)


def test_topk_ease_keeps_k_weights_per_item_and_nears_dense_as_k_grows():
    history = small_history(3)
    dense = dense_ease(history, 5.0)
    errors = []
    for k in (4, 12, 24):
        found = topk_ease(history, 5.0, k=k)
        assert (np.diff(found.tocsc().indptr) <= k).all()
        errors.append(np.linalg.norm(found.toarray() - dense) / np.linalg.norm(dense))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-10


@pytest.mark.parametrize("model, extra", [("Pop", {}), ("VLM4RecHybrid", {
    "content_features": ["emb"], "ease_backbone": "topk", "ease_neighbours": 10})])
def test_chunked_evaluation_gives_the_metrics_of_one_batch(tiny_dataset, model, extra):
    from recbole_vlm4rec.run.runner import run

    _, name, overrides = tiny_dataset
    overrides = {**overrides, **extra}
    whole = run(model, name, overrides={**overrides, "eval_batch_size": 10**7},
                write_results=False)
    chunked = run(model, name, overrides={**overrides, "eval_batch_size": 41},  # one user
                  write_results=False)
    assert whole.test_result == chunked.test_result
    assert whole.best_valid_result == chunked.best_valid_result


def test_a_small_budget_lowers_the_protocols_eval_batch_size_and_says_so(tiny_dataset):
    _, name, overrides = tiny_dataset
    roomy = prepare_run("Pop", name, overrides={**overrides, "memory_budget": 64},
                        build_features=False)
    assert roomy.config["eval_batch_size"] == 4194304  # configs/overall.yaml's
    needed = roomy.memory.total - roomy.memory.eval_bytes
    budget = (needed + 2 * 16 * 41 * 5) / 2**30  # room for about five users per batch
    tight = prepare_run("Pop", name, overrides={**overrides, "memory_budget": budget},
                        build_features=False)
    batch = tight.config["eval_batch_size"]
    assert batch % 41 == 0 and 41 <= batch < 41 * 10
    assert any("lowered from 4194304" in note for note in tight.notes)
    given = prepare_run("Pop", name, build_features=False,
                        overrides={**overrides, "memory_budget": 64, "eval_batch_size": 82})
    assert given.config["eval_batch_size"] == 82  # the user's value is kept


def test_every_model_of_this_package_states_its_memory():
    """The generic graph-model estimate knows nothing of features, kNN or user-user graphs: each
    of this package's models declares its own."""
    from recbole_vlm4rec.models import project_models

    missing = [name for name, model in project_models().items()
               if model.contract.memory_estimate is None]
    assert missing == []


@pytest.mark.parametrize("model", ["BM3", "LATTICE", "MGCN", "PGL", "SMORE"])
def test_fine_tuned_feature_tables_are_counted_and_the_setting_that_drops_them_named(model):
    from recbole_vlm4rec.models import get_model_class
    from recbole_vlm4rec.models._sizes import DataSize

    estimate = get_model_class(model).contract.memory_estimate
    size = DataSize(200_000, CATALOGUE, 10_000_000, {"visual": 4096, "text": 384})
    tuned, fixed = estimate(size, {"train_features": True}), estimate(size, {"train_features": False})
    # a copy of every feature, its gradient and Adam's two moments, float32
    assert tuned.total - fixed.total == pytest.approx(CATALOGUE * (4096 + 384) * 4 * 4)
    assert f"--train_features=False (about {fixed.total / 2**30:.1f} GB for {model})" == tuned.fix
    assert fixed.fix == ""
