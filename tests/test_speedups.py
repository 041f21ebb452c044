"""Each speed-up in speedups.py computes exactly what RecBole's own code computes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recbole_vlm4rec import compat, speedups

# compat.install() (tests/conftest.py) puts the speed-ups and the tie-safe collector in place.


def test_sparse_topk_hits_equal_recboles_dense_computation():
    """Without ties (where the ranking is unique) the replaced collector gives RecBole's tensors."""
    from recbole.evaluator.collector import Collector

    config = compat.config_class()(model="BPR", dataset="ml-100k", config_dict={
        "gpu_id": "", "metrics": ["Recall", "NDCG", "MRR", "Hit", "ItemCoverage"],
        "topk": [5, 10]})
    rng = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 300, generator=rng)
    positive_u = torch.randint(0, 50, (400,), generator=rng)
    positive_i = torch.randint(1, 300, (400,), generator=rng)
    positive_u[-5:], positive_i[-5:] = positive_u[:5], positive_i[:5]  # duplicate pairs
    results = []
    for collect in (Collector.eval_batch_collect, Collector.eval_batch_collect._original):
        collector = Collector(config)
        collect(collector, scores.clone(), None, positive_u, positive_i)
        results.append((collector.data_struct.get("rec.topk"), collector.data_struct.get("rec.items")))
    assert Collector.eval_batch_collect._vlm4rec_shim
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_topk_hits_of_given_indices_equal_dense_gather():
    rng = torch.Generator().manual_seed(1)
    scores = torch.randn(20, 60, generator=rng)
    positive_u = torch.randint(0, 20, (80,), generator=rng)
    positive_i = torch.randint(1, 60, (80,), generator=rng)
    topk_idx = torch.randint(0, 60, (20, 7), generator=rng)
    dense = torch.zeros_like(scores, dtype=torch.int64)
    dense[positive_u, positive_i] = 1
    expected = torch.cat((torch.gather(dense, 1, topk_idx), dense.sum(1, keepdim=True)), dim=1)
    torch.testing.assert_close(speedups.topk_hits(scores, positive_u, positive_i, 7, topk_idx),
                               expected)


def test_topk_over_the_catalogue_is_a_clear_error():
    scores = torch.randn(3, 11)  # 10 items + padding
    assert speedups.topk_hits(scores, torch.tensor([0]), torch.tensor([1]), 11).shape == (3, 12)
    with pytest.raises(ValueError, match="top-20 asked for, but the catalogue has only 10 items"):
        speedups.topk_hits(scores, torch.tensor([0]), torch.tensor([1]), 20)


def test_itemknn_scores_are_csr_and_full_ranking_matches_predict(tiny_dataset, build_pipeline):
    from recbole.data.interaction import Interaction

    _, name, overrides = tiny_dataset
    _, data, *_, model = build_pipeline("ItemKNN", name, overrides)
    assert sp.isspmatrix_csr(model.pred_mat)
    users = torch.arange(1, 6)
    full = model.full_sort_predict(Interaction({"user_id": users})).reshape(len(users), -1)
    items = torch.arange(data.item_num)
    pairs = model.predict(Interaction({"user_id": users.repeat_interleave(data.item_num),
                                       "item_id": items.repeat(len(users))}))
    torch.testing.assert_close(pairs.reshape(len(users), -1).float(), full.float())


@pytest.mark.parametrize("index", [
    np.array([4, 0, 4, 9, 2]), np.array([4, 0, 9], dtype=np.int32), np.array([-1, 3]),
    np.arange(10) % 3 == 0, torch.tensor([7, 7, 1]), torch.arange(10) > 6, np.array([], dtype=int),
])
def test_training_batch_rows_equal_recboles_list_indexing(index):
    """Interaction[array] (every training batch) gives the rows RecBole's list indexing gives."""
    from recbole.data.interaction import Interaction

    interaction = Interaction({"user_id": torch.arange(10) * 3, "rating": torch.rand(10),
                               "item_seq": torch.arange(30).reshape(10, 3)})
    fast = interaction[index]
    assert Interaction.__getitem__._vlm4rec_shim
    slow = Interaction.__getitem__._original(interaction, index)
    assert set(fast.interaction) == set(slow.interaction)
    for key in slow.interaction:
        assert fast[key].dtype == slow[key].dtype
        assert torch.equal(fast[key], slow[key]), key


def test_other_interaction_indexes_keep_recboles_behaviour():
    from recbole.data.interaction import Interaction

    interaction = Interaction({"user_id": torch.arange(10), "rating": torch.rand(10)})
    assert torch.equal(interaction["user_id"], torch.arange(10))
    assert torch.equal(interaction[2:5]["user_id"], torch.arange(2, 5))
    assert torch.equal(interaction[[1, 3]]["user_id"], torch.tensor([1, 3]))
    assert int(interaction[np.int64(4)]["user_id"]) == 4


def test_training_loader_batches_are_the_samplers_positions(tiny_dataset, build_pipeline):
    """RecBole's loaders fetch a batch of positions at once: the same batches, in the same order,
    as the element-by-element fetch of a plain list."""
    from recbole_vlm4rec.speedups import RowPositions

    _, name, overrides = tiny_dataset
    _, _, train, *_ = build_pipeline("BPR", name, {**overrides, "train_batch_size": 32})
    assert type(train.__dict__["dataset"]) is RowPositions
    batches = {}
    for kind in (list, RowPositions):
        train.__dict__["dataset"] = kind(train.__dict__["dataset"])
        train.generator.manual_seed(0)
        batches[kind] = [(batch["user_id"].clone(), batch["item_id"].clone()) for batch in train]
    plain, fast = batches[list], batches[RowPositions]
    assert len(plain) == len(fast) > 1
    for (users, items), (fast_users, fast_items) in zip(plain, fast):
        assert torch.equal(users, fast_users) and torch.equal(items, fast_items)
