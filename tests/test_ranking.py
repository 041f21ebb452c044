"""Tie-safe ranking: equal scores are ordered by a seeded permutation, never by item index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_vlm4rec.formats.features import FeatureFileError, save_feature
from recbole_vlm4rec.formats.ranking import priorities, tie_safe_topk

from conftest import write_inter


def test_rows_without_ties_keep_torch_topk():
    scores = torch.randn(64, 500, generator=torch.Generator().manual_seed(0))
    top = tie_safe_topk(scores, 20, torch.arange(64), seed=2020)
    torch.testing.assert_close(top.indices, torch.topk(scores, 20, dim=1).indices)
    assert top.all_equal == 0 and top.tied_at_cutoff == 0


def test_ties_follow_score_then_seeded_priority_exactly():
    rng = np.random.default_rng(3)
    # few distinct values (negative, -0.0, 0.0, positive) so most rows tie; some items masked
    values = np.array([-1.5, -0.0, 0.0, 0.25, 2.0], dtype=np.float32)
    scores = torch.from_numpy(values[rng.integers(0, 5, size=(40, 30))])
    scores[:, :4] = -torch.inf
    users = torch.arange(100, 140)
    top = tie_safe_topk(scores, 10, users, seed=7)
    priority = priorities(users, 30, seed=7).numpy()
    for row in range(40):
        s = scores[row].numpy() + 0.0  # -0.0 and 0.0 are one value
        expected = sorted(range(30), key=lambda i: (-s[i], -priority[row, i]))[:10]
        assert top.indices[row].tolist() == expected


@pytest.mark.parametrize("share_of_ones", [0.0, 0.002, 0.02, 0.3, 0.97])
def test_large_tie_groups_are_walked_in_priority_order(share_of_ones):
    """Rows of 3,000 items: groups of zeros and ones of every size (walked once, walked deeper,
    ranked directly), masked items."""
    rng = np.random.default_rng(4)
    scores = torch.from_numpy((rng.random((25, 3000)) < share_of_ones).astype(np.float32))
    scores[torch.from_numpy(rng.random((25, 3000)) < 0.05)] = -torch.inf
    users = torch.arange(25) * 7
    top = tie_safe_topk(scores, 20, users, seed=11)
    priority = priorities(users, 3000, seed=11).numpy()
    for row in range(25):
        expected = np.lexsort((-priority[row], -scores[row].numpy()))[:20]
        assert top.indices[row].tolist() == expected.tolist()


def test_a_model_that_knows_nothing_picks_items_uniformly():
    n_users, n_items, k = 2000, 100, 10
    top = tie_safe_topk(torch.zeros(n_users, n_items), k, torch.arange(n_users), seed=2020)
    counts = np.bincount(top.indices.flatten().numpy(), minlength=n_items)
    # index order would give items 0..9 every time; uniform is n_users * k / n_items = 200 each
    assert counts[:k].sum() < 0.2 * n_users * k
    assert counts.min() > 100 and counts.max() < 300
    assert top.all_equal == n_users and top.tied_at_cutoff == n_users


def test_the_seed_decides_the_order_and_repeats_it():
    scores = torch.zeros(5, 50)
    users = torch.arange(5)
    first = tie_safe_topk(scores, 5, users, seed=1).indices
    assert torch.equal(first, tie_safe_topk(scores, 5, users, seed=1).indices)
    assert not torch.equal(first, tie_safe_topk(scores, 5, users, seed=2).indices)


def _popular_first_dataset(root: Path, name: str, n_users: int = 150, n_items: int = 200) -> None:
    """Items appear in the file most popular first, so RecBole's ids follow popularity."""
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, n_items + 1)
    popularity /= popularity.sum()
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=12, replace=False, p=popularity)
        rows += [(f"u{u}", f"i{i}", 5.0, 1000 * u + t) for t, i in enumerate(items)]
    first = {}
    for _, item, _, _ in rows:
        first.setdefault(item, int(item[1:]))
    rows.sort(key=lambda row: int(row[1][1:]))  # item i0 (most popular) first in the file
    write_inter(root / name, name, rows)


def test_vlm4rec_on_a_feature_covering_one_item_ranks_at_random_level(tmp_path, monkeypatch):
    """149 of 150 users have no profile: every item scores 0. torch.topk's own tie order gave
    Recall@20 0.02 here (the ids follow popularity; which end topk favours depends on the row
    length); the seeded order gives random level, about 20 of ~190 unmasked items."""
    from recbole_vlm4rec.run.runner import run

    monkeypatch.chdir(tmp_path)
    root, name = tmp_path / "data", "popfirst"
    _popular_first_dataset(root, name)
    save_feature(root / name / "features", "one", np.ones((1, 4), np.float32), ["i150"])
    result = run("VLM4Rec", name, overrides={
        "data_path": str(root), "item_features": {"one": None}, "item_feature": "one",
        "results_dir": str(tmp_path / "results"), "checkpoint_dir": str(tmp_path / "saved"),
        "show_progress": False, "state": "WARNING", "gpu_id": ""})
    assert 0.06 < result.test_result["recall@20"] < 0.16
    saved = json.loads(Path(result.result_file).read_text())
    assert saved["ranking"]["users_all_equal"] >= 140
    assert saved["ranking"]["users"] == 150 and saved["ranking"]["seed"] == 2020
    assert saved["features"]["one"]["items_covered"] == 1
    feature = saved["features"]["one"]
    assert feature["coverage"] == pytest.approx(1 / feature["items"], abs=1e-6)
    assert saved["environment"]["commit"]  # the code that made the numbers


def test_a_feature_covering_no_item_is_an_error(tiny_dataset):
    from recbole_vlm4rec.run.runner import run

    root, name, overrides = tiny_dataset
    save_feature(root / name / "features", "none", np.ones((2, 4), np.float32), ["x1", "x2"])
    with pytest.raises(FeatureFileError, match="none of the dataset's 40 items has a vector"):
        run("VLM4Rec", name, overrides={**overrides, "item_features": {"none": None},
                                          "item_feature": "none",
                                          "feature_unknown_tokens": "ignore"})
