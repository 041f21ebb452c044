"""Structured description slots as item attributes: `vlm4rec encode --modality slots` and the
AttributeKNN model (attribute item-kNN blended with CF item-kNN)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_vlm4rec import cli
from recbole_vlm4rec.encoding.slots import slot_tokens
from recbole_vlm4rec.formats.features import load_feature, save_feature


def test_slot_values_become_normalised_tokens():
    fields = {"Genre": ["Film Noir", "thriller"], "mood": "Dark, tense and gloomy.",
              "setting": "unknown", "audience": ""}
    assert slot_tokens(fields) == ["genre=film noir", "genre=thriller", "mood=dark",
                                   "mood=gloomy", "mood=tense"]


def write_descriptions(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_encode_slots_keeps_shared_tokens_and_reports_the_rest(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLM4REC_HOME", str(tmp_path))
    folder = tmp_path / "dataset" / "films"
    write_descriptions(folder / "descriptions" / "structured.jsonl", [
        {"item_id": "a", "text": "x", "fields": {"genre": ["noir", "drama"], "mood": "dark"}},
        {"item_id": "b", "text": "x", "fields": {"genre": ["noir"], "mood": "dark, bright"}},
        {"item_id": "c", "text": "x", "fields": {"genre": ["drama"], "mood": "sunny"}},
        {"item_id": "d", "text": "x", "fields": {"genre": ["western"], "mood": "dusty"}},
        {"item_id": "e", "status": "failed", "reason": "invalid_json", "text": None},
        {"item_id": "f", "text": "free text, no slots"},
    ])
    assert cli.main(["encode", "films", "--modality", "slots", "--descriptions",
                     "structured"]) == 0
    feature = load_feature(folder / "features", "slots")
    vocabulary = feature.meta["vocabulary"]
    assert vocabulary == ["genre=drama", "genre=noir", "mood=dark"]  # tokens of 2+ items
    rows = dict(zip(feature.tokens, feature.matrix.tolist()))
    assert rows == {"a": [1.0, 1.0, 1.0], "b": [0.0, 1.0, 1.0], "c": [1.0, 0.0, 0.0]}
    assert {s["item_id"]: s["reason"] for s in feature.meta["skipped"]} == {
        "d": "no_slot_tokens", "e": "failed", "f": "no_fields"}
    assert "3 items" in capsys.readouterr().out
    write_descriptions(folder / "descriptions" / "free.jsonl", [{"item_id": "a", "text": "x"}])
    assert cli.main(["encode", "films", "--modality", "slots", "--descriptions", "free"]) == 2
    assert "free.jsonl: no ok row has structured `fields`" in capsys.readouterr().err


@pytest.fixture
def with_attributes(tiny_dataset):
    root, name, overrides = tiny_dataset
    rng = np.random.default_rng(4)
    attributes = (rng.random((40, 12)) < 0.3).astype(np.float32)
    attributes[:, 0] = 0.0
    attributes[[3, 7], 0] = 1.0  # one rare token shared by items 3 and 7
    save_feature(root / name / "features", "slots", attributes, [f"i{i}" for i in range(40)])
    overrides = {**overrides, "item_features": {"emb": None, "slots": None},
                 "item_feature": "slots", "knn_k": 5}
    return name, overrides


def all_scores(data, model) -> torch.Tensor:
    model.eval()
    users = torch.arange(1, data.user_num)
    return model.full_sort_predict(Interaction({"user_id": users})).reshape(len(users), -1)


def test_without_attributes_it_is_item_knn_cosine(with_attributes, build_pipeline):
    name, overrides = with_attributes
    _, data, train, *_, model = build_pipeline("AttributeKNN", name, {
        **overrides, "attribute_weight": 0.0, "knn_k": 45})  # every neighbour: no ties to break
    interactions = (train._dataset.inter_matrix(form="csr").toarray() > 0).astype(float)
    counts = interactions.sum(axis=0)
    norms = np.sqrt(np.outer(counts, counts))
    cosine = np.divide(interactions.T @ interactions, norms, out=np.zeros_like(norms),
                       where=norms > 0)
    np.fill_diagonal(cosine, 0.0)
    np.testing.assert_allclose(all_scores(data, model).numpy(), interactions[1:] @ cosine,
                               rtol=1e-5, atol=1e-6)


def test_an_item_nobody_interacted_with_is_reached_through_its_attributes(with_attributes,
                                                                         build_pipeline):
    name, overrides = with_attributes
    over = {**overrides, "attribute_weight": 1.0, "cold_start_items": 0.25}
    from recbole_vlm4rec.run.protocol import prepare_run
    from recbole_vlm4rec.run.runner import build_run

    built = build_run(*(lambda p: (p.config, p.model_class))(prepare_run("AttributeKNN", name,
                                                                          overrides=over)))
    model, data = built.model, built.dataset
    cold = np.asarray(model.history.sum(axis=0)).ravel() == 0
    cold[0] = False
    scores = all_scores(data, model).numpy()
    assert cold.sum() == 10 and (scores[:, cold] > 0).any()
    pairs = model.predict(Interaction({"user_id": torch.tensor([1, 2]),
                                       "item_id": torch.tensor([3, 5])}))
    torch.testing.assert_close(pairs, torch.tensor([scores[0, 3], scores[1, 5]]))


def test_attribute_knn_runs_and_rejects_bad_settings(with_attributes, build_pipeline):
    from recbole_vlm4rec.run.runner import run

    name, overrides = with_attributes
    result = run("AttributeKNN", name, overrides=overrides, write_results=False)
    assert 0.0 <= result.test_result["recall@20"] <= 1.0
    from recbole_vlm4rec.run.accounting import ConfigValueError
    from recbole_vlm4rec.run.protocol import prepare_run

    with pytest.raises(ConfigValueError, match="'attribute_weighting' .*takes one of tfidf, binary"):
        prepare_run("AttributeKNN", name, overrides={**overrides, "attribute_weighting": "bm25"},
                    build_features=False)
    with pytest.raises(ValueError, match="negative values"):
        build_pipeline("AttributeKNN", name, {**overrides, "item_feature": "emb"})
