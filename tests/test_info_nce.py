"""The contrastive losses' fast paths compute what the direct formulas compute: the blocked
log-sum-exp (values and gradients against torch.logsumexp over the full product matrix), LGMRec's
low-rank, deduplicated InfoNCE over all candidates and its whole training loss (against the
formula written out on the same forward pass), up to float rounding."""

from __future__ import annotations

from itertools import combinations

import pytest
import torch
import torch.nn.functional as F

from recbole_vlm4rec.models import _graph
from recbole_vlm4rec.models._graph import log_sum_exp_of_products

from conftest import read_by
from test_lgmrec_smore import two_features  # noqa: F401  (fixture)


def direct_log_sum_exp(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(queries @ keys.T, dim=1)


def values_and_gradients(function, queries, keys, weights):
    queries = queries.detach().clone().requires_grad_()
    keys = keys.detach().clone().requires_grad_()
    value = function(queries, keys)
    (value * weights).sum().backward()
    return value.detach(), queries.grad, keys.grad


@pytest.mark.parametrize("block_elements", [1, 7, 10**6])  # one key per block, ragged, one block
@pytest.mark.parametrize("scale, bound", [(1.0, 5.0), (1.0, None), (40.0, 100.0)])
def test_blocked_log_sum_exp_equals_the_full_matrix(monkeypatch, block_elements, scale, bound):
    monkeypatch.setattr(_graph, "_PRODUCT_BLOCK_ELEMENTS", block_elements)
    generator = torch.Generator().manual_seed(block_elements)
    queries = torch.randn(6, 3, generator=generator, dtype=torch.float64) * scale
    keys = torch.randn(23, 3, generator=generator, dtype=torch.float64)
    weights = torch.randn(6, generator=generator, dtype=torch.float64)
    blocked = values_and_gradients(lambda q, k: log_sum_exp_of_products(q, k, bound),
                                   queries, keys, weights)
    direct = values_and_gradients(direct_log_sum_exp, queries, keys, weights)
    # products up to ~40 * 3 * 3: exp overflows float64 only past 709, but the shifted path
    # (bound > 60) must still agree where the direct formula also shifts
    for mine, reference in zip(blocked, direct):
        torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-10)


def test_blocked_log_sum_exp_shifts_where_plain_exp_would_overflow():
    queries = torch.tensor([[100.0], [-100.0]])
    keys = torch.tensor([[1.0], [0.5], [-1.0]])
    result = log_sum_exp_of_products(queries, keys, max_abs_product=100.0)
    torch.testing.assert_close(result, direct_log_sum_exp(queries, keys))
    assert torch.isfinite(result).all()


