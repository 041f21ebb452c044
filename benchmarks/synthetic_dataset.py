"""A seeded synthetic catalogue at any scale, written as an MMRec data folder for `vlm4rec prepare`.

    python benchmarks/synthetic_dataset.py OUT_FOLDER --items 10000            # 20k users, ~1M interactions
    python benchmarks/synthetic_dataset.py OUT_FOLDER --items 100000 --seed 7
    vlm4rec prepare mmrec OUT_FOLDER --name synth-10k --ids mmrec              # -> dataset/synth-10k/

What it draws (all from one numpy Generator seeded by ``--seed``; same arguments, same bytes):

* ``--users`` (default 2 x items) users whose activity follows a power law: Pareto with shape
  1.7 from a minimum of ``min_activity`` interactions, capped at 5% of the catalogue, then scaled
  so the total is about ``--interactions`` (default 100 x items: 1M at 10k items, 10M at 100k);
* item popularity: Zipf-like, p_i proportional to (rank + 10)^-0.9, ranks shuffled over item ids;
* taste: ``TOPICS`` topics; each item belongs to one, each user likes two; 70% of a user's items
  come from their topics (by popularity inside the topic), 30% from the whole catalogue, so
  co-occurrence carries signal a collaborative model can learn;
* features of MMRec's sizes, informative about the topic: ``image_feat.npy`` 4096-d non-negative
  (like CNN activations) and ``text_feat.npy`` 384-d, each a topic centroid plus item noise;
* a per-user random 8:1:1 split in ``x_label`` (0 train, 1 valid, 2 test), as MMRec's folders have.

Repeated (user, item) draws are dropped, so the interaction count is a little under the target;
the real counts are printed and land on the prepared dataset's card.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

TOPICS = 64
FEATURE_DIMS = {"image_feat.npy": 4096, "text_feat.npy": 384}


def activity(rng: np.random.Generator, n_users: int, n_items: int, target: int) -> np.ndarray:
    """Interactions per user: power law (Pareto shape 1.7), at least 5, at most 5% of items."""
    cap = max(int(0.05 * n_items), 10)
    raw = (rng.pareto(1.7, n_users) + 1.0)
    counts = np.clip(raw * target / raw.sum(), 5, cap)
    counts *= target / counts.sum()  # the clip moved the total: one more proportional pass
    return np.clip(np.round(counts), 5, cap).astype(np.int64)


def draw_interactions(rng: np.random.Generator, n_users: int, n_items: int,
                      target: int) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) of distinct pairs, sorted by user then draw order."""
    popularity = (np.arange(n_items) + 10.0) ** -0.9
    popularity = popularity[rng.permutation(n_items)]  # popularity not aligned with item ids
    item_topic = rng.integers(0, TOPICS, n_items)
    # per topic: its items, and the cumulative popularity inside it
    order = np.argsort(item_topic, kind="stable")
    starts = np.searchsorted(item_topic[order], np.arange(TOPICS + 1))
    cumulative = np.cumsum(popularity[order])
    user_topics = rng.integers(0, TOPICS, (n_users, 2))

    counts = activity(rng, n_users, n_items, target)
    # draw 30% extra, drop repeats, keep each user's first `count` distinct items
    draws = (counts * 1.3).astype(np.int64) + 2
    users = np.repeat(np.arange(n_users), draws)
    from_topic = rng.random(len(users)) < 0.7
    topic = user_topics[users, rng.integers(0, 2, len(users))]
    low = np.where(from_topic, starts[topic], 0)
    high = np.where(from_topic, starts[topic + 1], n_items)
    base = np.where(low > 0, cumulative[np.maximum(low - 1, 0)], 0.0)
    u = base + rng.random(len(users)) * (cumulative[high - 1] - base)
    global_pick = rng.choice(n_items, size=len(users), p=popularity / popularity.sum())
    items = np.where(from_topic, order[np.minimum(np.searchsorted(cumulative, u), high - 1)],
                     global_pick)
    keys = users * n_items + items
    _, first = np.unique(keys, return_index=True)
    first.sort()
    users, items = users[first], items[first]
    rank = np.arange(len(users)) - np.searchsorted(users, users)  # position inside the user
    keep = rank < counts[users]
    return users[keep], items[keep], item_topic


def split_labels(rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
    """Per user, a random 80/10/10 split (at least one training item), as x_label 0/1/2."""
    shuffled = rng.random(len(users))
    order = np.lexsort((shuffled, users))
    starts = np.searchsorted(users[order], users[order])
    rank = np.arange(len(users)) - starts
    sizes = np.bincount(users)[users[order]]
    n_train = np.maximum(np.floor(sizes * 0.8), 1)
    n_valid = np.floor(sizes * 0.1)
    labels = np.where(rank < n_train, 0, np.where(rank < n_train + n_valid, 1, 2))
    out = np.empty(len(users), dtype=np.int64)
    out[order] = labels
    return out


def write_features(rng: np.random.Generator, folder: Path, item_topic: np.ndarray) -> None:
    """Topic centroid + item noise, float32, written in row blocks (4096-d at 100k is 1.6 GB)."""
    for name, dim in FEATURE_DIMS.items():
        centroids = rng.normal(size=(TOPICS, dim)).astype(np.float32)
        out = np.lib.format.open_memmap(folder / name, mode="w+", dtype=np.float32,
                                        shape=(len(item_topic), dim))
        for start in range(0, len(item_topic), 8192):
            block = item_topic[start:start + 8192]
            rows = centroids[block] + 1.5 * rng.normal(size=(len(block), dim)).astype(np.float32)
            out[start:start + len(block)] = np.abs(rows) if dim == 4096 else rows
        out.flush()
        del out


def write_mmrec_folder(folder: Path, n_items: int, n_users: int | None = None,
                       n_interactions: int | None = None, seed: int = 2024) -> dict[str, int]:
    """Write ``synthetic.inter`` + ``image_feat.npy`` + ``text_feat.npy`` into ``folder``."""
    n_users = n_users or 2 * n_items
    target = n_interactions or 100 * n_items
    rng = np.random.default_rng(seed)
    users, items, item_topic = draw_interactions(rng, n_users, n_items, target)
    labels = split_labels(rng, users)
    folder.mkdir(parents=True, exist_ok=True)
    table = np.column_stack([users, items, labels])
    with open(folder / "synthetic.inter", "w") as handle:
        handle.write("userID\titemID\tx_label\n")
        np.savetxt(handle, table, fmt="%d", delimiter="\t")
    write_features(rng, folder, item_topic)
    return {"users": int(len(np.unique(users))), "items": int(len(np.unique(items))),
            "interactions": int(len(users))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="output MMRec folder (created)")
    parser.add_argument("--items", type=int, required=True, help="catalogue size")
    parser.add_argument("--users", type=int, help="users (default 2 x items)")
    parser.add_argument("--interactions", type=int, help="target interactions (100 x items)")
    parser.add_argument("--seed", type=int, default=2024, help="seed (default 2024)")
    args = parser.parse_args(argv)
    if args.items < 100:
        parser.error("--items must be at least 100")
    started = time.perf_counter()
    counts = write_mmrec_folder(args.folder, args.items, args.users, args.interactions, args.seed)
    print(f"{args.folder}: {counts['users']:,} users, {counts['items']:,} items, "
          f"{counts['interactions']:,} interactions ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
