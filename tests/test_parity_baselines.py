"""The MMRec-parity baselines: BPRMF's penalty and VBPR's regularised bias terms, checked against
hand computations on tiny batches, and a few real training steps on the tiny fixture."""

from __future__ import annotations

import math

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_vlm4rec.models import get_model_class


def batch(users: list[int], pos: list[int], neg: list[int]) -> Interaction:
    return Interaction({"user_id": torch.tensor(users), "item_id": torch.tensor(pos),
                        "neg_item_id": torch.tensor(neg)})


def frobenius(rows: list[list[float]]) -> float:
    return math.sqrt(sum(x * x for row in rows for x in row))


def bpr_term(pos_scores: list[float], neg_scores: list[float]) -> float:
    return -sum(math.log(1e-10 + 1 / (1 + math.exp(-(p - n))))
                for p, n in zip(pos_scores, neg_scores)) / len(pos_scores)


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


@pytest.fixture
def bprmf(tiny_dataset, build_pipeline):
    _, name, overrides = tiny_dataset
    *_, model = build_pipeline("BPRMF", name, {**overrides, "embedding_size": 2,
                                               "reg_weight": 0.5})
    with torch.no_grad():
        model.user_embedding.weight[1:3] = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
        model.item_embedding.weight[1:5] = torch.tensor([[0.5, 0.5], [2.0, 0.0],
                                                         [-1.0, 1.0], [0.0, 3.0]])
    return model


def test_bprmf_loss_is_bpr_plus_mmrecs_penalty_by_hand(bprmf):
    users = [[1.0, 2.0], [0.0, -1.0]]
    pos = [[0.5, 0.5], [-1.0, 1.0]]   # items 1, 3
    neg = [[2.0, 0.0], [0.0, 3.0]]    # items 2, 4
    expected = bpr_term([dot(u, i) for u, i in zip(users, pos)],
                        [dot(u, j) for u, j in zip(users, neg)])
    expected += 0.5 * (frobenius(users) + frobenius(pos) + frobenius(neg)) / 2
    loss = bprmf.calculate_loss(batch([1, 2], [1, 3], [2, 4]))
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_bprmf_reads_reg_weight(bprmf):
    interaction = batch([1, 2], [1, 3], [2, 4])
    with_penalty = bprmf.calculate_loss(interaction).item()
    bprmf.reg_weight = 0.0
    assert bprmf.calculate_loss(interaction).item() < with_penalty - 0.5


def test_bpr_is_still_recboles_and_bprmf_is_ours():
    from recbole.model.general_recommender import BPR

    assert get_model_class("BPR") is BPR
    assert get_model_class("BPRMF").__module__ == "recbole_vlm4rec.models.bprmf"


@pytest.fixture
def vbpr(tiny_dataset, build_pipeline):
    """VBPR with embedding_size 1 on the 8-d 'emb' feature, all factors set by hand."""
    _, name, overrides = tiny_dataset
    _, data, *_, model = build_pipeline("VBPR", name, {**overrides, "embedding_size": 1,
                                                       "reg_weight": 0.5})
    with torch.no_grad():
        model.user_embedding.weight[1] = torch.tensor([1.0, 2.0])
        model.item_embedding.weight[1:3] = torch.tensor([[0.5], [-1.0]])
        model.content_projection.weight.copy_(torch.linspace(-0.3, 0.4, 16).reshape(2, 8))
    return model


def vbpr_rows(model, item: int) -> list[float]:
    """[gamma_i, E f_i, beta' f_i, beta_i] computed by hand from the model's parameters."""
    f = model.content[item].tolist()
    weights = model.content_projection.weight.tolist()
    return [model.item_embedding.weight[item, 0].item(), dot(weights[0], f), dot(weights[1], f),
            model.item_bias.weight[item, 0].item()]


