"""LGMRec and SMORE on tiny data: training signal, gradients into each feature's parameters,
predict / full_sort_predict agreement, determinism, feature-count errors, the runner; and the
graph helpers they add (cosine-weighted kNN graph, max-union of graphs)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from recbole.data.interaction import Interaction

from conftest import LEARNED_RECALL_AT_10, read_by
from recbole_vlm4rec.data.dataset import MissingFeatureError
from recbole_vlm4rec.formats.features import save_feature
from recbole_vlm4rec.models._graph import elementwise_max_union, knn_item_graph

MODELS = ["LGMRec", "SMORE"]
# A parameter per feature through which that feature enters the model.
FEATURE_PARAMETERS = {"LGMRec": ["projections.{}", "hyperedges.{}"],
                      "SMORE": ["projections.{}.weight"]}


@pytest.fixture
def two_features(tiny_dataset):
    """tiny_dataset plus a 5-d 'txt' feature that 6 of the 40 items lack; the overrides carry
    both models' settings, so each run takes ``read_by(model, overrides)``."""
    root, name, overrides = tiny_dataset
    rng = np.random.default_rng(2)
    tokens = [f"i{i}" for i in range(6, 40)]
    save_feature(root / name / "features", "txt", rng.normal(size=(len(tokens), 5)), tokens)
    overrides = {**overrides, "item_features": {"emb": None, "txt": None},
                 "content_features": ["emb", "txt"], "embedding_size": 8, "feat_embed_dim": 8,
                 "knn_k": 3, "cl_weight": 0.1}
    return name, overrides


def train_steps(model, train, steps: int, lr: float = 0.01) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    batch = next(iter(train))
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("model_name", MODELS)
def test_full_sort_predict_equals_predict_on_all_pairs(two_features, build_pipeline, model_name):
    name, overrides = two_features
    _, data, train, *_, model = build_pipeline(model_name, name, read_by(model_name, overrides))
    train_steps(model, train, 3)  # away from the initialisation, so the check is not trivial
    model.eval()
    users = torch.arange(1, data.user_num)
    full = model.full_sort_predict(Interaction({"user_id": users}))
    assert full.shape == (len(users) * data.item_num,)
    assert torch.isfinite(full).all()
    pair_users = users.repeat_interleave(data.item_num)
    pair_items = torch.arange(data.item_num).repeat(len(users))
    pairs = model.predict(Interaction({"user_id": pair_users, "item_id": pair_items}))
    torch.testing.assert_close(pairs, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", MODELS)
def test_loss_decreases_and_every_feature_gets_gradients(two_features, build_pipeline, model_name):
    name, overrides = two_features
    # LGMRec's hyperedge dropout off: one batch's loss is then comparable from step to step
    steady = {"keep_rate": 1.0} if model_name == "LGMRec" else {}
    _, _, train, *_, model = build_pipeline(model_name, name,
                                            {**read_by(model_name, overrides), **steady})
    model.train()
    model.calculate_loss(next(iter(train))).backward()
    for template in FEATURE_PARAMETERS[model_name]:
        for index in range(2):
            grad = model.get_parameter(template.format(index)).grad
            assert grad is not None and grad.abs().sum() > 0, template.format(index)
    model.zero_grad()
    losses = train_steps(model, train, 15)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("model_name", MODELS)
def test_deterministic_under_a_seed(two_features, build_pipeline, model_name):
    name, overrides = two_features
    runs = []
    for _ in range(2):
        _, _, train, *_, model = build_pipeline(model_name, name, read_by(model_name, overrides))
        losses = train_steps(model, train, 2)
        model.eval()
        scores = model.full_sort_predict(Interaction({"user_id": torch.arange(1, 5)}))
        runs.append((losses, scores))
    assert runs[0][0] == runs[1][0]
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=0, atol=0)


@pytest.mark.parametrize("model_name", MODELS)
def test_undeclared_feature_is_a_clear_error(two_features, build_pipeline, model_name):
    name, overrides = two_features
    with pytest.raises(MissingFeatureError, match="has no item feature 'visual'"):
        build_pipeline(model_name, name, {**read_by(model_name, overrides),
                                             "content_features": ["emb", "visual"]})


