"""What the contract suite cannot see in the ported MMRec models (BM3, LATTICE, MGCN, DRAGON):
DRAGON's user-user graph and its padding, LATTICE's once-per-epoch learned graph, BM3's and
MGCN's fine-tuned features, the graph helpers they share."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recbole_vlm4rec.models._graph import user_item_adjacency
from recbole_vlm4rec.models._user_graph import top_co_occurring_users


def test_co_occurring_users_by_hand():
    # users x items; user 3 shares nothing with anyone
    interactions = sp.csr_matrix(np.array([[1, 1, 1, 0, 0],
                                           [1, 1, 0, 0, 0],
                                           [0, 1, 1, 0, 0],
                                           [0, 0, 0, 1, 0],
                                           [1, 0, 0, 0, 0]], dtype=np.float32))
    neighbours, counts, sizes = top_co_occurring_users(interactions, k=2)
    assert sizes.tolist() == [2, 2, 2, 0, 2]
    # user 0 shares 2 items with users 1 and 2 (tie: lower id first), 1 with user 4
    assert neighbours[0].tolist() == [1, 2] and counts[0].tolist() == [2.0, 2.0]
    assert neighbours[1].tolist() == [0, 2] and counts[1].tolist() == [2.0, 1.0]
    assert neighbours[4].tolist() == [0, 1] and counts[4].tolist() == [1.0, 1.0]
    assert counts[3].tolist() == [0.0, 0.0]


def test_user_item_adjacency_with_self_loops_is_row_stochastic():
    interactions = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0]], dtype=np.float32))
    adjacency = user_item_adjacency(interactions, "mean", self_loops=True).toarray()
    assert np.allclose(adjacency.sum(axis=1), 1.0)
    assert adjacency[0, 0] == pytest.approx(1 / 3)  # user 0: itself and two items
    assert adjacency[0, 2 + 2] == pytest.approx(1 / 3)


@pytest.fixture
def zoo(tiny_dataset, build_pipeline):
    _, name, overrides = tiny_dataset

    def build(model: str, **settings):
        config, data, train, *_, instance = build_pipeline(
            model, name, {**overrides, "content_features": ["emb"], **settings})
        return instance, next(iter(train))

    return build


def test_dragon_pads_short_neighbour_lists_from_the_list(zoo):
    model, _ = zoo("DRAGON", user_knn_k=50)  # more than the 29 other users: every list is padded
    sizes = model.user_list_sizes
    for user in range(1, model.n_users):
        size = int(sizes[user])
        listed = set(model.user_neighbours[user, :size].tolist())
        drawn = model.epoch_neighbours[user]
        if size == 0:
            assert float(model.epoch_weights[user].sum()) == 0.0
            continue
        assert drawn[:size].tolist() == model.user_neighbours[user, :size].tolist()
        assert set(drawn.tolist()) <= listed
        assert float(model.epoch_weights[user].sum()) == pytest.approx(1.0, abs=1e-5)
    before = model.epoch_neighbours.clone()
    model.train()  # a new epoch re-draws the padding
    assert not torch.equal(before, model.epoch_neighbours)


def test_dragon_weights_follow_the_shared_counts(zoo):
    model, _ = zoo("DRAGON", user_knn_k=3)
    user = int(torch.nonzero(model.user_list_sizes == 3)[0])
    expected = torch.softmax(model.user_counts[user], dim=0)
    assert torch.allclose(model.epoch_weights[user], expected)


def test_lattice_learns_its_graph_only_in_an_epochs_first_batch(zoo):
    model, batch = zoo("LATTICE", knn_k=3)
    model.train()
    model.calculate_loss(batch).backward()
    first = [p.grad for p in model.projections.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in first)
    assert model.modality_logits.grad is not None
    model.zero_grad(set_to_none=True)
    model.calculate_loss(batch).backward()
    assert all(p.grad is None for p in model.projections.parameters())
    assert model.item_embedding.weight.grad is not None
    model.zero_grad(set_to_none=True)
    model.train()  # next epoch
    model.calculate_loss(batch).backward()
    assert all(p.grad is not None for p in model.projections.parameters())


def test_lattice_evaluation_uses_the_current_parameters(zoo):
    from recbole.data.interaction import Interaction

    model, batch = zoo("LATTICE", knn_k=3, lambda_coeff=0.0)
    users = Interaction({model.USER_ID: torch.arange(1, 5)})
    model.train()
    model.calculate_loss(batch)  # builds and keeps the epoch's graph
    model.eval()
    before = model.full_sort_predict(users)
    with torch.no_grad():
        model.projections[0].weight.normal_()
    model.train()
    model.eval()  # a new evaluation: the learned graph of the changed projection
    assert not torch.allclose(model.full_sort_predict(users), before)


@pytest.mark.parametrize("model_name", ["BM3", "MGCN", "LATTICE"])
def test_train_features_decides_whether_features_are_fine_tuned(zoo, model_name):
    fixed, batch = zoo(model_name, train_features=False)
    assert not any(name.startswith("features.") for name, _ in fixed.named_parameters())
    assert not any(key.startswith("features.") for key in fixed.state_dict())
    tuned, batch = zoo(model_name, train_features=True)
    tuned.train()
    tuned.calculate_loss(batch).backward()
    table = tuned.features.table(0)
    assert table.grad is not None and table.grad.abs().sum() > 0


def test_bm3_ignores_negatives_and_scores_through_the_predictor(zoo):
    model, batch = zoo("BM3", dropout=0.0)
    model.train()
    torch.manual_seed(0)
    loss = model.calculate_loss(batch)
    from recbole.data.interaction import Interaction

    shuffled = Interaction({key: batch[key] for key in batch.interaction})
    # another negative for every row: BM3 never reads it
    shuffled.interaction[model.NEG_ITEM_ID] = torch.flip(batch[model.NEG_ITEM_ID], dims=[0])
    torch.manual_seed(0)
    assert model.calculate_loss(shuffled).item() == pytest.approx(loss.item(), rel=1e-6)
    model.eval()
    users, items = model._online()
    expected = model.predictor(users[1]) @ model.predictor(items).T
    scores = model.full_sort_predict(Interaction({model.USER_ID: torch.tensor([1])}))
    assert torch.allclose(scores, expected, atol=1e-5)