def test_blocked_log_sum_exp_gradient_check(monkeypatch):
    monkeypatch.setattr(_graph, "_PRODUCT_BLOCK_ELEMENTS", 4)
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(3, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(9, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k: log_sum_exp_of_products(q, k, None), (queries, keys))
    assert torch.autograd.gradcheck(lambda q, k: log_sum_exp_of_products(q, k, 10.0), (queries, keys))


def direct_info_nce_sum(anchors, positives, candidates, temperature):
    """The loss as written: every anchor row (repeats included) against every candidate row."""
    anchors, positives = F.normalize(anchors) / temperature, F.normalize(positives)
    logits = anchors @ F.normalize(candidates).T
    return (torch.logsumexp(logits, dim=1) - (anchors * positives).sum(dim=1)).sum()


@pytest.mark.parametrize("rank, size", [(4, 16), (16, 16), (20, 8)])  # low rank, full, wide
def test_lgmrec_info_nce_equals_the_direct_formula(monkeypatch, rank, size):
    from recbole_vlm4rec.models.lgmrec import _info_nce_sum

    monkeypatch.setattr(_graph, "_PRODUCT_BLOCK_ELEMENTS", 13)
    generator = torch.Generator().manual_seed(rank)
    dependencies = torch.rand(30, rank, generator=generator, dtype=torch.float64)
    dependencies[3] = 0.0  # a dropped-out row: zero embedding, F.normalize's eps path
    hyperedges = torch.randn(rank, size, generator=generator, dtype=torch.float64)
    other = torch.randn(30, size, generator=generator, dtype=torch.float64)
    batch = torch.tensor([5, 3, 5, 9, 1, 5, 9, 29])  # repeats, as in a training batch
    leaves = (dependencies.requires_grad_(), hyperedges.requires_grad_(), other.requires_grad_())

    rows = dependencies @ hyperedges
    direct = direct_info_nce_sum(other[batch], rows[batch], rows[1:], 0.2)
    direct_grads = torch.autograd.grad(direct, leaves)

    rows = dependencies @ hyperedges
    once, counts = torch.unique(batch, return_counts=True)
    fast = _info_nce_sum(other[once], rows[once], dependencies, hyperedges, counts, 0.2)
    fast_grads = torch.autograd.grad(fast, leaves)
    torch.testing.assert_close(fast, direct, rtol=1e-10, atol=1e-10)
    for mine, reference in zip(fast_grads, direct_grads):
        torch.testing.assert_close(mine, reference, rtol=1e-9, atol=1e-10)


def lgmrec_reference(model, batch):
    """LGMRec written out as the paper and MMRec compute it, from the model's parameters and
    data alone: dense matrices, every row of every embedding, the hypergraph layer by layer, the
    contrast's batch rows (repeats included) against all rows. Draws the Gumbel noise and the
    dropout masks in the model's order, so under one seed both see the same ones.

    Returns the final (users, items) and the loss's terms: BPR, L2, contrast (weighted)."""
    user, pos, neg = batch["user_id"], batch["item_id"], batch["neg_item_id"]
    n_users, t = model.n_users, model.temperature
    adjacency = model.adjacency.to_dense()
    interactions = model.user_items.to_dense()
    degree = interactions.sum(dim=1, keepdim=True)
    user_mean = torch.where(degree > 0, interactions / degree.clamp_min(1), 0.0)
    layers = [torch.cat([model.user_embedding.weight, model.item_embedding.weight])]
    for _ in range(model.n_ui_layers):
        layers.append(adjacency @ layers[-1])
    collaborative = torch.stack(layers).mean(dim=0)
    local, global_sum, hyper_users, hyper_items = collaborative, 0.0, [], []
    for index, (projection, hyperedges) in enumerate(zip(model.projections, model.hyperedges)):
        feature = getattr(model, f"feature_{index}")
        item_values = feature @ projection
        modality = torch.cat([user_mean @ item_values, item_values])
        for _ in range(model.n_mm_layers):
            modality = adjacency @ modality
        local = local + F.normalize(modality)
        item_logits = feature @ hyperedges
        item_hyper = F.gumbel_softmax(item_logits, t, dim=1)
        item_hyper = item_hyper * (torch.arange(len(item_hyper)) > 0).unsqueeze(1)  # no padding
        user_hyper = F.gumbel_softmax(interactions @ item_logits, t, dim=1)
        item_hyper, user_hyper = model.hyper_dropout(item_hyper), model.hyper_dropout(user_hyper)
        items = collaborative[n_users:]
        for _ in range(model.n_hyper_layer):
            hyperedge_values = item_hyper.T @ items
            items = item_hyper @ hyperedge_values
            users = user_hyper @ hyperedge_values
        hyper_users.append(users)
        hyper_items.append(items)
        global_sum = global_sum + torch.cat([users, items])
    final_users, final_items = torch.split(local + model.alpha * F.normalize(global_sum),
                                           [n_users, model.n_items])
    u, p, n = final_users[user], final_items[pos], final_items[neg]
    bpr = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    l2 = model.reg_weight * (u.norm() + p.norm() + n.norm()) / len(user)
    contrast = 0.0
    for a, b in combinations(range(len(hyper_users)), 2):
        contrast = contrast + direct_info_nce_sum(hyper_users[a][user], hyper_users[b][user],
                                                  hyper_users[b][1:], t)
        contrast = contrast + direct_info_nce_sum(hyper_items[a][pos], hyper_items[b][pos],
                                                  hyper_items[b][1:], t)
    return final_users, final_items, (bpr, l2, model.cl_weight * contrast)


# hyper_num below / above embedding_size 8 (factored / row-wise contrast), hypergraph layers
@pytest.mark.parametrize("hyper_num, n_hyper_layer", [(4, 1), (4, 3), (16, 2)])
def test_lgmrec_training_loss_and_gradients_equal_the_reference(
        two_features, build_pipeline, monkeypatch, hyper_num, n_hyper_layer):  # noqa: F811
    monkeypatch.setattr(_graph, "_PRODUCT_BLOCK_ELEMENTS", 50)
    name, overrides = two_features
    overrides = {**read_by("LGMRec", overrides), "hyper_num": hyper_num, "cl_weight": 0.5,
                 "n_hyper_layer": n_hyper_layer, "reg_weight": 0.01}
    _, _, train, *_, model = build_pipeline("LGMRec", name, overrides)
    model.double().train()  # float64: the two sides differ by rounding only, far below 1e-9
    batch = next(iter(train))
    assert len(torch.unique(batch["user_id"])) < len(batch["user_id"])  # repeats are exercised
    parameters = [p for p in model.parameters() if p.requires_grad]

    torch.manual_seed(3)  # the same Gumbel noise and dropout masks on both sides
    *_, terms = lgmrec_reference(model, batch)
    reference = sum(terms)
    reference_grads = torch.autograd.grad(reference, parameters)
    torch.manual_seed(3)
    loss = model.calculate_loss(batch)
    grads = torch.autograd.grad(loss, parameters)
    # every term weighs far above the tolerance: leaving one out cannot pass
    assert min(float(term.detach()) for term in terms) > 1e-4
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
    for mine, expected in zip(grads, reference_grads):
        torch.testing.assert_close(mine, expected, rtol=1e-9, atol=1e-12)


def test_lgmrec_scores_equal_the_reference(two_features, build_pipeline):  # noqa: F811
    name, overrides = two_features
    _, _, train, *_, model = build_pipeline("LGMRec", name, read_by("LGMRec", overrides))
    model.double().eval()  # evaluation: no dropout, Gumbel noise still drawn
    batch = next(iter(train))
    with torch.no_grad():
        torch.manual_seed(5)
        users, items, _ = lgmrec_reference(model, batch)
        torch.manual_seed(5)
        mine = model.forward()
    torch.testing.assert_close(mine[0], users, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mine[1], items, rtol=1e-10, atol=1e-12)


def test_fixed_feature_product_gradient_equals_autograds():
    from recbole_vlm4rec.models._graph import fixed_feature_product

    generator = torch.Generator().manual_seed(1)
    features = torch.randn(11, 7, generator=generator, dtype=torch.float64)
    weights = torch.randn(7, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(11, 3, generator=generator, dtype=torch.float64)
    mine = torch.autograd.grad((fixed_feature_product(features, weights) * upstream).sum(), weights)
    plain = torch.autograd.grad(((features @ weights) * upstream).sum(), weights)
    torch.testing.assert_close(mine, plain, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda w: fixed_feature_product(features, w), (weights,))


@pytest.mark.parametrize("temperature", [0.2, 0.01])  # plain exp / shifted (bound over 60)
def test_repeated_rows_info_nce_equals_the_in_batch_info_nce_of_the_batch(monkeypatch,
                                                                          temperature):
    from recbole_vlm4rec.models._graph import in_batch_info_nce, repeated_rows_info_nce

    monkeypatch.setattr(_graph, "_PRODUCT_BLOCK_ELEMENTS", 7)
    generator = torch.Generator().manual_seed(4)
    view = torch.randn(9, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    other = torch.randn(9, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    batch = torch.tensor([4, 1, 4, 8, 0, 4, 8, 2, 2, 2, 7])  # repeats, as in a training batch
    direct = in_batch_info_nce(view[batch], other[batch], temperature)
    once, counts = torch.unique(batch, return_counts=True)
    mine = repeated_rows_info_nce(view[once], other[once], counts, temperature)
    torch.testing.assert_close(mine, direct, rtol=1e-10, atol=1e-10)
    for a, b in zip(torch.autograd.grad(mine, (view, other)),
                    torch.autograd.grad(direct, (view, other))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