def test_smore_needs_two_modalities(two_features):
    from recbole_vlm4rec.run.accounting import ConfigValueError
    from recbole_vlm4rec.run.protocol import prepare_run

    name, overrides = two_features
    with pytest.raises(ConfigValueError, match=r"names 1 feature\(s\) \(emb\); this model needs "
                       "at least 2"):
        prepare_run("SMORE", name, overrides={**read_by("SMORE", overrides),
                                              "content_features": ["emb"]}, build_features=False)
    with pytest.raises(ConfigValueError, match="'knn_k' .*has 3 values but there are 2 features"):
        prepare_run("SMORE", name, overrides={**read_by("SMORE", overrides), "knn_k": [3, 4, 5]},
                    build_features=False)


def test_lgmrec_one_modality_only_without_the_contrastive_loss(two_features, build_pipeline):
    name, overrides = two_features
    from recbole_vlm4rec.run.accounting import ConfigValueError
    from recbole_vlm4rec.run.protocol import prepare_run

    with pytest.raises(ConfigValueError, match="set --cl_weight=0"):
        prepare_run("LGMRec", name, overrides={**read_by("LGMRec", overrides),
                                               "content_features": ["emb"]}, build_features=False)
    _, _, train, *_, model = build_pipeline("LGMRec", name, {
        **read_by("LGMRec", overrides), "content_features": ["emb"], "cl_weight": 0.0})
    assert np.isfinite(train_steps(model, train, 2)).all()


def test_three_modalities_run(two_features, build_pipeline, tiny_dataset):
    root, _, _ = tiny_dataset
    name, overrides = two_features
    tokens = [f"i{i}" for i in range(40)]
    save_feature(root / name / "features", "third", np.random.default_rng(3).normal(size=(40, 4)),
                 tokens)
    overrides = {**overrides, "item_features": {"emb": None, "txt": None, "third": None},
                 "content_features": ["emb", "txt", "third"]}
    for model_name in MODELS:
        _, _, train, *_, model = build_pipeline(model_name, name, read_by(model_name, overrides))
        assert len(model.projections) == 3
        assert np.isfinite(train_steps(model, train, 2)).all()


@pytest.mark.parametrize("model_name", MODELS)
def test_learns_the_taste_groups_through_the_runner(taste_groups, model_name):
    """Through runner.run, as a user's run: far above a random ranking (~0.34) on data with signal."""
    from recbole_vlm4rec.run.runner import run

    _, name, overrides = taste_groups
    result = run(model_name, name, overrides=read_by(model_name, overrides), write_results=False)
    assert result.test_result["recall@10"] >= LEARNED_RECALL_AT_10, result.test_result


def test_weighted_knn_graph_keeps_cosine_weights_and_skips_items_without_vectors():
    features = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [3, 0]], dtype=np.float32)
    has_vector = np.array([False, True, True, True, True])
    binary = knn_item_graph(features, has_vector, 2).toarray()
    weighted = knn_item_graph(features, has_vector, 2, weighted=True).toarray()
    assert not binary[0].any() and not weighted[0].any() and not weighted[:, 0].any()
    assert (weighted > 0).sum() == (binary > 0).sum() == 8  # 4 items x 2 neighbours
    # Item 1's neighbours: itself (cos 1) and item 4 (cos 1); item 2's: itself and 1 or 3.
    raw = np.zeros((5, 5))
    for row in range(1, 5):
        unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        raw[row, weighted[row] > 0] = unit[weighted[row] > 0] @ unit[row]
    degree = raw.sum(axis=1)
    scale = np.zeros(5)
    scale[degree > 0] = degree[degree > 0] ** -0.5
    np.testing.assert_allclose(weighted, scale[:, None] * raw * scale[None, :], rtol=1e-5)


def test_elementwise_max_union_keeps_edges_of_either_graph():
    a = sp.csr_matrix(np.array([[0.5, 0.0], [-0.2, 0.0]], dtype=np.float32))
    b = sp.csr_matrix(np.array([[0.7, 0.1], [0.0, 0.0]], dtype=np.float32))
    union = elementwise_max_union([a, b])
    # A negative weight present in one graph only is kept (absent is not 0).
    np.testing.assert_allclose(union.toarray(), [[0.7, 0.1], [-0.2, 0.0]])
    assert union.nnz == 3


