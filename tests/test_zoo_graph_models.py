"""GRCN, DualGNN, SLMRec, PGL, LayerGCN, SelfCF: their equations against dense references on tiny
data, and the parts the contract suite cannot see (edge kernels, co-occurrence graph and its
random padding, contrastive branches that are off by default, training-only graphs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction

from recbole_vlm4rec.formats.features import save_feature
from recbole_vlm4rec.models._message_passing import UserItemEdges
from recbole_vlm4rec.models import _user_graph
from recbole_vlm4rec.models._user_graph import top_co_occurring_users
from recbole_vlm4rec.run.protocol import prepare_run
from recbole_vlm4rec.run.runner import build_run

from conftest import random_interactions, write_inter



@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """30 users x 40 items, features 'a' (8-d) and 'b' (6-d); the overrides a run needs."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "datasets"
    write_inter(root / "zoo", "zoo", random_interactions(30, 40, 10))
    rng = np.random.default_rng(3)
    tokens = [f"i{i}" for i in range(40)]
    for name, dim in (("a", 8), ("b", 6)):
        save_feature(root / "zoo" / "features", name, rng.random((40, dim)), tokens)
    return {"data_path": str(root), "checkpoint_dir": str(tmp_path / "saved"),
            "results_dir": str(tmp_path / "results"), "show_progress": False,
            "item_features": {"a": None, "b": None}, "default_item_feature": "a",
            "epochs": 1, "state": "ERROR", "gpu_id": "", "train_batch_size": 64}


def build(model: str, overrides: dict[str, Any], **settings: Any) -> Any:
    prepared = prepare_run(model, "zoo", overrides={**overrides, **settings})
    return build_run(prepared.config, prepared.model_class)


def dense_interactions(built: Any) -> torch.Tensor:
    """The training interactions the model was built from."""
    matrix = built.train_data.dataset.inter_matrix(form="csr")
    return torch.from_numpy(matrix.toarray() > 0).float()


