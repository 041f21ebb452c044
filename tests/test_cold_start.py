"""Item cold-start protocol: cold items never train, they are evaluated, VLM4Rec can score them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_vlm4rec.models import get_model_class
from recbole_vlm4rec.run.cold_start import ColdStartConfigError
from recbole_vlm4rec.run.protocol import prepare_run
from recbole_vlm4rec.run.runner import build_run, format_metrics_table, run


def cold_pipeline(name: str, overrides: dict, model: str = "VLM4Rec"):
    """As a run builds it (run/runner.build_run); the model is built from the cold-start split."""
    prepared = prepare_run(model, name, overrides=overrides)
    built = build_run(prepared.config, prepared.model_class)
    return built.config, built.dataset, built.train_data, built.valid_data, built.test_data, \
        built.model


def items_of(loader) -> np.ndarray:
    return loader._dataset.inter_feat["item_id"].numpy()


@pytest.mark.parametrize("targets", ["cold", "mixed"])
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
    with pytest.raises(ColdStartConfigError, match="needs full ranking"):
        run("Pop", name, write_results=False, overrides={
            **overrides, "cold_start_items": 0.3,
            "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "group_by": "user", "order": "RO",
                          "mode": "uni100"}})


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


@pytest.fixture
def score_policy(monkeypatch):
    """Wrap VLM4Rec's scores with a policy: ``policy(scores, untrained)`` where ``untrained``
    flags the items without a training interaction (the cold items and any whose interactions
    all fell outside training)."""
    model_class = get_model_class("VLM4Rec")
    init, predict = model_class.__init__, model_class.full_sort_predict

    def use(policy):
        def patched_init(self, config, dataset):
            init(self, config, dataset)
            counts = np.bincount(dataset.inter_feat["item_id"].numpy(), minlength=dataset.item_num)
            self._untrained = torch.from_numpy(counts == 0)

        def patched_predict(self, interaction):
            scores = predict(self, interaction).view(-1, len(self._untrained)).clone()
            return policy(scores, self._untrained).view(-1)

        monkeypatch.setattr(model_class, "__init__", patched_init)
        monkeypatch.setattr(model_class, "full_sort_predict", patched_predict)

    return use


def lift_untrained(scores, untrained):
    scores[:, untrained] += 1000.0  # "new items first": knows nothing about the user
    return scores


def noisy_warm_scores(scores, untrained):
    noise = torch.from_numpy(np.random.default_rng(7).normal(0, 100, scores.shape)).float()
    return torch.where(untrained, scores, scores + noise)


def cold_run(name, overrides, targets):
    return run("VLM4Rec", name, write_results=False, overrides={
        **overrides, "cold_start_items": 0.25, "cold_start_targets": targets})


@pytest.mark.parametrize("policy", [lift_untrained, noisy_warm_scores])
def test_default_protocol_ranks_cold_items_among_themselves(tiny_dataset, score_policy, policy):
    """Lifting items without interactions gains nothing, and warm items' scores cannot move a
    cold item's rank: the candidates are the cold items."""
    _, name, overrides = tiny_dataset
    plain = cold_run(name, overrides, "cold")
    assert plain.cold_start["candidates"] == "the 10 cold items"
    score_policy(policy)
    changed = cold_run(name, overrides, "cold")
    assert changed.test_result == plain.test_result
    assert changed.best_valid_result == plain.best_valid_result
    assert changed.per_user_test == plain.per_user_test


def test_cold_candidates_hold_only_cold_items_in_every_top_k(tiny_dataset, score_policy):
    _, name, overrides = tiny_dataset
    score_policy(lambda scores, untrained: torch.where(untrained, scores - 1000.0, scores))
    # cold items scored below every warm one; 20 cold items: more than a top-10 in every list
    over = {**overrides, "cold_start_items": 0.5, "cold_start_targets": "cold"}
    result = run("VLM4Rec", name, write_results=False, overrides=over)
    assert result.test_result["recall@20"] > 0  # still ranked: only among themselves
    _, data, *_ = cold_pipeline(name, over)
    cold_tokens = {str(data.field2id_token["item_id"][i]) for i in data.cold_items}
    shown = [item for user in result.examples["users"] for item in user["top_items"]]
    assert shown and set(shown) <= cold_tokens


def test_mixed_reports_warm_and_cold_targets_apart_and_shows_what_a_lift_costs(tiny_dataset,
                                                                               score_policy):
    _, name, overrides = tiny_dataset
    plain = cold_run(name, overrides, "mixed")
    by_target = plain.cold_start["test_by_target"]
    assert plain.cold_start["candidates"] == "all 40 items"
    assert by_target["warm"]["interactions"] > 0 and by_target["cold"]["interactions"] > 0
    n_test = sum(part["interactions"] for part in by_target.values())
    assert n_test == plain.cold_start["sizes"]["test"]
    hits = {k: part["metrics"]["hit@20"] * part["users"] for k, part in by_target.items()}
    assert max(hits.values()) <= plain.test_result["hit@20"] * len(plain.per_user_test["users"])
    table = format_metrics_table(plain)
    assert "test warm" in table and "test cold" in table
    score_policy(lift_untrained)
    lifted = cold_run(name, overrides, "mixed").cold_start["test_by_target"]
    assert lifted["cold"]["metrics"]["recall@20"] > by_target["cold"]["metrics"]["recall@20"]
    assert lifted["warm"]["metrics"]["recall@20"] < by_target["warm"]["metrics"]["recall@20"]


def test_the_old_name_all_is_refused_with_its_new_name(tiny_dataset):
    _, name, overrides = tiny_dataset
    with pytest.raises(Exception, match="mixed"):
        cold_run(name, overrides, "all")
