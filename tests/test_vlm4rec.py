"""VLM4Rec: known rankings on hand-made data, consistency, and no leakage of valid/test items."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from conftest import write_predefined_split
from recbole_vlm4rec.formats.features import save_feature

# Two taste clusters on a 3-d sphere: "a" items point along x, "b" items along y. a3 / b3 sit
# exactly on their cluster's mean direction, so each user's top unseen item is known.
VECTORS = {
    "a1": [1.0, 0.3, 0.0], "a2": [1.0, -0.3, 0.0], "a3": [1.0, 0.0, 0.0], "a4": [0.8, 0.0, 0.6],
    "b1": [0.3, 1.0, 0.0], "b2": [-0.3, 1.0, 0.0], "b3": [0.0, 1.0, 0.0], "b4": [0.0, 0.8, 0.6],
    "c1": [0.0, 0.0, 1.0],
}
SPLITS = {
    "train": [("ua", "a1"), ("ua", "a2"), ("ub", "b1"), ("ub", "b2"), ("uc", "c1"), ("uc", "a1")],
    "valid": [("ua", "a3"), ("ub", "b3"), ("uc", "b1")],
    "test": [("ua", "a4"), ("ub", "b4"), ("uc", "b2")],
}


@pytest.fixture
def clusters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, name = tmp_path / "datasets", "clusters"
    write_predefined_split(root, name, SPLITS)
    tokens = list(VECTORS)[::-1]  # stored in a different order than ids are assigned
    save_feature(root / name / "features", "vlm", np.array([VECTORS[t] for t in tokens]), tokens)
    overrides = {
        "data_path": str(root), "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id"]}, "item_features": {"vlm": None},
        "item_feature": "vlm", "show_progress": False, "state": "WARNING", "gpu_id": "",
        "checkpoint_dir": str(tmp_path / "saved"),
        "topk": [5], "valid_metric": "recall@5",  # 9 items: a run refuses top-10 and top-20
    }
    return name, overrides


def scores_by_token(data, model, user_token):
    uid = data.field2token_id["user_id"][user_token]
    scores = model.full_sort_predict(Interaction({"user_id": torch.tensor([uid])}))
    tokens = data.field2id_token["item_id"]
    return {tokens[i]: float(scores[i]) for i in range(1, len(tokens))}


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_top_unseen_item_is_the_one_closest_to_the_profile(clusters, build_pipeline, aggregation):
    name, overrides = clusters
    _, data, *_, model = build_pipeline("VLM4Rec", name, {**overrides, "profile_aggregation": aggregation})
    for user, history, expected in [("ua", {"a1", "a2"}, "a3"), ("ub", {"b1", "b2"}, "b3")]:
        scores = scores_by_token(data, model, user)
        unseen = {t: s for t, s in scores.items() if t not in history}
        assert max(unseen, key=unseen.get) == expected
        # every item of the user's own cluster beats every item of the other cluster
        own, other = user[1], "b" if user[1] == "a" else "a"
        assert min(s for t, s in unseen.items() if t[0] == own) > max(
            s for t, s in unseen.items() if t[0] == other
        )


def test_mean_profile_scores_are_cosines_to_the_mean_of_history(clusters, build_pipeline):
    name, overrides = clusters
    _, data, *_, model = build_pipeline("VLM4Rec", name, overrides)
    unit = {t: np.array(v) / np.linalg.norm(v) for t, v in VECTORS.items()}
    profile = (unit["c1"] + unit["a1"]) / 2
    profile /= np.linalg.norm(profile)
    scores = scores_by_token(data, model, "uc")
    for token, vector in unit.items():
        assert scores[token] == pytest.approx(float(profile @ vector), abs=1e-6)


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_predict_equals_full_sort_predict_on_all_pairs(tiny_dataset, build_pipeline, aggregation):
    _, name, overrides = tiny_dataset
    _, data, *_, model = build_pipeline("VLM4Rec", name, {**overrides, "profile_aggregation": aggregation})
    users = torch.arange(1, data.user_num)
    full = model.full_sort_predict(Interaction({"user_id": users})).reshape(len(users), -1)
    pair_users = users.repeat_interleave(data.item_num)
    pair_items = torch.arange(data.item_num).repeat(len(users))
    pairs = model.predict(Interaction({"user_id": pair_users, "item_id": pair_items}))
    torch.testing.assert_close(pairs.reshape(len(users), -1), full)


def test_valid_and_test_items_never_enter_profiles(tiny_dataset, build_pipeline):
    """One-hot item vectors: a profile's non-zero dimensions are exactly the items it was built from."""
    root, name, overrides = tiny_dataset
    tokens = [f"i{i}" for i in range(40)]
    save_feature(root / name / "features", "onehot", np.eye(40), tokens)
    overrides = {**overrides, "item_features": {"onehot": None}, "item_feature": "onehot"}
    _, data, train, valid, test, model = build_pipeline("VLM4Rec", name, overrides)
    id_to_dim = {i: int(tok[1:]) for i, tok in enumerate(data.field2id_token["item_id"]) if i}

    def items_of(split):
        inter = split._dataset.inter_feat
        out = {}
        for u, i in zip(inter["user_id"].tolist(), inter["item_id"].tolist()):
            out.setdefault(u, set()).add(id_to_dim[i])
        return out

    train_items, held_out = items_of(train), {}
    for split in (valid, test):
        for user, items in items_of(split).items():
            held_out.setdefault(user, set()).update(items)
    assert held_out, "fixture must hold out some interactions"
    for user, items in held_out.items():
        profile = model.user_profiles[user].numpy()
        assert set(np.flatnonzero(profile)) == train_items[user]
        assert not items & set(np.flatnonzero(profile))


def test_items_without_vectors_score_zero_and_users_without_profile_are_counted(clusters, build_pipeline):
    name, overrides = clusters
    root = overrides["data_path"]
    keep = [t for t in VECTORS if t not in ("c1", "b4")]
    save_feature(f"{root}/{name}/features", "vlm", np.array([VECTORS[t] for t in keep]), keep)
    _, data, *_, model = build_pipeline("VLM4Rec", name, overrides)
    assert data.item_feature("vlm").n_covered == len(VECTORS) - 2
    assert scores_by_token(data, model, "ua")["b4"] == 0.0
    assert model.n_users_without_profile == 0  # uc still has a1
    save_feature(f"{root}/{name}/features", "vlm", np.array([VECTORS["a3"]]), ["a3"])
    _, data, *_, model = build_pipeline("VLM4Rec", name, overrides)
    assert model.n_users_without_profile == 3
    assert set(scores_by_token(data, model, "ua").values()) == {0.0}


def test_missing_feature_and_bad_aggregation_are_clear_errors(clusters, build_pipeline):
    name, overrides = clusters
    with pytest.raises(KeyError, match=r"has no item feature 'visual'.*it has: vlm\. Make it"):
        build_pipeline("VLM4Rec", name, {**overrides, "item_feature": "visual"})
    from recbole_vlm4rec.run.accounting import ConfigValueError
    from recbole_vlm4rec.run.protocol import prepare_run

    with pytest.raises(ConfigValueError, match="'profile_aggregation' .*takes one of mean, max"):
        prepare_run("VLM4Rec", name, overrides={**overrides, "profile_aggregation": "median"},
                    build_features=False)