@pytest.mark.parametrize("item_bias", [0.0, 3.0])
def test_vbpr_loss_by_hand_biases_in_score_and_penalty(vbpr, item_bias):
    with torch.no_grad():
        vbpr.item_bias.weight[1] = item_bias
    user = [1.0, 2.0]
    pos, neg = vbpr_rows(vbpr, 1), vbpr_rows(vbpr, 2)

    def score(row: list[float]) -> float:
        return dot(user, row[:2]) + row[2] + row[3]

    expected = bpr_term([score(pos)], [score(neg)])
    expected += 0.5 * (frobenius([user]) + frobenius([pos]) + frobenius([neg])) / 1
    loss = vbpr.calculate_loss(batch([1], [1], [2]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_vbpr_penalty_grows_with_both_bias_terms(vbpr):
    # positive = negative item: the BPR term is log 2 whatever the biases, only the penalty moves
    same = batch([1, 1], [1, 2], [1, 2])
    base = vbpr.calculate_loss(same).item()
    with torch.no_grad():
        vbpr.item_bias.weight[1] = 2.0
    with_item_bias = vbpr.calculate_loss(same).item()
    with torch.no_grad():
        vbpr.content_projection.weight[-1] += 1.0   # beta' . f_i grows for every item
    with_visual_bias = vbpr.calculate_loss(same).item()
    assert with_item_bias > base + 0.1
    assert with_visual_bias != pytest.approx(with_item_bias, abs=1e-3)
    vbpr.reg_weight = 0.0
    assert vbpr.calculate_loss(same).item() == pytest.approx(math.log(2), rel=1e-6)


@pytest.mark.parametrize("pos_items,neg_items", [
    ([1, 2, 1, 5], [2, 7, 7, 1]),                        # few distinct items: projected one by one
    (list(range(1, 41, 2)) * 2, list(range(2, 41, 2)) * 2),  # most of the 41: the whole catalogue
])
def test_vbpr_repeated_items_in_a_batch_match_the_per_row_loss(vbpr, pos_items, neg_items):
    # Each distinct item is projected once; rows must still line up with their items.
    interaction = batch([1] * len(pos_items), pos_items, neg_items)
    user = [1.0, 2.0]
    pos = [vbpr_rows(vbpr, i) for i in pos_items]
    neg = [vbpr_rows(vbpr, i) for i in neg_items]
    score = [dot(user, r[:2]) + r[2] + r[3] for r in pos], [dot(user, r[:2]) + r[2] + r[3]
                                                            for r in neg]
    expected = bpr_term(*score)
    expected += 0.5 * (frobenius([user] * len(pos)) + frobenius(pos) + frobenius(neg)) / len(pos)
    assert vbpr.calculate_loss(interaction).item() == pytest.approx(expected, rel=1e-5)


def test_bprmf_trains_and_full_sort_matches_predict(tiny_dataset, build_pipeline):
    _, name, overrides = tiny_dataset
    _, data, train, *_, model = build_pipeline("BPRMF", name, overrides)
    first = next(iter(train))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = model.calculate_loss(first)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    users = torch.arange(1, data.user_num)
    full = model.full_sort_predict(Interaction({"user_id": users}))
    pairs = model.predict(Interaction({"user_id": users.repeat_interleave(data.item_num),
                                       "item_id": torch.arange(data.item_num).repeat(len(users))}))
    torch.testing.assert_close(pairs, full)


def test_bprmf_learns_the_taste_groups_through_the_runner(taste_groups):
    """Through runner.run, as a user's run: far above a random ranking (~0.34) on data with signal."""
    from conftest import LEARNED_RECALL_AT_10, read_by
    from recbole_vlm4rec.run.runner import run

    _, name, overrides = taste_groups
    result = run("BPRMF", name, overrides=read_by("BPRMF", overrides), write_results=False)
    assert result.test_result["recall@10"] >= LEARNED_RECALL_AT_10, result.test_result


@pytest.fixture
def vbpr_mmrec(tiny_dataset, build_pipeline):
    """VBPR in MMRec's form (use_bias False), embedding_size 1, factors and offset set by hand."""
    _, name, overrides = tiny_dataset
    _, data, *_, model = build_pipeline("VBPR", name, {**overrides, "embedding_size": 1,
                                                       "reg_weight": 0.5, "use_bias": False})
    with torch.no_grad():
        model.user_embedding.weight[1] = torch.tensor([1.0, 2.0])
        model.item_embedding.weight[1:3] = torch.tensor([[0.5], [-1.0]])
        model.content_projection.weight.copy_(torch.linspace(-0.3, 0.4, 8).reshape(1, 8))
        model.content_projection.bias.fill_(0.7)
    return model


def test_vbpr_without_bias_is_mmrecs_loss_by_hand(vbpr_mmrec):
    assert not hasattr(vbpr_mmrec, "item_bias")
    user = [1.0, 2.0]
    weights = vbpr_mmrec.content_projection.weight[0].tolist()

    def row(item: int) -> list[float]:  # MMRec's item row [gamma_i, E f_i + b]
        return [vbpr_mmrec.item_embedding.weight[item, 0].item(),
                dot(weights, vbpr_mmrec.content[item].tolist()) + 0.7]

    pos, neg = row(1), row(2)
    expected = bpr_term([dot(user, pos)], [dot(user, neg)])
    expected += 0.5 * (frobenius([user]) + frobenius([pos]) + frobenius([neg])) / 1
    assert vbpr_mmrec.calculate_loss(batch([1], [1], [2])).item() == pytest.approx(expected,
                                                                                    rel=1e-5)


def test_vbpr_without_bias_offset_moves_the_penalty_not_the_ranking(vbpr_mmrec):
    from recbole.data.interaction import Interaction

    users = Interaction({"user_id": torch.tensor([1, 2])})
    same = batch([1, 1], [1, 2], [1, 2])  # BPR term is log 2: only the penalty moves
    vbpr_mmrec.eval()
    before, penalty_before = vbpr_mmrec.full_sort_predict(users), vbpr_mmrec.calculate_loss(same)
    with torch.no_grad():
        vbpr_mmrec.content_projection.bias.fill_(-2.0)
    vbpr_mmrec.train()  # drops the evaluation cache
    vbpr_mmrec.eval()
    after, penalty_after = vbpr_mmrec.full_sort_predict(users), vbpr_mmrec.calculate_loss(same)
    shift = (after - before).reshape(2, -1)
    # each user's scores move by one constant (theta_u . delta b): the ranking is unchanged
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5)
    assert abs(shift[0, 0].item()) > 0.1
    assert penalty_after.item() != pytest.approx(penalty_before.item(), abs=1e-3)
