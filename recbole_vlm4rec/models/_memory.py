"""Memory estimates of the models (models/contract.py ``memory_estimate``), in bytes.

Each estimate counts what a model holds at once at its peak: its own copies of the features, the
graphs it builds (as scipy, then as torch tensors), its parameters with their gradients and Adam's
two moments, and the activations of one training step. The dataset, its splits and the loaded
features are the run layer's share (run/memory.py), not counted here. Constants are per element:
float32 4 bytes, float64 8, a CSR entry 12 (float32 value + int64 column index).

They are upper estimates checked against measured peaks by benchmarks/bench_scale.py
(docs/performance.md); they need not be exact, only of the right size, so that a run that cannot
fit is refused before anything loads instead of being killed after minutes.
"""

from __future__ import annotations

from typing import Any, Mapping

from recbole_vlm4rec.models._sizes import DataSize, MemoryEstimate
from recbole_vlm4rec.models._user_graph import BYTES_PER_PAIR, PAIR_BUDGET

FLOAT32, FLOAT64, CSR_ENTRY = 4, 8, 12
ADAM = 4  # a trained parameter: its value, its gradient and Adam's two moments
KNN_CHUNK = 2048  # rows of the similarity matrix knn_item_graph computes at once


def feature_dim(size: DataSize) -> int:
    """Summed dimension of the features the model reads."""
    return int(sum(size.feature_dims.values()))


def id_embeddings(size: DataSize, dim: int, users_factor: int = 1) -> float:
    """User and item ID embeddings of ``dim``, trained with Adam."""
    return (users_factor * size.n_users + size.n_items) * dim * FLOAT32 * ADAM


def user_item_graph(size: DataSize, copies: int = 3) -> float:
    """The symmetric (users + items)^2 adjacency: 2 entries per training interaction, held as
    scipy (while building) and torch CSR."""
    return 2 * size.n_interactions * CSR_ENTRY * copies


def knn_graphs(size: DataSize, k: int, n_graphs: int) -> float:
    """kNN item graphs (k entries per item, symmetrised) plus the build's similarity chunk and
    the normalised copy of the largest feature."""
    largest = max(size.feature_dims.values(), default=0)
    build = KNN_CHUNK * size.n_items * FLOAT32 * 3 + size.n_items * largest * FLOAT32
    return n_graphs * 2 * size.n_items * k * CSR_ENTRY * 3 + build


def propagation(size: DataSize, dim: int, tensors: int) -> float:
    """``tensors`` (users + items) x dim activations kept for the backward pass of one step."""
    return (size.n_users + size.n_items) * dim * FLOAT32 * tensors


