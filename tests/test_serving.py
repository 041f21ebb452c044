"""Serving: export -> bundle -> recommend round trip, exactness, explanations, every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recbole_vlm4rec import cli
from recbole_vlm4rec.serving.bundle import BundleError, load_bundle, write_bundle
from recbole_vlm4rec.serving.export import export_dataset_bundle, read_descriptions
from recbole_vlm4rec.serving.recommend import (EmptyHistoryError, EncoderMismatchError,
                                               Recommender, UnknownItemError, UnknownUserError)


def brute_force(bundle, history_tokens, k, aggregation="mean"):
    rows = [bundle.item_tokens.index(t) for t in history_tokens]
    vectors = bundle.embeddings[rows]
    if aggregation == "mean":
        profile = vectors.mean(axis=0)
        scores = bundle.embeddings @ (profile / np.linalg.norm(profile))
    else:
        scores = (bundle.embeddings @ vectors.T).max(axis=1)
    scores[rows] = -np.inf
    return [bundle.item_tokens[i] for i in np.argsort(-scores)[:k]]


@pytest.fixture
def exported(tiny_dataset, tmp_path):
    root, name, overrides = tiny_dataset
    descriptions = tmp_path / "descriptions.tsv"
    descriptions.write_text("item_id\tdescription\n"
                            + "".join(f"i{i}\tthing number {i}\n" for i in range(40)))
    folder = export_dataset_bundle(name, tmp_path / "bundle", descriptions_file=descriptions,
                                   overrides=overrides)
    return folder, root / name


def test_known_user_gets_unseen_items_equal_to_brute_force_with_explanations(exported):
    folder, _ = exported
    recommender = Recommender(folder)
    bundle = recommender.bundle
    assert bundle.meta["n_items"] == 40 and bundle.meta["n_users"] == 30
    assert bundle.meta["model"] == "VLM4Rec" and bundle.meta["item_feature"] == "emb"
    user = "u3"
    history = [bundle.item_tokens[r] for r in bundle.history_rows(bundle.user_tokens.index(user))]
    assert len(history) == 10  # every interaction of the user, not only the training split
    found = recommender.for_user(user, k=5, explain=3)
    assert [r.item for r in found] == brute_force(bundle, history, 5)
    assert not set(r.item for r in found) & set(history)
    first = found[0]
    assert first.description == f"thing number {first.item[1:]}"
    assert len(first.because) == 3 and {b.item for b in first.because} <= set(history)
    similarities = [b.similarity for b in first.because]
    assert similarities == sorted(similarities, reverse=True)
    assert first.because[0].description.startswith("thing number")


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_new_user_history_matches_brute_force(exported, tmp_path, aggregation):
    folder, _ = exported
    bundle = load_bundle(folder)
    if aggregation == "max":
        bundle.meta["profile_aggregation"] = "max"
    recommender = Recommender(bundle)
    history = ["i1", "i7", "i30"]
    found = recommender.for_items(history, k=8)
    assert [r.item for r in found] == brute_force(bundle, history, 8, aggregation)
    assert all(r.item not in history for r in found)


def test_bad_queries_fail_clearly(exported):
    recommender = Recommender(exported[0])
    with pytest.raises(UnknownUserError, match=r"unknown user 'u99'.*knows 30 users"):
        recommender.for_user("u99")
    with pytest.raises(UnknownItemError, match=r"unknown item 'nope', 'i999'"):
        recommender.for_items(["i1", "nope", "i999"])
    with pytest.raises(EmptyHistoryError, match="empty history"):
        recommender.for_items([" ", ""])
    with pytest.raises(EncoderMismatchError, match="not made by a text encoder"):
        recommender.for_text("something cosy")  # the tiny feature has no encoder


def test_user_without_vectors_and_encoder_mismatch(tmp_path):
    rng = np.random.default_rng(0)
    meta = {"model": "VLM4Rec", "item_feature": "vlm", "profile_aggregation": "mean",
            "encoder": {"name": "all-MiniLM-L6-v2", "fingerprint": "0000000000000000"}}
    folder = write_bundle(tmp_path / "b", ["a", "b", "c"], rng.normal(size=(3, 4)),
                          ["alice", "bob"], [np.array([0, 1]), np.array([], dtype=np.int64)], meta)
    recommender = Recommender(folder)
    assert [r.item for r in recommender.for_user("alice", k=5)] == ["c"]  # only unseen left
    with pytest.raises(EmptyHistoryError, match="user 'bob' has no interacted item"):
        recommender.for_user("bob")
    with pytest.raises(EncoderMismatchError, match="fingerprint 0000000000000000"):
        recommender.for_text("a red wool scarf")  # checked before any model is loaded
    (folder / "index.faiss").unlink()
    with pytest.raises(BundleError, match=r"missing \['index.faiss'\]"):
        load_bundle(folder)
    with pytest.raises(BundleError, match="no bundle.json"):
        load_bundle(tmp_path)


def test_history_items_without_a_vector_are_left_out_not_called_unknown(tmp_path):
    rng = np.random.default_rng(0)
    meta = {"model": "VLM4Rec", "item_feature": "vlm", "profile_aggregation": "mean",
            "feature": {"items_without_vector_tokens": ["nopic"]}}
    folder = write_bundle(tmp_path / "b", ["a", "b", "c"], rng.normal(size=(3, 4)),
                          ["alice"], [np.array([0])], meta)
    recommender = Recommender(folder)
    with_gap = [r.item for r in recommender.for_items(["a", "nopic"], k=2)]
    assert recommender.ignored_items == ["nopic"]
    assert with_gap == [r.item for r in recommender.for_items(["a"], k=2)]
    assert recommender.ignored_items == []
    with pytest.raises(EmptyHistoryError, match="none of the history items has a 'vlm' vector"):
        recommender.for_items(["nopic"])
    with pytest.raises(UnknownItemError):
        recommender.for_items(["a", "zzz"])


def test_descriptions_formats(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"item": "x", "description": "red"}\n\n{"item_id": 5, "text": "blue"}\n')
    assert read_descriptions(jsonl) == {"x": "red", "5": "blue"}
    bad = tmp_path / "d.tsv"
    bad.write_text("foo\tbar\nx\ty\n")
    with pytest.raises(ValueError, match="header needs an item column"):
        read_descriptions(bad)


def test_descriptions_from_vlm4rec_ground_leave_out_failed_items(tmp_path):
    rows = [
        {"item_id": "1", "status": "ok", "text": "a red dress", "reason": None},
        {"item_id": "2", "status": "failed", "text": None, "reason": "no_image"},
    ]
    path = tmp_path / "tagger-preference.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert read_descriptions(path) == {"1": "a red dress"}
    path.write_text('{"item_id": "3", "status": "ok"}\n')
    with pytest.raises(ValueError, match=":1: needs one of"):
        read_descriptions(path)


def test_cli_export_and_recommend(tiny_dataset, tmp_path, capsys):
    _, name, overrides = tiny_dataset
    folder = tmp_path / "cli-bundle"
    exported = export_dataset_bundle(name, folder, index_kind="hnsw", overrides=overrides)
    assert load_bundle(exported).meta["index"] == "hnsw"
    assert cli.main(["recommend", str(folder), "--items", "i1,i2", "-k", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["recommendations"]) == 3
    assert answer["recommendations"][0]["because"][0]["item"] in ("i1", "i2")
    assert cli.main(["recommend", str(folder), "--user", "u0", "-k", "2"]) == 0
    assert "because you liked" in capsys.readouterr().out
    assert cli.main(["recommend", str(folder), "--user", "ghost"]) == 2
    assert "unknown user 'ghost'" in capsys.readouterr().err
