"""DRAGON's and DualGNN's user-user graph (each user's top co-occurring users) on a synthetic
catalogue: seconds and peak memory of the block-wise build against ranking the whole user x user
co-occurrence matrix at once (the same function with one block), the same lists checked equal.

    python benchmarks/bench_user_graph.py                  # 10k items, 20k users, ~1M draws
    python benchmarks/bench_user_graph.py --items 30000 --k 40

Data: benchmarks/synthetic_dataset.py's draws (seeded) and its 80/10/10 split; the training
pairs are the graph's input, as in a run. Each variant runs in its own subprocess so that its
peak RSS (above the process's RSS once the matrix is loaded) is its own; the one-block variant is
skipped when its pairs would need over half the machine's memory (at 100k items).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))


def training_matrix(n_items: int, seed: int) -> sp.csr_matrix:
    from synthetic_dataset import draw_interactions, split_labels

    rng = np.random.default_rng(seed)
    users, items, _ = draw_interactions(rng, 2 * n_items, n_items, 100 * n_items)
    train = split_labels(rng, users) == 0
    return sp.csr_matrix((np.ones(int(train.sum()), np.float32), (users[train], items[train])),
                         shape=(2 * n_items, n_items))


def run_variant(matrix: Path, k: int, one_block: bool, out: Path) -> dict:
    from recbole_vlm4rec.models._user_graph import (BYTES_PER_PAIR, pair_bounds,
                                                    top_co_occurring_users)

    binary = sp.load_npz(matrix).tocsr()
    pairs = float(pair_bounds(binary).sum())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if one_block and pairs * BYTES_PER_PAIR > memory / 2:
        return {"skipped": f"needs about {pairs * BYTES_PER_PAIR / 2**30:,.0f} GB",
                "interactions": int(binary.nnz), "pair_bound": pairs}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    budget = {"pair_budget": int(pairs) + 1} if one_block else {}
    neighbours, counts, _ = top_co_occurring_users(binary, k, **budget)
    seconds = time.perf_counter() - started
    np.savez(out, neighbours=neighbours, counts=counts)
    return {"seconds": seconds, "peak_growth_gb": (resource.getrusage(resource.RUSAGE_SELF)
                                                   .ru_maxrss - before) / 2**20,
            "interactions": int(binary.nnz), "pair_bound": pairs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--k", type=int, default=40, help="users kept per user (MMRec: 40)")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--variant", choices=["blocks", "one-block"], help=argparse.SUPPRESS)
    parser.add_argument("--matrix", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # the subprocess of one variant
        print(json.dumps(run_variant(args.matrix, args.k, args.variant == "one-block", args.out)))
        return 0
    import tempfile

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # drawn once here: the variants load it (drawing peaks higher than building the graph)
        matrix = Path(tmp) / "train.npz"
        sp.save_npz(matrix, training_matrix(args.items, args.seed))
        for variant in ("blocks", "one-block"):
            out = Path(tmp) / f"{variant}.npz"
            done = subprocess.run([sys.executable, __file__, "--k", str(args.k), "--variant",
                                   variant, "--matrix", str(matrix), "--out", str(out)],
                                  capture_output=True, text=True, check=True)
            results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
            if out.is_file():
                results[variant]["lists"] = np.load(out)
        both = all("lists" in result for result in results.values())
        same = both and all(np.array_equal(results["blocks"]["lists"][name],
                                           results["one-block"]["lists"][name])
                            for name in ("neighbours", "counts"))
    first = results["blocks"]
    print(f"{args.items:,} items, {2 * args.items:,} users, {first['interactions']:,} training "
          f"interactions, {first['pair_bound']:,.0f} co-occurring pairs at most, k = {args.k}")
    for variant, result in results.items():
        if "skipped" in result:
            print(f"{variant:<10} not run: {result['skipped']} (over half this machine's memory)")
        else:
            print(f"{variant:<10} {result['seconds']:8.1f} s   peak "
                  f"+{result['peak_growth_gb']:.2f} GB")
    if both:
        print(f"same lists: {same}")
    return 0 if same or not both else 1


if __name__ == "__main__":
    sys.exit(main())