def steps(model: Any, batch: Any, count: int = 3) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(count):
        loss = model.calculate_loss(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


# -- edge kernels (models/_message_passing.py) ---------------------------------------------------

def test_edge_kernels_equal_dense_products_and_their_gradients():
    matrix = sp.random(7, 5, density=0.5, format="csr", random_state=1)
    edges = UserItemEdges(matrix)
    dense = torch.from_numpy(matrix.toarray() > 0)
    assert len(edges.items) == int(dense.sum())
    users = torch.randn(7, 3, dtype=torch.double, requires_grad=True)
    items = torch.randn(5, 3, dtype=torch.double, requires_grad=True)
    weights = torch.rand(len(edges.items), dtype=torch.double, requires_grad=True)
    weighted = torch.zeros(7, 5, dtype=torch.double)
    weighted[edges.users, edges.items] = weights.detach()
    torch.testing.assert_close(edges.dot(users, items), (users @ items.T)[edges.users, edges.items])
    torch.testing.assert_close(edges.to_users(items, weights), weighted @ items)
    torch.testing.assert_close(edges.to_items(users, weights), weighted.T @ users)
    assert torch.autograd.gradcheck(lambda u, i: edges.dot(u, i), (users, items))
    assert torch.autograd.gradcheck(lambda w, i: edges.to_users(i, w), (weights, items))
    assert torch.autograd.gradcheck(lambda w, u: edges.to_items(u, w), (weights, users))
    scores = torch.randn(len(edges.items), dtype=torch.double)
    masked = torch.full((7, 5), float("-inf"), dtype=torch.double)
    masked[edges.users, edges.items] = scores
    torch.testing.assert_close(edges.softmax_per_item(scores),
                               torch.softmax(masked, dim=0)[edges.users, edges.items])
    torch.testing.assert_close(edges.softmax_per_user(scores),
                               torch.softmax(masked, dim=1)[edges.users, edges.items])


# -- GRCN ----------------------------------------------------------------------------------------

def grcn_reference(model: Any, interactions: torch.Tensor) -> torch.Tensor:
    """GRCN's representation of every node from its parameters, with dense masked matrices."""
    n_users = interactions.shape[0]
    mask = interactions > 0
    into_items, into_users, content = [], [], []
    for index, projection in enumerate(model.projections):
        items = F.normalize(F.leaky_relu(projection(getattr(model, f"feature_{index}"))), dim=1)
        users = F.normalize(model.preferences[index], dim=1)
        for _ in range(model.n_routing):
            attention = torch.softmax((users @ items.T).masked_fill(~mask, -torch.inf), dim=1)
            users = F.normalize(users + attention.nan_to_num() @ items, dim=1)
        scores = (users @ items.T).masked_fill(~mask, -torch.inf)
        to_items = torch.softmax(scores, dim=0).nan_to_num()  # over each item's users
        to_users = torch.softmax(scores, dim=1).nan_to_num()  # over each user's items
        content.append(torch.cat([users + to_users @ items, items + to_items.T @ users]))
        into_items.append(to_items)
        into_users.append(to_users)
    conf_users = model.confidence[:n_users].T.unsqueeze(2)  # (modalities, users, 1)
    conf_items = model.confidence[n_users:].T.unsqueeze(1)  # (modalities, 1, items)
    weight_to_items = F.relu((torch.stack(into_items) * conf_users).amax(dim=0)) * mask
    weight_to_users = F.relu((torch.stack(into_users) * conf_items).amax(dim=0)) * mask
    layer = F.normalize(model.id_embedding, dim=1)
    total = layer
    for _ in range(2):
        users, items = layer[:n_users], layer[n_users:]
        layer = torch.cat([weight_to_users @ items, weight_to_items.T @ users])
        total = total + layer
    return torch.cat([total, *content], dim=1)


@pytest.mark.parametrize("n_routing", [0, 2])
def test_grcn_representation_is_the_equations(data, n_routing):
    built = build("GRCN", data, content_features=["a", "b"], n_routing=n_routing,
                  learning_rate=0.01)
    model = built.model
    steps(model, next(iter(built.train_data)))
    model.eval()
    with torch.no_grad():
        users, items = model.forward()
        expected = grcn_reference(model, dense_interactions(built))
    torch.testing.assert_close(torch.cat([users, items]), expected, rtol=1e-4, atol=1e-5)


def test_grcn_routing_moves_the_preferences(data):
    scores = []
    for n_routing in (0, 1):
        built = build("GRCN", data, content_features=["a", "b"], n_routing=n_routing)
        built.model.eval()
        with torch.no_grad():
            scores.append(built.model.forward()[0])
    assert not torch.allclose(scores[0], scores[1])


# -- DualGNN -------------------------------------------------------------------------------------

@pytest.mark.parametrize("pair_budget", [1, 40, 2**24])  # one user a block ... one block
@pytest.mark.parametrize("one_sort_key", [True, False])  # False: too many for one int64 key
def test_co_occurring_users_are_the_top_k_by_shared_items(pair_budget, one_sort_key,
                                                          monkeypatch):
    if not one_sort_key:
        monkeypatch.setattr(_user_graph, "_SORT_KEY_LIMIT", 0)
    rng = np.random.default_rng(0)
    binary = (rng.random((25, 30)) < 0.15).astype(np.float32)
    binary[3] = 0  # a user with no item shares with nobody
    neighbours, counts, sizes = top_co_occurring_users(sp.csr_matrix(binary), k=4,
                                                       pair_budget=pair_budget)
    shared = binary @ binary.T
    np.fill_diagonal(shared, 0)
    for user in range(25):
        ranked = sorted((-shared[user, other], other) for other in range(25) if shared[user, other])
        expected = [other for _, other in ranked[:4]]
        assert list(neighbours[user, :len(expected)]) == expected
        assert list(counts[user, :len(expected)]) == [shared[user, o] for o in expected]
        assert not counts[user, len(expected):].any() and sizes[user] == len(expected)
    assert sizes[3] == 0 and not counts[3].any()


def test_co_occurring_users_count_shared_items_not_interaction_values():
    rng = np.random.default_rng(2)
    binary = (rng.random((20, 15)) < 0.3).astype(np.float32)
    repeated = binary * rng.integers(1, 4, binary.shape)  # RecBole counts repeated interactions
    for expected, got in zip(top_co_occurring_users(sp.csr_matrix(binary), k=3),
                             top_co_occurring_users(sp.csr_matrix(repeated), k=3)):
        assert np.array_equal(expected, got)


def test_co_occurring_users_hold_at_most_the_pair_budget_per_block(monkeypatch):
    rng = np.random.default_rng(1)
    binary = sp.csr_matrix((rng.random((60, 20)) < 0.3).astype(np.float32))
    bounds = _user_graph.pair_bounds(binary)
    blocks = []
    keep_top = _user_graph._keep_top

    def recording(shared, first_user, *args):
        blocks.append((first_user, shared.shape[0], shared.nnz))
        return keep_top(shared, first_user, *args)

    monkeypatch.setattr(_user_graph, "_keep_top", recording)
    budget = int(bounds.max()) * 3
    top_co_occurring_users(binary, k=5, pair_budget=budget)
    assert sum(rows for _, rows, _ in blocks) == 60 and len(blocks) > 3
    for first, rows, pairs in blocks:
        assert pairs <= bounds[first:first + rows].sum() <= budget


def polya_urn_copies(n_real: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """MMRec's padding, literally: append a uniformly drawn entry of the list until it has k."""
    entries = list(range(n_real))
    while len(entries) < k:
        entries.append(entries[rng.integers(len(entries))])
    return np.bincount(entries, minlength=n_real)


def test_dualgnn_neighbour_weights_follow_mmrec_padding(data):
    # every user shares items with 5 or more others here: k=5 lists are full, k=40 lists short
    full = build("DualGNN", data, content_features=["a", "b"], user_knn_k=5).model
    counts = full.neighbour_counts
    assert (counts[1:] > 0).all()
    for _ in range(3):  # full lists: the softmax of the counts, never random
        torch.testing.assert_close(full._draw_neighbour_weights()[1:],
                                   torch.softmax(counts[1:], dim=1))
    model = build("DualGNN", data, content_features=["a", "b"], user_knn_k=40).model
    counts = model.neighbour_counts
    real = counts > 0
    short = int(torch.argmin(real.sum(dim=1)[1:])) + 1  # the shortest list: most padding
    n_real = int(real[short].sum())
    assert 1 < n_real < 40
    draws = torch.stack([model._draw_neighbour_weights() for _ in range(2000)])
    torch.testing.assert_close(draws[0, 1:].sum(dim=1), torch.ones(counts.shape[0] - 1))
    assert (draws[:, 0] == 0).all()  # RecBole's padding user has no neighbour
    assert (draws[:, short, n_real:] == 0).all()
    # mean weight of each neighbour against MMRec's urn simulated directly
    rng = np.random.default_rng(0)
    exp = np.exp(counts[short, :n_real].numpy() - counts[short].max().item())
    urn = []
    for _ in range(4000):
        copies = polya_urn_copies(n_real, 40, rng)
        urn.append(copies * exp / (copies * exp).sum())
    np.testing.assert_allclose(draws[:, short, :n_real].mean(dim=0).numpy(),
                               np.mean(urn, axis=0), atol=0.02)
    assert draws[:, short].std(dim=0).max() > 0.01  # the padding is drawn, not fixed


def test_dualgnn_a_loaded_checkpoint_ranks_with_its_own_user_graph(data):
    built = build("DualGNN", data, content_features=["a", "b"])  # k 40 > 29 others: all padded
    model = built.model
    steps(model, next(iter(built.train_data)), 1)
    model.eval()
    users = Interaction({model.USER_ID: torch.arange(1, 30)})
    with torch.no_grad():
        before = model.full_sort_predict(users)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # a new epoch redraws the neighbour weights
    model.eval()
    with torch.no_grad():
        redrawn = model.full_sort_predict(users)
    assert not torch.allclose(before, redrawn)
    model.load_state_dict(saved)
    with torch.no_grad():
        torch.testing.assert_close(model.full_sort_predict(users), before)


# -- SLMRec --------------------------------------------------------------------------------------

@pytest.mark.parametrize("features, sizes", [(["a"], [16]), (["a", "b"], [16, 8]),
                                             (["a", "b", "a"], None)])
def test_slmrec_chain_spaces(data, features, sizes):
    if sizes is None:  # a feature named twice is refused, like every content_features model
        with pytest.raises(ValueError, match="more than once"):
            build("SLMRec", data, content_features=features, embedding_size=16)
        return
    model = build("SLMRec", data, content_features=features, embedding_size=16).model
    assert [layer.out_features for layer in model.chain] == sizes
    assert [layer.out_features for layer in model.view_maps] == sizes


def test_selfcf_batches_carry_no_sampled_negative(data):
    # SelfCF.yaml turns RecBole's negative sampling off (MMRec's SELFCFED_LGN samples none)
    built = build("SelfCF", data)
    model = built.model
    batch = next(iter(built.train_data))
    assert model.NEG_ITEM_ID not in batch.interaction
    assert model.USER_ID in batch.interaction and model.ITEM_ID in batch.interaction
    model.train()
    assert torch.isfinite(model.calculate_loss(batch))


@pytest.mark.parametrize("model_name", ["SLMRec"])
def test_models_without_negatives_ignore_the_sampled_negative(data, model_name):
    built = build(model_name, data, content_features=["a", "b"])
    model = built.model
    batch = next(iter(built.train_data))
    shuffled = Interaction({key: batch[key].clone() for key in batch.interaction})
    shuffled[model.NEG_ITEM_ID] = torch.randint(1, 41, shuffled[model.NEG_ITEM_ID].shape)
    model.train()
    torch.manual_seed(5)
    first = model.calculate_loss(batch)
    torch.manual_seed(5)
    assert torch.equal(first, model.calculate_loss(shuffled))


def test_slmrec_mean_fusion_trains(data):
    built = build("SLMRec", data, content_features=["a", "b"], fusion="mean", ssl_alpha=0.5,
                  learning_rate=0.01)
    model = built.model
    assert model.user_output.in_features == model.embedding_size
    batch = next(iter(built.train_data))
    model.train()
    before = float(model.calculate_loss(batch).detach())
    steps(model, batch, 10)
    assert float(model.calculate_loss(batch)) < before


# -- PGL -----------------------------------------------------------------------------------------

def test_pgl_trains_on_a_sampled_subgraph_and_scores_on_the_full_graph(data):
    built = build("PGL", data, content_features=["a", "b"], keep_rate=0.5, knn_k=3)
    model = built.model
    n_edges = int(dense_interactions(built).sum())
    model.train()
    sampled = model._adjacency()
    # each kept edge appears twice (user row and item row) in the symmetric adjacency
    assert sampled._nnz() == 2 * int(n_edges * 0.5)
    assert model._adjacency() is sampled  # one subgraph per epoch
    model.train()
    assert model._adjacency() is not sampled
    model.eval()
    assert model._adjacency() is model.full_adjacency


def test_pgl_contrastive_loss_acts_when_weighted(data):
    losses = []
    for reg_weight in (0.0, 0.5):
        built = build("PGL", data, content_features=["a", "b"], knn_k=3, reg_weight=reg_weight)
        built.model.train()
        torch.manual_seed(0)
        losses.append(built.model.calculate_loss(next(iter(built.train_data))))
    assert torch.isfinite(losses[1]) and losses[1] > losses[0]  # InfoNCE over >1 rows is > 0
    losses[1].backward()
    assert built.model.feature_tables[0].grad.abs().sum() > 0  # fine-tuned features learn


# -- LayerGCN and SelfCF ------------------------------------------------------------------------

def normalised_adjacency(interactions: torch.Tensor) -> torch.Tensor:
    n_users, n_items = interactions.shape
    full = torch.zeros(n_users + n_items, n_users + n_items)
    full[:n_users, n_users:] = interactions
    full[n_users:, :n_users] = interactions.T
    degree = full.sum(dim=1)
    scale = torch.where(degree > 0, degree.clamp_min(1e-12) ** -0.5, torch.zeros_like(degree))
    return scale[:, None] * full * scale[None, :]


def test_layergcn_is_the_layer_refined_sum(data):
    built = build("LayerGCN", data, n_layers=3)
    model = built.model
    steps(model, next(iter(built.train_data)))
    model.eval()
    adjacency = normalised_adjacency(dense_interactions(built))
    ego = torch.cat([model.user_embedding, model.item_embedding]).detach()
    layer, expected = ego, torch.zeros_like(ego)
    for _ in range(3):
        layer = adjacency @ layer
        layer = layer * F.cosine_similarity(layer, ego, dim=1)[:, None]
        expected = expected + layer
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(model.forward()), expected, rtol=1e-4, atol=1e-6)


def test_layergcn_pruning_alternates_and_keeps_the_share(data):
    built = build("LayerGCN", data, dropout=0.4)
    model = built.model
    n_edges = int(dense_interactions(built).sum())
    graphs = []
    for _ in range(2):
        model.train()
        graphs.append(model._adjacency())
        assert graphs[-1]._nnz() == 2 * int(n_edges * 0.6)
    assert model.epochs_pruned == 2
    model.eval()
    assert model._adjacency() is model.full_adjacency


def test_selfcf_edge_dropout_is_unbiased_and_scoring_uses_the_full_graph(data):
    built = build("SelfCF", data)
    model = built.model
    full = model.adjacency.to_dense()
    torch.manual_seed(0)
    mean = sum(model._dropped_adjacency().to_dense() for _ in range(3000)) / 3000
    # E[kept / (1 - r) | r] = 1 for every entry: the dropped graph is the full one on average
    # (the scale 1/(1-r) is heavy-tailed, so the tolerance is loose)
    assert (mean - full).abs().max() < 0.25 * full.max()
    assert abs(float(mean.sum() / full.sum()) - 1) < 0.1
    model.eval()
    users, items = model._encode(model.adjacency)
    scores_users, scores_items = model.forward()
    pairs = (scores_users[3] * scores_items[5]).sum()
    expected = (model.predictor(users[3]) * items[5]).sum() + (users[3] * model.predictor(items[5])).sum()
    torch.testing.assert_close(pairs, expected)
