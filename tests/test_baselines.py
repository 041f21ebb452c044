"""The baseline models (VBPR, MMGCN, FREEDOM, VLM4RecFusion) on tiny data: shapes, training signal,
gradients into the feature projection, determinism, predict / full_sort_predict agreement, and the
missing-feature behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from conftest import LEARNED_RECALL_AT_10, read_by
from recbole_vlm4rec.data.dataset import MissingFeatureError
from recbole_vlm4rec.formats.features import save_feature

TRAINED = ["VBPR", "MMGCN", "FREEDOM"]
# Parameters through which each model's content features enter (gradients must reach them).
PROJECTIONS = {"VBPR": "content_projection", "MMGCN": "modalities.0.projection",
               "FREEDOM": "projections.0"}


@pytest.fixture
def two_features(tiny_dataset):
    """tiny_dataset plus a 5-d 'txt' feature that 6 of the 40 items lack; the overrides carry
    every model's size settings, so each run takes ``read_by(model, overrides)``."""
    root, name, overrides = tiny_dataset
    rng = np.random.default_rng(2)
    tokens = [f"i{i}" for i in range(6, 40)]
    save_feature(root / name / "features", "txt", rng.normal(size=(len(tokens), 5)), tokens)
    overrides = {**overrides, "item_features": {"emb": None, "txt": None},
                 "content_features": ["emb", "txt"], "embedding_size": 8,
                 "feat_embed_dim": 8, "latent_dim": 6}
    return name, overrides


@pytest.mark.parametrize("model_name", TRAINED + ["VLM4RecFusion"])
def test_full_sort_predict_equals_predict_on_all_pairs(two_features, build_pipeline, model_name):
    name, overrides = two_features
    _, data, train, *_, model = build_pipeline(model_name, name, read_by(model_name, overrides))
    if model_name in TRAINED:  # move away from the initialisation so the check is not trivial
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        model.train()
        for batch in list(train)[:2]:
            optimizer.zero_grad()
            model.calculate_loss(batch).backward()
            optimizer.step()
    model.eval()
    users = torch.arange(1, data.user_num)
    full = model.full_sort_predict(Interaction({"user_id": users}))
    assert full.shape == (len(users) * data.item_num,)
    pair_users = users.repeat_interleave(data.item_num)
    pair_items = torch.arange(data.item_num).repeat(len(users))
    pairs = model.predict(Interaction({"user_id": pair_users, "item_id": pair_items}))
    torch.testing.assert_close(pairs, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", TRAINED)
def test_loss_decreases_and_gradients_reach_the_feature_projection(two_features, build_pipeline,
                                                                   model_name):
    name, overrides = two_features
    _, _, train, *_, model = build_pipeline(model_name, name, read_by(model_name, overrides))
    batch = next(iter(train))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for step in range(15):
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        if step == 0:
            # the weight: a bias shared by positive and negative items cancels in BPR
            grad = model.get_submodule(PROJECTIONS[model_name]).weight.grad
            assert grad is not None and grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("model_name", TRAINED)
def test_deterministic_under_a_seed(two_features, build_pipeline, model_name):
    name, overrides = two_features
    runs = []
    for _ in range(2):
        _, _, train, *_, model = build_pipeline(model_name, name, read_by(model_name, overrides))
        model.train()
        loss = model.calculate_loss(next(iter(train)))
        model.eval()
        scores = model.full_sort_predict(Interaction({"user_id": torch.arange(1, 5)}))
        runs.append((loss.item(), scores))
    assert runs[0][0] == runs[1][0]
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=0, atol=0)


@pytest.mark.parametrize("model_name", TRAINED + ["VLM4RecFusion"])
def test_undeclared_feature_is_a_clear_error(two_features, build_pipeline, model_name):
    name, overrides = two_features
    with pytest.raises(MissingFeatureError, match="has no item feature 'visual'"):
        build_pipeline(model_name, name, {**read_by(model_name, overrides),
                                             "content_features": ["emb", "visual"]})


def test_items_without_a_vector_are_counted_in_the_log(two_features, build_pipeline, caplog):
    name, overrides = two_features
    build_pipeline("VBPR", name, {**read_by("VBPR", overrides), "state": "INFO"})
    assert "6/40 items have no 'txt' vector" in caplog.text


def test_content_features_default_and_command_line_forms(tiny_dataset, build_pipeline):
    from recbole_vlm4rec.models.features import content_feature_names

    _, name, overrides = tiny_dataset
    config, *_ = build_pipeline("VBPR", name, overrides)
    assert content_feature_names(config) == ["emb"]  # ~ -> the dataset's default_item_feature
    for written in ("emb,txt", "[emb, txt]", "['emb', 'txt']"):
        config["content_features"] = written
        assert content_feature_names(config) == ["emb", "txt"]
    config["content_features"] = ["emb", "emb"]
    with pytest.raises(ValueError, match="more than once"):
        content_feature_names(config)


