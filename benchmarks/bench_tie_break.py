"""The cost of tie-safe ranking: the evaluator's per-batch ranking step with and without it.

    python benchmarks/bench_tie_break.py [--repeats 15]

On one Amazon-Baby-sized evaluation batch (595 users x 7,051 items, the batch RecBole makes from
eval_batch_size 4194304; 20 masked history items and 2 positives per user) it times, alternating
the two so both see the same machine load:

  index order   torch.topk + the sparse hit flags (speedups.topk_hits): the step before
                tie-safe ranking, which ordered ties by item index
  tie-safe      formats/ranking.tie_safe_topk + the same hit flags (run/ranking.py's step)

for five score patterns: a trained model (no ties), a content model whose uncovered items score
0 (ties below the top-k only), a user without a profile (every item ties), Pop (integer counts
5000 / rank: ties from rank ~70 down) and a worst case (128 items tie for the top). Prints the median and the best of --repeats per step and their ratio. No
dataset needed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_USERS, N_ITEMS, K = 595, 7_051, 20


def batches() -> dict[str, object]:
    import torch

    rng = np.random.default_rng(0)
    masked_rows = torch.arange(N_USERS).repeat_interleave(20)
    masked_cols = torch.from_numpy(rng.integers(1, N_ITEMS, N_USERS * 20))
    found = {}
    for kind in ("trained model (no ties)", "content model, 16% items at 0",
                 "no profile (all items tie)", "Pop (counts 5000/rank)",
                 "128 items tie for the top"):
        if kind.startswith("trained"):
            scores = torch.randn(N_USERS, N_ITEMS)
        elif kind.startswith("content"):
            scores = torch.rand(N_USERS, N_ITEMS)
            scores[:, torch.from_numpy(rng.random(N_ITEMS) < 0.16)] = 0.0
        elif kind.startswith("no profile"):
            scores = torch.zeros(N_USERS, N_ITEMS)
        else:  # integer counts, the same for every user: ties from rank ~70 down, or at the top
            counts = np.floor(5000 / rng.permutation(np.arange(1, N_ITEMS + 1)))
            if kind.startswith("128"):
                counts = np.minimum(counts, np.sort(counts)[-128])
            scores = torch.from_numpy(counts.astype(np.float32)).expand(N_USERS, N_ITEMS).clone()
        scores[:, 0] = -torch.inf
        scores[masked_rows, masked_cols] = -torch.inf
        found[kind] = scores
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    import torch

    from recbole_vlm4rec.formats.ranking import tie_safe_topk
    from recbole_vlm4rec.speedups import topk_hits

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    users = torch.arange(1, N_USERS + 1)
    positive_u = torch.arange(N_USERS).repeat_interleave(2)
    positive_i = torch.from_numpy(rng.integers(1, N_ITEMS, N_USERS * 2))
    print(f"one batch of {N_USERS} users x {N_ITEMS:,} items, top-{K}, torch threads 1, "
          f"{args.repeats} alternating repeats: median (best) ms")
    print(f"{'scores':<32}{'index order':>18}{'tie-safe':>18}{'ratio':>8}")
    print("-" * 76)
    for kind, scores in batches().items():
        steps = {
            "index": lambda: topk_hits(scores, positive_u, positive_i, K),
            "safe": lambda: topk_hits(scores, positive_u, positive_i, K,
                                      tie_safe_topk(scores, K, users, 2020).indices),
        }
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                started = time.perf_counter()
                step()
                times[name].append((time.perf_counter() - started) * 1000)
        index, safe = (statistics.median(times[n]) for n in ("index", "safe"))
        print(f"{kind:<32}{index:>10.1f} ({min(times['index']):5.1f}){safe:>10.1f} "
              f"({min(times['safe']):5.1f}){safe / index:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
