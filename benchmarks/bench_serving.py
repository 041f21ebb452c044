"""Online recommendation latency for one user on a 100k-item catalogue, next to a numpy scan.

    python benchmarks/bench_serving.py [--items 100000] [--dim 384] [--queries 300] [--threads 1]

Builds a random catalogue of L2-normalised float32 vectors (MiniLM's 384 dims), writes real
bundles (flat and HNSW FAISS indexes) with ``serving.bundle.write_profile_arrays`` and loads them back,
then times, in one process, per query (a new user with a 10-50 item history, top-10):

  numpy      brute force: mean profile, catalogue @ profile, mask history, argpartition + sort
  flat       Recommender.for_items on the exact FAISS index (the whole online path: token lookup,
             profile, search, seen-item filter, 2 explanations per item)
  hnsw       the same on the approximate HNSW index; its recall@10 against the exact answer

and prints p50 / p99 latency in milliseconds and each ratio to numpy's p50. The exact answer of
`flat` is checked equal to numpy's on every query.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package


def percentile_ms(times: list[float], q: float) -> float:
    return 1000.0 * float(np.percentile(times, q))


def numpy_top_k(embeddings: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    profile = embeddings[rows].mean(axis=0)
    profile /= np.linalg.norm(profile)
    scores = embeddings @ profile
    scores[rows] = -np.inf
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import faiss

    from recbole_vlm4rec.serving.bundle import load_bundle, write_profile_arrays
    from recbole_vlm4rec.serving.recommend import Recommender

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    # Clustered vectors (like real embeddings), not uniform noise: ANN recall is meaningful.
    centres = rng.normal(size=(256, args.dim)).astype(np.float32)
    embeddings = centres[rng.integers(0, 256, args.items)] + rng.normal(
        scale=0.6, size=(args.items, args.dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    tokens = [f"item{i}" for i in range(args.items)]
    histories = [rng.choice(args.items, size=rng.integers(10, 51), replace=False)
                 for _ in range(args.queries)]
    meta = {"model": "VLM4Rec", "item_feature": "synthetic", "features": ["synthetic"],
            "profile_aggregation": "mean"}
    print(f"catalogue: {args.items} items x {args.dim} float32, {args.queries} queries, "
          f"top-{args.k}, {args.threads} thread(s)")

    recommenders = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("flat", "hnsw"):
            started = time.perf_counter()
            write_profile_arrays(Path(tmp) / kind, tokens, embeddings,
                                 np.ones(len(tokens), bool), ["u0"], [histories[0]],
                                 [histories[0]], meta, index_kind=kind)
            built = time.perf_counter() - started
            started = time.perf_counter()
            recommenders[kind] = Recommender(load_bundle(Path(tmp) / kind))
            print(f"  {kind:<5} bundle: written in {built:.1f} s, loaded in "
                  f"{time.perf_counter() - started:.2f} s")
    catalogue = recommenders["flat"].bundle.embeddings

    timings: dict[str, list[float]] = {"numpy": [], "flat": [], "hnsw": []}
    exact_answers, hnsw_overlap = [], []
    for rows in histories:
        history = [tokens[r] for r in rows]
        started = time.perf_counter()
        exact = numpy_top_k(catalogue, rows, args.k)
        timings["numpy"].append(time.perf_counter() - started)
        exact_answers.append([tokens[i] for i in exact])
        for kind in ("flat", "hnsw"):
            started = time.perf_counter()
            found = recommenders[kind].for_items(history, k=args.k, explain=2)
            timings[kind].append(time.perf_counter() - started)
            items = [r.item for r in found]
            if kind == "flat" and items != exact_answers[-1]:
                raise SystemExit(f"flat index disagrees with the numpy scan: {items} vs "
                                 f"{exact_answers[-1]}")
            if kind == "hnsw":
                hnsw_overlap.append(len(set(items) & set(exact_answers[-1])) / args.k)

    base = percentile_ms(timings["numpy"], 50)
    print(f"{'path':<8} {'p50 ms':>8} {'p99 ms':>8} {'p50 / numpy p50':>16}")
    for kind, times in timings.items():
        p50, p99 = percentile_ms(times, 50), percentile_ms(times, 99)
        print(f"{kind:<8} {p50:>8.2f} {p99:>8.2f} {p50 / base:>16.2f}")
    print(f"flat == numpy top-{args.k} on all {args.queries} queries; "
          f"hnsw recall@{args.k} vs exact: {np.mean(hnsw_overlap):.3f}")


if __name__ == "__main__":
    main()