def graph_model(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    """The generic estimate of an ID model over the user-item graph (RecBole's LightGCN, BPR...):
    ID embeddings, the adjacency, one step's activations."""
    dim = int(settings.get("embedding_size") or 64)
    layers = int(settings.get("n_layers") or 3) if isinstance(settings.get("n_layers"), int) \
        else 3
    return MemoryEstimate({
        "ID embeddings (Adam)": id_embeddings(size, dim),
        # RecBole's graph models build the adjacency through a scipy dok_matrix (a Python dict)
        "user-item graph": user_item_graph(size, copies=3) + 2 * size.n_interactions * 120,
        "activations of one step": propagation(size, dim, 2 * (layers + 1)),
    })


def dense_item_item(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    """RecBole's closed-form item-item models (EASE, SLIM...): dense float64 |I| x |I| matrices."""
    return MemoryEstimate({"dense item x item matrices (float64, 3 held)":
                           3 * float(size.n_items) ** 2 * FLOAT64})


# RecBole's general models whose cost is not the generic graph model's (their module holds no
# contract; models/contract.py attaches these to the derived contract).
RECBOLE_ESTIMATES = {
    "EASE": dense_item_item,
    "ADMMSLIM": dense_item_item,
    "NCEPLRec": dense_item_item,
    "SLIMElastic": dense_item_item,
    "Pop": lambda size, settings: MemoryEstimate({"item counts": size.n_items * 8.0}),
}


def gib(n_bytes: float) -> str:
    """``12.3 GB`` (GiB, one decimal; two below 1 GiB)."""
    value = n_bytes / 2**30
    return f"{value:.1f} GB" if value >= 1 else f"{value:.2f} GB"


# --- this package's models (each contract names its function) ----------------------------------
def _setting(settings: Mapping[str, Any], key: str, default: int) -> int:
    value = settings.get(key)
    if isinstance(value, (list, tuple)):
        return int(max(value)) if value else default
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else default


def mean_history(size: DataSize) -> float:
    return size.n_interactions / max(size.n_users, 1)


def bprmf(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    return MemoryEstimate({"ID embeddings (Adam)":
                           id_embeddings(size, _setting(settings, "embedding_size", 64))})


def vbpr(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    dim = _setting(settings, "embedding_size", 64)
    return MemoryEstimate({
        "concatenated features": size.n_items * feature_dim(size) * FLOAT32,
        "ID embeddings (Adam)": id_embeddings(size, dim, users_factor=2),
        "projected catalogue (evaluation)": size.n_items * (dim + 1) * FLOAT32 * 2,
    })


def mmgcn(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    dim = _setting(settings, "embedding_size", 64)
    latent = _setting(settings, "latent_dim", 256)
    layers = _setting(settings, "n_layers", 2)
    n_features = max(len(size.feature_dims), 1)
    return MemoryEstimate({
        "user-item graph": user_item_graph(size, copies=2),
        "user preferences (Adam)": n_features * size.n_users * latent * FLOAT32 * ADAM,
        "ID embeddings (Adam)": id_embeddings(size, dim),
        "activations of one step": propagation(size, max(latent, dim), n_features * layers * 6),
    })


def freedom(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    dim = _setting(settings, "embedding_size", 64)
    n_ui, n_mm = _setting(settings, "n_ui_layers", 2), _setting(settings, "n_mm_layers", 1)
    return MemoryEstimate({
        "kNN item graphs": knn_graphs(size, _setting(settings, "knn_k", 10),
                                      len(size.feature_dims)),
        "user-item graph (full + pruned)": user_item_graph(size, copies=4),
        "ID embeddings (Adam)": id_embeddings(size, dim),
        "activations of one step": propagation(size, dim, 2 * (n_ui + n_mm + 2)),
    }, per_scored_cell=8.0)


def lgmrec(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    dim = _setting(settings, "embedding_size", 64)
    hyper = _setting(settings, "hyper_num", 4)
    n_ui, n_mm = _setting(settings, "n_ui_layers", 2), _setting(settings, "n_mm_layers", 2)
    n_features = len(size.feature_dims)
    pairs = n_features * (n_features - 1) // 2
    batch = _setting(settings, "train_batch_size", 2048)
    return MemoryEstimate({
        # the adjacency, the user-item matrix and its mean, each with its transpose
        "user-item graphs": user_item_graph(size, copies=2) + 4 * size.n_interactions
        * CSR_ENTRY * 2,
        "ID embeddings (Adam)": id_embeddings(size, dim),
        "activations of one step": propagation(
            size, dim, 2 * (n_ui + 2) + n_features * (2 * n_mm + 6))
        + n_features * (size.n_users + size.n_items) * hyper * FLOAT32 * 8,
        # the hypergraph contrast: a batch x all users (and x all items) cosine matrix, its
        # exponentials and their gradients
        "contrastive loss": 3 * pairs * batch * (size.n_users + size.n_items) * FLOAT32,
    }, per_scored_cell=8.0)


def smore(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    dim = _setting(settings, "embedding_size", 64)
    n_ui, n_layers = _setting(settings, "n_ui_layers", 2), _setting(settings, "n_layers", 1)
    views = len(size.feature_dims) + 1
    return with_trainable_tables({
        "kNN item graphs and their transposes": 2 * knn_graphs(
            size, _setting(settings, "knn_k", 10), views),
        "user-item graphs": user_item_graph(size, copies=2) + 2 * size.n_interactions
        * CSR_ENTRY * 2,
        "ID embeddings (Adam)": id_embeddings(size, dim),
        "activations of one step": propagation(size, dim, 2 * (n_ui + 2) + views * (n_layers + 8)),
    }, size, settings, "SMORE")


def with_trainable_tables(parts: dict[str, float], size: DataSize, settings: Mapping[str, Any],
                          model: str) -> MemoryEstimate:
    """``parts`` plus, when ``train_features`` is on (MMRec's default), the fine-tuned copy of the
    features with its gradient and Adam's moments; the fix names the setting that drops them."""
    if settings.get("train_features", True) is False:
        return MemoryEstimate(parts, per_scored_cell=8.0)
    lighter = sum(parts.values())
    tables = {"trainable feature tables (Adam)": size.n_items * feature_dim(size) * FLOAT32 * ADAM}
    return MemoryEstimate({**parts, **tables}, per_scored_cell=8.0,
                          fix=f"--train_features=False (about {gib(lighter)} for {model})")


def user_graph(size: DataSize, k: int) -> float:
    """Top-k co-occurring users (models/_user_graph.py): one block of user pairs while building,
    then the n_users x k lists (ids, counts, an epoch's sample and its sparse graph)."""
    return PAIR_BUDGET * BYTES_PER_PAIR + size.n_users * k * (8 + 4 + 8 + 4 + CSR_ENTRY)


def _n_features(size: DataSize) -> int:
    return max(len(size.feature_dims), 1)


def bm3(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    dim, layers = _setting(settings, "embedding_size", 64), _setting(settings, "n_layers", 1)
    return with_trainable_tables({
        "user-item graph": user_item_graph(size, copies=2),
        "ID embeddings (Adam)": id_embeddings(size, dim),
        # the online and target views, the predictor's outputs, the batch rows' projections
        "activations of one step": propagation(size, dim, 2 * (layers + 1) + 16),
    }, size, settings, "BM3")


def lattice(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    dim, n_features = _setting(settings, "embedding_size", 64), _n_features(size)
    n_ui, n_mm = _setting(settings, "n_ui_layers", 2), _setting(settings, "n_mm_layers", 1)
    return with_trainable_tables({
        # each feature's graph from the raw features, and the one learnt from the projected ones
        "kNN item graphs": knn_graphs(size, _setting(settings, "knn_k", 10), n_features + 1),
        "user-item graph and its transpose": user_item_graph(size, copies=3),
        "ID embeddings (Adam)": id_embeddings(size, dim),
        "activations of one step": propagation(size, dim, 2 * (n_ui + n_mm + 2) + 2 * n_features),
    }, size, settings, "LATTICE")


def mgcn(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    dim, n_features = _setting(settings, "embedding_size", 64), _n_features(size)
    n_ui, n_layers = _setting(settings, "n_ui_layers", 2), _setting(settings, "n_layers", 1)
    return with_trainable_tables({
        "kNN item graphs and their transposes": 2 * knn_graphs(
            size, _setting(settings, "knn_k", 10), n_features),
        "user-item graphs": user_item_graph(size, copies=3) + size.n_interactions * CSR_ENTRY * 2,
        "ID embeddings (Adam)": id_embeddings(size, dim),
        # each view over all nodes, its gates and the InfoNCE's side embeddings
        "activations of one step": propagation(size, dim, 2 * (n_ui + 1) + n_features
                                               * (2 * n_layers + 10)),
    }, size, settings, "MGCN")


def pgl(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    dim, n_features = _setting(settings, "embedding_size", 64), _n_features(size)
    n_ui, n_mm = _setting(settings, "n_ui_layers", 2), _setting(settings, "n_mm_layers", 1)
    return with_trainable_tables({
        "kNN item graph and its transpose": 2 * knn_graphs(
            size, _setting(settings, "knn_k", 10), n_features),
        "user-item graphs (full and the epoch's principal one)": user_item_graph(size, copies=4),
        "user embeddings per modality (Adam)": n_features * id_embeddings(size, dim),
        "activations of one step": propagation(size, dim, n_features * 2 * (n_ui + n_mm + 4)),
    }, size, settings, "PGL")


def _user_preference_model(size: DataSize, settings: Mapping[str, Any],
                           graph_parts: dict[str, float], layers: int) -> MemoryEstimate:
    """DRAGON / DualGNN: per feature a trained user preference table and an item encoder
    (feature -> 4 x dim -> dim over the catalogue), propagated over the user-item graph, and
    the top co-occurring users' graph."""
    dim, n_features = _setting(settings, "embedding_size", 64), _n_features(size)
    return MemoryEstimate({
        **graph_parts,
        "user-item graph and its transpose": user_item_graph(size, copies=3),
        "user-user graph": user_graph(size, _setting(settings, "user_knn_k", 40)),
        "user preferences and weights (Adam)": n_features * size.n_users * (dim + 1) * FLOAT32
        * ADAM,
        "item encoders' activations": n_features * size.n_items * 5 * dim * FLOAT32 * 3,
        "activations of one step": propagation(size, dim, n_features * 2 * (layers + 3)),
    }, per_scored_cell=8.0)


def dragon(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    knn = {"kNN item graph and its transpose": 2 * knn_graphs(
        size, _setting(settings, "knn_k", 10), _n_features(size))}
    layers = _setting(settings, "n_layers", 2) + _setting(settings, "n_mm_layers", 1)
    return _user_preference_model(size, settings, knn, layers)


def dualgnn(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    return _user_preference_model(size, settings, {}, _setting(settings, "n_layers", 2))


def grcn(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    dim, n_features = _setting(settings, "embedding_size", 64), _n_features(size)
    latent, routing = _setting(settings, "latent_dim", 64), _setting(settings, "n_routing", 3)
    nodes = size.n_users + size.n_items
    return MemoryEstimate({
        "user-item edge lists": size.n_interactions * 4 * 8,
        "ID embeddings, preferences and confidences (Adam)": (nodes * (dim + n_features)
                                                              + n_features * size.n_users
                                                              * latent) * FLOAT32 * ADAM,
        # per modality: its node representations and every edge's attention, per routing round
        "activations of one step": propagation(size, latent, n_features * (2 * routing + 6))
        + propagation(size, dim + n_features * latent, 4)
        + size.n_interactions * n_features * (2 * routing + 8) * FLOAT32,
    }, per_scored_cell=8.0)


def slmrec(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    dim, n_features = _setting(settings, "embedding_size", 64), _n_features(size)
    layers = _setting(settings, "n_layers", 3)
    return MemoryEstimate({
        "unit-norm copies of the features": size.n_items * feature_dim(size) * FLOAT32,
        "user-item graph": user_item_graph(size, copies=2),
        "ID embeddings (Adam)": id_embeddings(size, dim),
        # the ID view and one per feature, each propagated, then fused (concatenated)
        "activations of one step": propagation(size, dim, (n_features + 1) * (2 * layers + 4) + 8),
    }, per_scored_cell=8.0)


def layergcn(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    dim, layers = _setting(settings, "embedding_size", 64), _setting(settings, "n_layers", 4)
    return MemoryEstimate({
        "user-item graphs (full and the epoch's pruned one)": user_item_graph(size, copies=4),
        "ID embeddings (Adam)": id_embeddings(size, dim),
        "activations of one step": propagation(size, dim, 4 * (layers + 1)),
    }, per_scored_cell=8.0)


def selfcf(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    dim, layers = _setting(settings, "embedding_size", 64), _setting(settings, "n_layers", 1)
    return MemoryEstimate({
        # the adjacency, its edge list and the step's edge-dropped copy
        "user-item graphs": user_item_graph(size, copies=4) + 2 * size.n_interactions * 2 * 8,
        "ID embeddings (Adam)": id_embeddings(size, dim),
        "activations of one step": propagation(size, dim, 4 * (layers + 1) + 6),
    }, per_scored_cell=8.0)


def attribute_knn(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    # co-occurrence, its normaliser (float64), the two top-k graphs densified: |I| x |I| each
    return MemoryEstimate({"dense item x item matrices": 6 * float(size.n_items) ** 2 * FLOAT32})


# VLM4Rec's `profile_scoring: auto` takes the item x item path only while that matrix stays this
# small (at 100k items it would be 37 GiB; the profile path is linear in the catalogue).
ITEM_SIMILARITY_MAX_BYTES = 2 * 2**30


def uses_item_similarity(aggregation: str, scoring: str, n_items: int, n_users: int) -> bool:
    """Whether VLM4Rec scores through an items x items similarity matrix (same scores)."""
    if aggregation != "mean":
        return False
    if scoring == "item_similarity":
        return True
    return (scoring == "auto" and n_items < n_users
            and float(n_items) ** 2 * FLOAT32 <= ITEM_SIMILARITY_MAX_BYTES)


def vlm4rec(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    dim = feature_dim(size)
    aggregation = settings.get("profile_aggregation", "mean")
    parts = {"item embeddings": 2 * size.n_items * dim * FLOAT32}
    if aggregation != "mean":  # the max over history items: one similarity row per history item
        return MemoryEstimate(parts, per_scored_cell=FLOAT32 * (2 * mean_history(size) + 2))
    parts["user profiles"] = 3 * size.n_users * dim * FLOAT32
    fix = ""
    if uses_item_similarity(aggregation, str(settings.get("profile_scoring", "auto")),
                            size.n_items + 1, size.n_users + 1):
        lighter = sum(parts.values())
        parts["item x item similarity"] = 2 * float(size.n_items) ** 2 * FLOAT32
        fix = f"--profile_scoring=profiles (same scores; about {gib(lighter)} for the model)"
    return MemoryEstimate(parts, fix=fix)


def vlm4rec_hybrid(size: DataSize, settings: Mapping[str, Any]) -> MemoryEstimate:
    n, dim = float(size.n_items), feature_dim(size)
    k = min(_setting(settings, "ease_neighbours", 100), max(size.n_items - 1, 1))
    # float64 content, centred and normalised per feature (three copies at the peak), its d x d
    # Gram, eigenvectors and the adapter's fit
    common = {"content (float64) and the adapter": 3 * n * dim * FLOAT64 + 4 * dim * dim * FLOAT64
              + min(n, 4096) * dim * FLOAT64}
    topk = {"top-k EASE (Gram columns, neighbours, systems)":
            n * GRAM_BLOCK_BYTES + n * k * (2 * 16 + 3 * 8) + 3 * 2**26,
            **common}
    per_cell = 4.0 * 6 + (8.0 * dim / max(n, 1))
    if settings.get("ease_backbone", "dense") == "topk":
        return MemoryEstimate(topk, per_scored_cell=per_cell)
    dense = {"dense EASE (|I| x |I| float64: Gram, inverse, weights)": 3 * n * n * FLOAT64
             + n * n * FLOAT32, **common}
    return MemoryEstimate(dense, per_scored_cell=per_cell, fix="--ease_backbone=topk (about "
                          f"{gib(sum(topk.values()))} for VLM4RecHybrid)")


GRAM_BLOCK_BYTES = 512 * 8 * 2  # models/_ease.py: one block of Gram columns (and its argpartition)
