"""VLM4RecHybrid on tiny data: its collaborative half is EASE, the semantic prior is the
side-information ridge solution, the adapter solves its regression, and new items are scored by
the documented rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_vlm4rec.formats.features import save_feature


@pytest.fixture
def hybrid_data(tiny_dataset):
    root, name, overrides = tiny_dataset
    overrides = {**overrides, "content_features": ["emb"], "reg_weight": 5.0}
    return root, name, overrides


def scores_of(data, model) -> torch.Tensor:
    model.eval()
    users = torch.arange(1, data.user_num)
    return model.full_sort_predict(Interaction({"user_id": users})).reshape(len(users), -1)


def test_without_semantic_prior_warm_scores_are_recboles_ease(hybrid_data, build_pipeline):
    _, name, overrides = hybrid_data
    _, data, *_, hybrid = build_pipeline("VLM4RecHybrid", name, {
        **overrides, "semantic_weight": 0.0, "new_item_scoring": "none"})
    _, _, *_, ease = build_pipeline("EASE", name, overrides)
    torch.testing.assert_close(scores_of(data, hybrid), scores_of(data, ease).float(),
                               rtol=1e-4, atol=1e-5)


def test_semantic_prior_is_ease_on_content_as_extra_users(hybrid_data, build_pipeline):
    """alpha ||F^T - F^T B||^2 = the same regression with rows sqrt(alpha) F^T appended to X."""
    _, name, overrides = hybrid_data
    alpha = 3.0
    _, data, train, *_, model = build_pipeline("VLM4RecHybrid", name, {
        **overrides, "semantic_weight": alpha, "new_item_scoring": "none",
        "center_features": False})
    interactions = train._dataset.inter_matrix(form="csr").toarray()
    feature = train._dataset.item_feature("emb")
    content = feature.matrix / np.maximum(np.linalg.norm(feature.matrix, axis=1, keepdims=True),
                                          1e-12)
    stacked = np.vstack([interactions, np.sqrt(alpha) * content.T])
    # each column j regressed on the other columns (ridge 5.0): the constrained solution, solved
    # column by column without the inverse-diagonal shortcut the model uses
    expected = np.zeros((data.item_num, data.item_num))
    for j in range(1, data.item_num):
        others = [k for k in range(data.item_num) if k != j]
        design = stacked[:, others]
        expected[others, j] = np.linalg.solve(design.T @ design + 5.0 * np.eye(len(others)),
                                              design.T @ stacked[:, j])
    np.testing.assert_allclose(model.item_weights.numpy()[1:, 1:], expected[1:, 1:], atol=1e-4)


def test_adapter_recovers_weights_that_content_can_express(hybrid_data, build_pipeline):
    """With one-hot content (d = items) any item-item matrix is f_i^T V f_j: the ridge fit with a
    tiny mu returns the collaborative weights themselves."""
    root, name, overrides = hybrid_data
    tokens = [f"i{i}" for i in range(40)]
    save_feature(root / name / "features", "onehot", np.eye(40), tokens)
    _, _, _, *_, model = build_pipeline("VLM4RecHybrid", name, {
        **overrides, "item_features": {"emb": None, "onehot": None},
        "content_features": ["onehot"], "center_features": False, "adapter_reg": 1e-9})
    warm = model.warm.numpy()
    adapted = model.adapter_matrix().numpy()[np.ix_(warm, warm)]
    target = model.item_weights.numpy()[np.ix_(warm, warm)]
    np.testing.assert_allclose(adapted, target, atol=1e-4)


def test_new_items_are_placed_in_the_warm_score_distribution(hybrid_data, build_pipeline):
    _, name, overrides = hybrid_data
    over = {**overrides, "cold_start_items": 0.25}
    from recbole_vlm4rec.run.runner import build_run
    from recbole_vlm4rec.run.protocol import prepare_run

    prepared = prepare_run("VLM4RecHybrid", name, overrides=over)
    built = build_run(prepared.config, prepared.model_class)
    model, data = built.model, built.dataset
    new = model.new_with_content.numpy()
    assert new.sum() == 10  # 25% of 40 items never trained
    scores = scores_of(data, model).numpy()
    history = model.history.toarray()[1:]
    warm_scores = (history @ model.item_weights.numpy())[:, model.warm.numpy()]
    adapter = history @ model.adapter_matrix().numpy()
    standardised = (adapter - adapter.mean(1, keepdims=True)) / adapter.std(1, ddof=1,
                                                                            keepdims=True)
    expected = (warm_scores.mean(1, keepdims=True)
                + warm_scores.std(1, ddof=1, keepdims=True) * standardised)[:, new]
    np.testing.assert_allclose(scores[:, new], expected, rtol=1e-4, atol=1e-5)
    # the adapter's order among new items is kept; warm items keep their collaborative scores
    np.testing.assert_allclose(scores[:, model.warm.numpy()], warm_scores, rtol=1e-4, atol=1e-5)


def test_new_item_without_content_ranks_with_the_lowest_warm_score(hybrid_data, build_pipeline):
    root, name, overrides = hybrid_data
    tokens = [f"i{i}" for i in range(1, 40)]  # i0 has no vector
    save_feature(root / name / "features", "partial", np.random.default_rng(3).normal(
        size=(39, 6)), tokens)
    over = {**overrides, "item_features": {"emb": None, "partial": None},
            "content_features": ["partial"], "cold_start_items": 0.25}
    from recbole_vlm4rec.run.runner import build_run
    from recbole_vlm4rec.run.protocol import prepare_run

    for seed in range(2020, 2040):  # a seed whose cold items include i0
        prepared = prepare_run("VLM4RecHybrid", name, overrides={**over, "seed": seed})
        built = build_run(prepared.config, prepared.model_class)
        if built.model.new_without_content.any():
            break
    else:
        pytest.fail("no seed made i0 cold")
    model = built.model
    scores = scores_of(built.dataset, model)
    lowest = scores[:, model.warm].min(dim=1).values
    torch.testing.assert_close(scores[:, model.new_without_content][:, 0], lowest)


def test_predict_equals_full_sort_predict(hybrid_data, build_pipeline):
    _, name, overrides = hybrid_data
    _, data, *_, model = build_pipeline("VLM4RecHybrid", name, {**overrides,
                                                                "semantic_weight": 2.0})
    model.eval()
    users = torch.arange(1, data.user_num)
    full = model.full_sort_predict(Interaction({"user_id": users}))
    pairs = model.predict(Interaction({"user_id": users.repeat_interleave(data.item_num),
                                       "item_id": torch.arange(data.item_num).repeat(len(users))}))
    torch.testing.assert_close(pairs, full)


def test_config_errors(hybrid_data):
    from recbole_vlm4rec.run.accounting import ConfigValueError
    from recbole_vlm4rec.run.protocol import prepare_run

    _, name, overrides = hybrid_data
    for extra, message in (({"new_item_scoring": "boost"}, "takes one of parity, adapter, none"),
                           ({"reg_weight": 0.0}, "'reg_weight' .*takes float > 0")):
        with pytest.raises(ConfigValueError, match=message):
            prepare_run("VLM4RecHybrid", name, overrides={**overrides, **extra},
                        build_features=False)


def test_learns_the_taste_groups_through_the_runner_warm_and_cold(taste_groups):
    """Through runner.run, as a user's run, on data with signal (a random ranking gets ~0.34):
    warm, and under the cold-start protocol, where a quarter of the items never train and the
    test holds only their interactions, so they can only be ranked from their content."""
    from conftest import LEARNED_RECALL_AT_10, read_by
    from recbole_vlm4rec.run.runner import run

    _, name, overrides = taste_groups
    overrides = {**read_by("VLM4RecHybrid", overrides), "content_features": ["emb"],
                 "reg_weight": 5.0}
    for extra in ({}, {"cold_start_items": 0.25}):
        result = run("VLM4RecHybrid", name, overrides={**overrides, **extra},
                     write_results=False)
        assert result.test_result["recall@10"] >= LEARNED_RECALL_AT_10, (extra, result.test_result)
    assert result.cold_start["n_cold_items"] == 10