def test_sparse_matmul_gradient_uses_the_transpose_correctly():
    from recbole_vlm4rec.models._graph import sparse_matmul, to_torch_sparse

    rng = np.random.default_rng(0)
    matrix = sp.random(6, 4, density=0.5, random_state=1, dtype=np.float32)
    dense = torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float32, requires_grad=True)
    weights = torch.tensor(rng.normal(size=(6, 3)), dtype=torch.float32)
    (sparse_matmul(to_torch_sparse(matrix), dense, to_torch_sparse(matrix.T)) * weights).sum() \
        .backward()
    expected = torch.from_numpy(matrix.toarray()).T @ weights
    torch.testing.assert_close(dense.grad, expected)


def test_smore_trains_a_copy_of_the_features_or_keeps_them_fixed(two_features, build_pipeline):
    name, overrides = two_features
    overrides = read_by("SMORE", overrides)
    _, data, train, *_, model = build_pipeline("SMORE", name, overrides)
    loaded = data.item_feature("emb").matrix.copy()
    table = lambda: torch.cat(list(model.feature_tables[0])).detach()  # noqa: E731
    before = table().clone()
    train_steps(model, train, 2)
    assert not torch.equal(table(), before)  # fine-tuned (MMRec)
    np.testing.assert_array_equal(data.item_feature("emb").matrix, loaded)  # dataset untouched
    _, _, _, *_, fixed = build_pipeline("SMORE", name, {**overrides, "train_features": False})
    assert not hasattr(fixed, "feature_tables")
    assert not any(p.shape[0] == data.item_num for n, p in fixed.named_parameters()
                   if not n.startswith("item_embedding"))


def test_smore_feature_table_blocks_compute_what_one_table_computes(two_features, build_pipeline,
                                                                    monkeypatch):
    from recbole_vlm4rec.models import smore

    name, overrides = two_features
    overrides = read_by("SMORE", overrides)
    results = []
    for block_elements in (10**9, 3 * 8):  # one block per feature; 3 rows of the 8-d feature
        monkeypatch.setattr(smore, "_TABLE_BLOCK_ELEMENTS", block_elements)
        _, data, train, *_, model = build_pipeline("SMORE", name, overrides)
        tables = [torch.cat(list(blocks)).detach() for blocks in model.feature_tables]
        np.testing.assert_array_equal(tables[0].numpy(), data.item_feature("emb").matrix)
        model.train()
        torch.manual_seed(0)
        loss = model.calculate_loss(next(iter(train)))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        grads = {**grads, **{f"table_{i}": torch.cat([p.grad for p in blocks])
                             for i, blocks in enumerate(model.feature_tables)}}
        results.append((len(model.feature_tables[0]), loss.detach(), grads))
    (one, loss_one, grads_one), (many, loss_many, grads_many) = results
    assert one == 1 and many == 14  # 40 items in blocks of 3 rows
    torch.testing.assert_close(loss_many, loss_one, rtol=1e-6, atol=1e-7)
    for key, grad in grads_one.items():
        if not key.startswith("feature_tables"):
            torch.testing.assert_close(grads_many[key], grad, rtol=1e-5, atol=1e-7)


