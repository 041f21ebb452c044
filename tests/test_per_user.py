"""Run JSON extras: per-user test metrics whose means are RecBole's numbers, memory, card checksum."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from recbole_vlm4rec.run.runner import run


@pytest.mark.parametrize("model", ["VLM4Rec", "BPR"])
def test_per_user_metrics_average_to_recboles_test_result(tiny_dataset, model):
    _, name, overrides = tiny_dataset
    result = run(model, name, overrides=overrides)
    per_user = result.per_user_test
    assert set(per_user["metrics"]) == set(result.test_result)
    n_users = len(per_user["users"])
    assert n_users == 30 and len(set(per_user["users"])) == 30
    assert all(u.startswith("u") for u in per_user["users"])  # raw tokens, not internal ids
    for metric, values in per_user["metrics"].items():
        assert len(values) == n_users
        assert np.mean(values) == pytest.approx(result.test_result[metric], abs=6e-5), metric
    # Something must differ between users, or the test would pass on a constant.
    assert len(set(per_user["metrics"]["ndcg@20"])) > 1
    saved = json.loads(open(result.result_file).read())
    assert saved["per_user_test"] == per_user
    assert saved["seed"] == 2020 and saved["peak_memory_mb"]["rss"] > 50
    assert saved["seconds"]["test"] > 0 and "faiss-cpu" in saved["environment"]
    assert saved["dataset_card_sha256"] is None


def test_dataset_card_checksum_is_recorded(tiny_dataset):
    root, name, overrides = tiny_dataset
    card = root / name / "card.json"
    card.write_text('{"name": "tiny"}\n')
    result = run("Pop", name, overrides=overrides, write_results=False)
    assert result.dataset_card_sha256 == hashlib.sha256(card.read_bytes()).hexdigest()
