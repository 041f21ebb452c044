"""Item cold-start protocol: cold items never train, they are evaluated, VLM4Rec can score them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_vlm4rec.run.cold_start import ColdStartConfigError
from recbole_vlm4rec.run.protocol import prepare_run
from recbole_vlm4rec.run.runner import build_run, run


def cold_pipeline(name: str, overrides: dict, model: str = "VLM4Rec"):
    """As a run builds it (run/runner.build_run); the model is built from the cold-start split."""
    prepared = prepare_run(model, name, overrides=overrides)
    built = build_run(prepared.config, prepared.model_class)
    return built.config, built.dataset, built.train_data, built.valid_data, built.test_data, \
        built.model


def items_of(loader) -> np.ndarray:
    return loader._dataset.inter_feat["item_id"].numpy()


@pytest.mark.parametrize("targets", ["cold", "all"])
def test_cold_items_never_train_and_all_their_interactions_are_evaluated(tiny_dataset, targets):
    _, name, overrides = tiny_dataset
    overrides = {**overrides, "cold_start_items": 0.25, "cold_start_targets": targets}
    _, data, train, valid, test, _ = cold_pipeline(name, overrides)
    cold = data.cold_items
    assert len(cold) == 10  # 25% of 40 items
    assert not np.isin(items_of(train), cold).any()
    held_out = np.concatenate([items_of(valid), items_of(test)])
    everything = data.inter_feat["item_id"].numpy()
    assert np.isin(held_out, cold).sum() == np.isin(everything, cold).sum()  # none lost
    assert len(items_of(train)) + len(held_out) == len(everything)
    assert np.isin(items_of(valid), cold).any() and np.isin(items_of(test), cold).any()
    if targets == "cold":
        assert np.isin(held_out, cold).all()
    else:
        assert not np.isin(held_out, cold).all()  # warm targets stay
    summary = data.cold_start_summary
    assert summary["n_cold_items"] == 10 and summary["targets"] == targets
    # the split hook lived only for RecBole's data_preparation call (compat.data_preparation)
    for dataset in (data, train._dataset, valid._dataset, test._dataset):
        assert "build" not in vars(dataset)


def test_cold_items_are_seeded(tiny_dataset):
    _, name, overrides = tiny_dataset
    base = {**overrides, "cold_start_items": 0.25}
    first = cold_pipeline(name, base)[1].cold_items
    assert np.array_equal(first, cold_pipeline(name, base)[1].cold_items)
    other = cold_pipeline(name, {**base, "cold_start_seed": 99})[1].cold_items
    assert not np.array_equal(first, other)


def test_vlm4rec_scores_cold_items_from_their_features(tiny_dataset):
    _, name, overrides = tiny_dataset
    _, data, _, _, _, model = cold_pipeline(name, {**overrides, "cold_start_items": 0.25})
    users = torch.arange(1, data.user_num)
    scores = model.full_sort_predict(Interaction({"user_id": users})).view(len(users), -1)
    cold_scores = scores[:, torch.from_numpy(data.cold_items)]
    assert (cold_scores != 0).float().mean() > 0.9  # scored by content, not left at zero


def test_runs_record_the_protocol_and_bad_settings_fail_clearly(tiny_dataset):
    _, name, overrides = tiny_dataset
    result = run("VLM4Rec", name, overrides={**overrides, "cold_start_items": 0.3},
                 write_results=False)
    assert result.cold_start["n_cold_items"] == 12
    assert result.test_result["recall@20"] > 0  # cold items reach the top-20 by content alone
    assert run("Pop", name, overrides=overrides, write_results=False).cold_start is None
    with pytest.raises(ColdStartConfigError, match="share in"):
        run("Pop", name, overrides={**overrides, "cold_start_items": 1.5}, write_results=False)


def test_predefined_splits_get_the_same_protocol(tiny_dataset):
    from conftest import write_predefined_split

    root, _, overrides = tiny_dataset
    rng = np.random.default_rng(5)
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test": []}
    for u in range(12):
        items = rng.choice(20, size=8, replace=False)
        for position, item in enumerate(items):
            part = "train" if position < 6 else ("valid" if position == 6 else "test")
            splits[part].append((f"u{u}", f"i{item}"))
    write_predefined_split(root, "pre", splits)
    overrides = {**overrides, "benchmark_filename": ["train", "valid", "test"],
                 "load_col": {"inter": ["user_id", "item_id"]}, "item_features": None,
                 "cold_start_items": 0.2}
    _, data, train, valid, test, _ = cold_pipeline("pre", overrides, model="BPR")
    assert len(data.cold_items) == 4
    assert not np.isin(items_of(train), data.cold_items).any()
    assert len(items_of(train)) + len(items_of(valid)) + len(items_of(test)) == 96