def smore_reference(model, batch):
    """SMORE written out from the model's parameters and data alone, as the paper and MMRec
    compute it: every node's side and final embeddings, dense graphs, the in-batch InfoNCE over
    the batch's rows as they come (repeats included). Returns the final (users, items) and the
    loss's terms: BPR, L2, contrast (weighted)."""
    import torch.nn.functional as F

    user, pos, neg = batch["user_id"], batch["item_id"], batch["neg_item_id"]
    n_users, size = model.n_users, model.embedding_size
    tables = ([torch.cat(list(blocks)) for blocks in model.feature_tables] if model.train_features
              else [getattr(model, f"feature_{i}") for i in range(len(model.projections))])
    projected = [F.linear(table, p.weight, p.bias) for table, p in zip(tables, model.projections)]
    spectra = [torch.fft.rfft(x, dim=1, norm="ortho") for x in projected]
    fused = spectra[0]
    for spectrum in spectra[1:]:
        fused = fused * spectrum
    signals = [torch.fft.irfft(spectrum * torch.view_as_complex(kernel), n=size, dim=1,
                               norm="ortho")
               for spectrum, kernel in zip([*spectra, fused], model.spectral_filters)]
    adjacency = model.adjacency.to_dense()
    layers = [torch.cat([model.user_embedding.weight, model.item_embedding.weight])]
    for _ in range(model.n_ui_layers):
        layers.append(adjacency @ layers[-1])
    behaviour = torch.stack(layers).mean(dim=0)
    gate = lambda module, x: torch.sigmoid(F.linear(x, module[0].weight, module[0].bias))  # noqa
    views = []
    for index, signal in enumerate(signals):
        items = model.item_embedding.weight * gate(model.item_gates[index], signal)
        for _ in range(model.n_layers):
            items = getattr(model, f"item_graph_{index}").to_dense() @ items
        views.append(torch.cat([model.user_item.to_dense() @ items, items]))
    fusion, parts = views[-1], []
    for view, query, preference in zip(views, model.queries, model.preference_gates):
        attention = torch.softmax(query[2](torch.tanh(query[0](fusion))), dim=-1)
        parts.append(gate(preference, behaviour) * attention * view)
    parts.append(gate(model.preference_gates[-1], behaviour) * fusion)
    side = sum(parts) / len(parts)
    final = behaviour + side

    def info_nce(view, other):
        logits = F.normalize(view) @ F.normalize(other).T / model.temperature
        return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()

    u, p, n = final[user], final[pos + n_users], final[neg + n_users]
    bpr = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    l2 = model.reg_weight * 0.5 * (u.square().sum() + p.square().sum() + n.square().sum()) / len(u)
    contrast = (info_nce(side[pos + n_users], behaviour[pos + n_users])
                + info_nce(side[user], behaviour[user]))
    users, items = torch.split(final, [n_users, model.n_items])
    return users, items, (bpr, l2, model.cl_weight * contrast)


@pytest.mark.parametrize("train_features", [True, False])
def test_smore_loss_gradients_and_scores_equal_the_reference(two_features, build_pipeline,
                                                             train_features):
    name, overrides = two_features
    overrides = {**read_by("SMORE", overrides), "train_features": train_features,
                 "reg_weight": 0.01, "cl_weight": 0.5, "n_layers": 2}
    _, _, train, *_, model = build_pipeline("SMORE", name, overrides)
    model.double().train()  # float64: the two sides differ by rounding only
    assert model.preference_dropout.p == 0  # the reference has no dropout to draw
    batch = next(iter(train))
    assert len(torch.unique(batch["user_id"])) < len(batch["user_id"])  # repeats are exercised
    parameters = [p for p in model.parameters() if p.requires_grad]
    *_, terms = smore_reference(model, batch)
    reference = sum(terms)
    reference_grads = torch.autograd.grad(reference, parameters)
    loss = model.calculate_loss(batch)
    grads = torch.autograd.grad(loss, parameters)
    assert min(float(term.detach()) for term in terms) > 1e-4  # leaving one out cannot pass
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
    for mine, expected in zip(grads, reference_grads):
        torch.testing.assert_close(mine, expected, rtol=1e-9, atol=1e-12)
    model.eval()
    with torch.no_grad():
        users, items, _ = smore_reference(model, batch)
        mine = model.forward()
    torch.testing.assert_close(mine[0], users, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mine[1], items, rtol=1e-10, atol=1e-12)


def test_models_that_ask_get_a_fused_adam_from_recboles_trainer(two_features, build_pipeline):
    from recbole.utils import get_trainer

    name, overrides = two_features
    for model_name, fused in (("SMORE", True), ("LGMRec", True), ("BPR", False)):
        config, _, train, *_, model = build_pipeline(model_name, name,
                                                     read_by(model_name, overrides))
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        optimizer = trainer.optimizer
        assert bool(optimizer.defaults.get("fused")) is fused, model_name
        assert optimizer.defaults["lr"] == config["learning_rate"]
        assert ({id(p) for g in optimizer.param_groups for p in g["params"]}
                == {id(p) for p in model.parameters()})
