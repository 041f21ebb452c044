"""Serving: a bundle answers exactly what the model's full_sort_predict ranks (same masking), for
VLM4Rec, VLM4RecFusion and a trained LightGCN; new users, explanations, every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recbole_vlm4rec import cli
from recbole_vlm4rec.formats.features import save_feature
from recbole_vlm4rec.serving.bundle import BundleError, load_bundle, write_profile_arrays
from recbole_vlm4rec.serving.export import (export_bundle, export_checkpoint_bundle,
                                            read_descriptions)
from recbole_vlm4rec.serving.recommend import (EmptyHistoryError, EncoderMismatchError,
                                               Recommender, ServingError, UnknownItemError,
                                               UnknownUserError)


def model_top_k(model: str, name: str, overrides: dict, k: int) -> dict[str, list[str]]:
    """Each test user's top-k of ``full_sort_predict`` with the evaluation's masking."""
    from recbole.data.interaction import Interaction

    from recbole_vlm4rec.run.protocol import prepare_run
    from recbole_vlm4rec.run.runner import build_run

    prepared = prepare_run(model, name, overrides=overrides)
    built = build_run(prepared.config, prepared.model_class)
    return top_k_of(built, k, Interaction)


def top_k_of(built, k, Interaction) -> dict[str, list[str]]:
    """The evaluation's ranking: formats/ranking.tie_safe_topk with the run's seed."""
    from recbole_vlm4rec.formats.ranking import tie_safe_topk

    data, test = built.dataset, built.test_data
    users = data.field2id_token[data.uid_field]
    items = data.field2id_token[data.iid_field]
    found = {}
    with torch.no_grad():
        for uid in range(1, len(users)):
            scores = built.model.full_sort_predict(
                Interaction({data.uid_field: torch.tensor([uid])})).view(-1).clone()
            scores[0] = -np.inf
            scores[test.uid2history_item[uid]] = -np.inf
            top = tie_safe_topk(scores[None, :], k, torch.tensor([uid]), built.config["seed"])
            found[str(users[uid])] = [str(items[i]) for i in top.indices[0]]
    return found


@pytest.fixture
def exported(tiny_dataset, tmp_path):
    root, name, overrides = tiny_dataset
    descriptions = tmp_path / "descriptions.tsv"
    descriptions.write_text("item_id\tdescription\n"
                            + "".join(f"i{i}\tthing number {i}\n" for i in range(40)))
    folder = export_bundle("VLM4Rec", name, tmp_path / "bundle", overrides=overrides,
                           descriptions_file=descriptions)
    return folder, name, overrides


@pytest.mark.parametrize("mask", ["train_valid", "train"])
def test_vlm4rec_known_users_get_exactly_full_sort_predicts_top_k(tiny_dataset, tmp_path, mask):
    _, name, overrides = tiny_dataset
    overrides = {**overrides, "eval_history_mask": mask}
    folder = export_bundle("VLM4Rec", name, tmp_path / "b", overrides=overrides)
    expected = model_top_k("VLM4Rec", name, overrides, 5)
    recommender = Recommender(folder)
    assert recommender.bundle.meta["eval_history_mask"] == mask
    for user, items in expected.items():
        assert [r.item for r in recommender.for_user(user, k=5)] == items, user


def test_vlm4rec_max_aggregation_matches_too(tiny_dataset, tmp_path):
    _, name, overrides = tiny_dataset
    overrides = {**overrides, "profile_aggregation": "max"}
    folder = export_bundle("VLM4Rec", name, tmp_path / "b", overrides=overrides)
    expected = model_top_k("VLM4Rec", name, overrides, 4)
    recommender = Recommender(folder)
    for user, items in expected.items():
        assert [r.item for r in recommender.for_user(user, k=4)] == items, user


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_ties_are_served_in_the_evaluations_order(tiny_dataset, tmp_path, aggregation):
    """A feature covering 6 of 40 items: most items score exactly 0, so every user's top-10 ends
    in a tie that the seeded permutation orders, in the bundle as in the evaluation."""
    root, name, overrides = tiny_dataset
    rng = np.random.default_rng(5)
    save_feature(root / name / "features", "few", rng.normal(size=(6, 8)),
                 [f"i{i}" for i in range(6)])
    overrides = {**overrides, "item_features": {"few": None}, "item_feature": "few",
                 "profile_aggregation": aggregation, "seed": 7}
    folder = export_bundle("VLM4Rec", name, tmp_path / "b", overrides=overrides)
    expected = model_top_k("VLM4Rec", name, overrides, 10)
    recommender = Recommender(folder)
    served = 0
    for user, items in expected.items():
        try:
            got = [r.item for r in recommender.for_user(user, k=10)]
        except EmptyHistoryError:  # no profile item: served by nothing, scored all-equal
            continue
        assert got == items, user
        served += 1
    assert served >= 10


def test_weighted_fusion_matches_and_builds_new_profiles_block_by_block(tiny_dataset, tmp_path):
    root, name, overrides = tiny_dataset
    rng = np.random.default_rng(7)
    tokens = [f"i{i}" for i in range(0, 40, 2)]  # covers half the items: zero blocks elsewhere
    save_feature(root / name / "features", "other", rng.normal(size=(len(tokens), 5)), tokens)
    overrides = {**overrides, "item_features": {"emb": None, "other": None},
                 "content_features": "emb,other", "fusion": "weighted",
                 "fusion_weights": "[0.3, 0.7]"}
    folder = export_bundle("VLM4RecFusion", name, tmp_path / "b", overrides=overrides)
    expected = model_top_k("VLM4RecFusion", name, overrides, 5)
    recommender = Recommender(folder)
    assert [b["weight"] for b in recommender.bundle.meta["blocks"]] == pytest.approx([0.3, 0.7])
    for user, items in expected.items():
        assert [r.item for r in recommender.for_user(user, k=5)] == items, user
    # a new user's profile: the same as the model would build from that history
    bundle = recommender.bundle
    history = ["i1", "i2", "i7"]
    rows = [bundle.item_tokens.index(t) for t in history]
    emb, other = bundle.embeddings[:, :8], bundle.embeddings[:, 8:]
    scores = 0.0
    for block, weight in ((emb, 0.3), (other, 0.7)):
        profile = block[rows].sum(axis=0)
        scores = scores + np.sqrt(weight) * block @ (profile / np.linalg.norm(profile))
    scores[rows] = -np.inf
    brute = [bundle.item_tokens[i] for i in np.argsort(-scores, kind="stable")[:6]]
    assert [r.item for r in recommender.for_items(history, k=6)] == brute


def test_trained_lightgcn_served_from_its_checkpoint(tiny_dataset, tmp_path):
    from recbole.data.interaction import Interaction

    from recbole_vlm4rec.run.protocol import prepare_run
    from recbole_vlm4rec.run.runner import build_run, run

    _, name, overrides = tiny_dataset
    overrides = {**overrides, "epochs": 2, "eval_step": 1}
    result = run("LightGCN", name, overrides=overrides)
    assert result.checkpoint and result.checkpoint.endswith(".pth")
    folder = export_checkpoint_bundle(result.checkpoint, tmp_path / "lightgcn", top_n=10)
    # the same model: rebuilt and loaded from the checkpoint the run evaluated
    prepared = prepare_run("LightGCN", name, overrides=overrides)
    built = build_run(prepared.config, prepared.model_class)
    built.model.load_state_dict(torch.load(result.checkpoint, weights_only=False)["state_dict"])
    built.model.eval()
    expected = top_k_of(built, 6, Interaction)
    recommender = Recommender(folder)
    assert recommender.bundle.meta["kind"] == "topn" and recommender.bundle.meta["model"] == "LightGCN"
    for user, items in expected.items():
        assert [r.item for r in recommender.for_user(user, k=6)] == items, user
    with pytest.raises(ServingError, match="--top-n 11"):
        recommender.for_user("u0", k=11)
    with pytest.raises(ServingError, match="needs a feature-based bundle"):
        recommender.for_items(["i1"])


def test_known_user_answers_carry_explanations(exported):
    folder, _, _ = exported
    recommender = Recommender(folder)
    bundle = recommender.bundle
    assert bundle.meta["n_items"] == 40 and bundle.meta["n_users"] == 30
    assert bundle.meta["model"] == "VLM4Rec" and bundle.meta["item_feature"] == "emb"
    user = "u3"
    row = bundle.user_tokens.index(user)
    history = {bundle.item_tokens[r] for r in bundle.profile_rows(row)}
    masked = {bundle.item_tokens[r] for r in bundle.masked_rows(row)}
    assert 0 < len(history) < 10 and history <= masked  # training items only; all masked
    found = recommender.for_user(user, k=5, explain=3)
    assert not {r.item for r in found} & masked
    first = found[0]
    assert first.description == f"thing number {first.item[1:]}"
    assert len(first.because) == 3 and {b.item for b in first.because} <= history
    similarities = [b.similarity for b in first.because]
    assert similarities == sorted(similarities, reverse=True)


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_new_user_history_matches_brute_force(exported, aggregation):
    folder, _, _ = exported
    bundle = load_bundle(folder)
    bundle.meta["profile_aggregation"] = aggregation
    recommender = Recommender(bundle)
    history = ["i1", "i7", "i30"]
    rows = [bundle.item_tokens.index(t) for t in history]
    vectors = bundle.embeddings[rows]
    if aggregation == "mean":
        profile = vectors.sum(axis=0)
        scores = bundle.embeddings @ (profile / np.linalg.norm(profile))
    else:
        scores = (bundle.embeddings @ vectors.T).max(axis=1)
    scores[rows] = -np.inf
    brute = [bundle.item_tokens[i] for i in np.argsort(-scores)[:8]]
    assert [r.item for r in recommender.for_items(history, k=8)] == brute


def test_bad_queries_fail_clearly(exported):
    recommender = Recommender(exported[0])
    with pytest.raises(UnknownUserError, match=r"unknown user 'u99'.*knows 30 users"):
        recommender.for_user("u99")
    with pytest.raises(UnknownItemError, match=r"unknown item 'nope', 'i999'"):
        recommender.for_items(["i1", "nope", "i999"])
    with pytest.raises(EmptyHistoryError, match="empty history"):
        recommender.for_items([" ", ""])
    with pytest.raises(EncoderMismatchError, match="not made by one text encoder"):
        recommender.for_text("something cosy")  # the tiny feature has no encoder


def small_bundle(tmp_path, has_vector=(True, True, True, False), encoder=None):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(4, 4)).astype(np.float32)
    embeddings[~np.asarray(has_vector)] = 0.0
    meta = {"model": "VLM4Rec", "item_feature": "vlm", "features": ["vlm"],
            "encoder": encoder or {}}
    return write_profile_arrays(
        tmp_path / "b", ["a", "b", "c", "nopic"], embeddings, np.asarray(has_vector),
        ["alice", "bob"], [np.array([0, 1]), np.array([], dtype=np.int64)],
        [np.array([0, 1]), np.array([], dtype=np.int64)], meta,
        user_profiles=np.stack([embeddings[:2].sum(0) / np.linalg.norm(embeddings[:2].sum(0)),
                                np.zeros(4, np.float32)]))


def test_user_without_vectors_encoder_mismatch_and_broken_bundles(tmp_path):
    folder = small_bundle(tmp_path, encoder={"name": "all-MiniLM-L6-v2",
                                             "fingerprint": "0000000000000000"})
    recommender = Recommender(folder)
    # only unmasked items; an item without a vector scores 0, as in the model
    found = recommender.for_user("alice", k=5)
    assert {r.item for r in found} == {"c", "nopic"}
    assert dict((r.item, r.score) for r in found)["nopic"] == 0.0
    with pytest.raises(EmptyHistoryError, match="user 'bob' has no training item"):
        recommender.for_user("bob")
    with pytest.raises(EncoderMismatchError, match="fingerprint 0000000000000000"):
        recommender.for_text("a red wool scarf")  # checked before any model is loaded
    (folder / "index.faiss").unlink()
    with pytest.raises(BundleError, match=r"missing \['index.faiss'\]"):
        load_bundle(folder)
    with pytest.raises(BundleError, match="no bundle.json"):
        load_bundle(tmp_path)


def test_history_items_without_a_vector_are_left_out_not_called_unknown(tmp_path):
    recommender = Recommender(small_bundle(tmp_path))
    with_gap = [r.item for r in recommender.for_items(["a", "nopic"], k=2)]
    assert recommender.ignored_items == ["nopic"]
    assert with_gap == [r.item for r in recommender.for_items(["a", "nopic"], k=2)]
    assert recommender.for_items(["a"], k=3)[0].item == with_gap[0]
    with pytest.raises(EmptyHistoryError, match="none of the history items has a 'vlm' vector"):
        recommender.for_items(["nopic"])
    with pytest.raises(UnknownItemError):
        recommender.for_items(["a", "zzz"])


def test_descriptions_formats(tmp_path, capsys):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"item": "x", "description": "red"}\n\n{"item_id": 5, "text": "blue"}\n'
                     'not json\n')
    assert read_descriptions(jsonl) == {"x": "red", "5": "blue"}
    assert "1 malformed lines left out" in capsys.readouterr().err and "d.jsonl:4" in jsonl.name + ":4"
    bad = tmp_path / "d.tsv"
    bad.write_text("foo\tbar\nx\ty\n")
    with pytest.raises(ValueError, match="header needs an item column"):
        read_descriptions(bad)


def test_descriptions_from_vlm4rec_ground_leave_out_failed_and_empty_items(tmp_path):
    rows = [
        {"item_id": "1", "status": "ok", "text": "a red dress", "reason": None},
        {"item_id": "2", "status": "failed", "text": None, "reason": "no_image"},
        {"item_id": "3", "status": "ok", "text": "  "},
    ]
    path = tmp_path / "tagger-preference.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert read_descriptions(path) == {"1": "a red dress"}


def test_cli_export_and_recommend(tiny_dataset, tmp_path, capsys, monkeypatch):
    _, name, overrides = tiny_dataset
    folder = tmp_path / "cli-bundle"
    exported = export_bundle("VLM4Rec", name, folder, index_kind="hnsw", overrides=overrides)
    assert load_bundle(exported).meta["index"] == "hnsw"
    assert cli.main(["recommend", str(folder), "--items", "i1,i2", "-k", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["recommendations"]) == 3
    assert answer["recommendations"][0]["because"][0]["item"] in ("i1", "i2")
    assert cli.main(["recommend", str(folder), "--user", "u0", "-k", "2"]) == 0
    assert "because you liked" in capsys.readouterr().out
    assert cli.main(["recommend", str(folder), "--user", "ghost"]) == 2
    assert "unknown user 'ghost'" in capsys.readouterr().err
    assert cli.main(["export", "--checkpoint", str(tmp_path / "none.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
