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
    from recbole_vlm4rec.models.lgmrec import _Hypergraph, _info_nce_sum

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
    fast = _info_nce_sum(other[once], rows[once], _Hypergraph(rows, dependencies, hyperedges),
                         counts, 0.2)
    fast_grads = torch.autograd.grad(fast, leaves)
    torch.testing.assert_close(fast, direct, rtol=1e-10, atol=1e-10)
    for mine, reference in zip(fast_grads, direct_grads):
        torch.testing.assert_close(mine, reference, rtol=1e-9, atol=1e-10)


def lgmrec_direct_loss(model, batch):
    """LGMRec's training loss as the paper / MMRec write it, on model._propagate()'s output."""
    user, pos, neg = batch["user_id"], batch["item_id"], batch["neg_item_id"]
    users, items, hyper_users, hyper_items = model._propagate()
    u, p, n = users[user], items[pos], items[neg]
    loss = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    loss = loss + model.reg_weight * (u.norm() + p.norm() + n.norm()) / len(user)
    contrast = 0.0
    for a, b in combinations(range(len(hyper_users)), 2):
        contrast = contrast + direct_info_nce_sum(hyper_users[a].rows[user],
                                                  hyper_users[b].rows[user],
                                                  hyper_users[b].rows[1:], model.temperature)
        contrast = contrast + direct_info_nce_sum(hyper_items[a].rows[pos],
                                                  hyper_items[b].rows[pos],
                                                  hyper_items[b].rows[1:], model.temperature)
    return loss + model.cl_weight * contrast


@pytest.mark.parametrize("hyper_num", [4, 16])  # below / above embedding_size 8
def test_lgmrec_training_loss_and_gradients_equal_the_direct_formula(
        two_features, build_pipeline, monkeypatch, hyper_num):  # noqa: F811
    monkeypatch.setattr(_graph, "_PRODUCT_BLOCK_ELEMENTS", 50)
    name, overrides = two_features
    overrides = {**read_by("LGMRec", overrides), "hyper_num": hyper_num, "cl_weight": 0.5}
    _, _, train, *_, model = build_pipeline("LGMRec", name, overrides)
    model.double().train()  # float64: the two sides differ by rounding only, far below 1e-9
    batch = next(iter(train))
    assert len(torch.unique(batch["user_id"])) < len(batch["user_id"])  # repeats are exercised
    parameters = [p for p in model.parameters() if p.requires_grad]

    torch.manual_seed(3)  # the same Gumbel noise and dropout masks on both sides
    direct = lgmrec_direct_loss(model, batch)
    direct_grads = torch.autograd.grad(direct, parameters)
    torch.manual_seed(3)
    loss = model.calculate_loss(batch)
    grads = torch.autograd.grad(loss, parameters)
    torch.testing.assert_close(loss, direct, rtol=1e-10, atol=1e-12)
    for mine, reference in zip(grads, direct_grads):
        torch.testing.assert_close(mine, reference, rtol=1e-9, atol=1e-12)