def all_scores(data, model):
    model.eval()
    return model.full_sort_predict(Interaction({"user_id": torch.arange(1, data.user_num)}))


@pytest.mark.parametrize("fusion", ["concat", "weighted"])
def test_fusion_with_all_weight_on_one_feature_is_vlm4rec_on_it(two_features, build_pipeline,
                                                                 fusion):
    name, overrides = two_features
    _, data, *_, single = build_pipeline("VLM4Rec", name, {**read_by("VLM4Rec", overrides),
                                                          "item_feature": "emb"})
    _, _, *_, fused = build_pipeline("VLM4RecFusion", name, {
        **read_by("VLM4RecFusion", overrides), "fusion": fusion, "fusion_weights": [1.0, 0.0]})
    torch.testing.assert_close(all_scores(data, fused), all_scores(data, single))


def test_weighted_fusion_is_the_weighted_average_of_cosines(two_features, build_pipeline):
    name, overrides = two_features
    per_feature = {}
    for feature in ("emb", "txt"):
        _, data, *_, model = build_pipeline("VLM4Rec", name, {**read_by("VLM4Rec", overrides),
                                                              "item_feature": feature})
        per_feature[feature] = all_scores(data, model)
    _, _, *_, fused = build_pipeline("VLM4RecFusion", name, {
        **read_by("VLM4RecFusion", overrides), "fusion": "weighted", "fusion_weights": [3, 1]})
    expected = 0.75 * per_feature["emb"] + 0.25 * per_feature["txt"]
    torch.testing.assert_close(all_scores(data, fused), expected)


def test_fusion_config_errors(two_features):
    from recbole_vlm4rec.run.accounting import ConfigValueError
    from recbole_vlm4rec.run.protocol import prepare_run

    name, overrides = two_features
    overrides = read_by("VLM4RecFusion", overrides)
    for extra, message in (({"fusion_weights": [1.0]}, "has 1 values but there are 2 features"),
                           ({"fusion_weights": [0, 0]}, "needs a positive sum"),
                           ({"fusion": "sum"}, "'fusion' .*takes one of concat, weighted"),
                           ({"fusion": "weighted", "profile_aggregation": "max"},
                            "max matches on one embedding")):
        with pytest.raises(ConfigValueError, match=message):
            prepare_run("VLM4RecFusion", name, overrides={**overrides, **extra},
                        build_features=False)


@pytest.mark.parametrize("model_name", TRAINED + ["VLM4RecFusion", "BPR", "LightGCN", "ItemKNN"])
def test_learns_the_taste_groups_through_the_runner(taste_groups, model_name):
    """Through runner.run, as a user's run: far above a random ranking (~0.34) on data with signal."""
    from recbole_vlm4rec.run.runner import run

    _, name, overrides = taste_groups
    result = run(model_name, name, overrides=read_by(model_name, overrides), write_results=False)
    assert result.test_result["recall@10"] >= LEARNED_RECALL_AT_10, result.test_result


def test_pop_through_the_runner_reports_what_its_scores_give(tiny_dataset):
    """The runner's recall@10 and mrr@10 are the ones computed by hand from the checkpoint's
    scores, the split and the masking rule (RecBole's Pop counts each item once per training batch, so on one
    batch every score ties: the documented tie-break then decides, and the count says so)."""
    from conftest import metrics_by_hand
    from recbole_vlm4rec.run.runner import run

    _, name, overrides = tiny_dataset
    result = run("Pop", name, overrides=overrides, write_results=False)
    by_hand = metrics_by_hand(result.checkpoint, k=10)
    assert {key: result.test_result[key] for key in by_hand} == pytest.approx(by_hand, abs=1e-4)
    assert result.ranking["users_all_equal"] == result.ranking["users"] > 0


@pytest.mark.parametrize("model_name,extra", [
    ("VLM4Rec", {}),
    ("VLM4RecFusion", {"fusion": "weighted", "fusion_weights": [2, 1]}),
    ("VLM4RecFusion", {"fusion": "concat", "fusion_weights": [2, 1]})])
def test_item_similarity_scoring_equals_profile_scoring(two_features, build_pipeline, model_name,
                                                        extra):
    name, overrides = two_features
    scores = {}
    for scoring in ("profiles", "item_similarity"):
        _, data, *_, model = build_pipeline(model_name, name, {
            **read_by(model_name, overrides), **extra, "profile_scoring": scoring})
        assert model.scores_from_item_similarity == (scoring == "item_similarity")
        scores[scoring] = all_scores(data, model)
    torch.testing.assert_close(scores["item_similarity"], scores["profiles"])
