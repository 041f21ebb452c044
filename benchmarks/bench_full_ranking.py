"""VLM4Rec full-ranking evaluation at Amazon-Baby scale, next to one dense matmul of the same shape.

    python benchmarks/bench_full_ranking.py [--repeats 3] [--threads 1]

Builds a dataset with Amazon-Baby's shape (19,445 users, 7,050 items, 160,792 interactions; the
real pairs from ../shared/data/amazon-baby/baby.inter when present, random ones otherwise) and a
random 384-d item feature, then times, in one process:

  matmul    one dense float32 (n_test_users x 384) @ (384 x 7050) product: the floor for scoring
  scoring   VLM4Rec.full_sort_predict over every test user, in RecBole's evaluation batches
  evaluate  RecBole's whole full-ranking test evaluation (scoring + history masking + top-k +
            metrics), i.e. trainer.evaluate(test_data)

and prints each time, its ratio to the matmul (target: evaluate / matmul <= 1.5), and peak RSS
(target <= 1.5 GB). Best of --repeats runs per figure; the machine is noisy.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BABY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-baby" / "baby.inter"
N_USERS, N_ITEMS, N_INTER, DIM = 19_445, 7_050, 160_792, 384


def write_dataset(root: Path, name: str) -> str:
    folder = root / name
    folder.mkdir(parents=True)
    if BABY.is_file():
        import pandas as pd

        frame = pd.read_csv(BABY, sep="\t")
        pairs = frame[["userID", "itemID"]].to_numpy()
        source = f"real pairs from {BABY}"
    else:
        rng = np.random.default_rng(0)
        users = np.repeat(np.arange(N_USERS), N_INTER // N_USERS + 1)[:N_INTER]
        pairs = np.stack([users, rng.integers(0, N_ITEMS, N_INTER)], axis=1)
        pairs = np.unique(pairs, axis=0)
        source = "random pairs (../shared/data/amazon-baby not found)"
    lines = ["user_id:token\titem_id:token"] + [f"u{u}\ti{i}" for u, i in pairs]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    items = sorted({int(i) for i in pairs[:, 1]})
    from recbole_vlm4rec.formats.features import save_feature

    vectors = np.random.default_rng(1).normal(size=(len(items), DIM)).astype(np.float32)
    save_feature(folder / "features", "vlm", vectors, [f"i{i}" for i in items])
    return f"{len(pairs):,} interactions, {source}"


def best_of(repeats: int, func) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stabler)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from recbole.data import data_preparation
    from recbole.utils import get_trainer, init_seed

    from recbole_vlm4rec import compat
    from recbole_vlm4rec.models import get_model_class
    from recbole_vlm4rec.run.protocol import build_config
    from recbole_vlm4rec.run.runner import create_dataset

    compat.install()  # the speed-ups and the tie-safe collector, as in a run
    with tempfile.TemporaryDirectory() as tmp:
        described = write_dataset(Path(tmp), "babyscale")
        config = build_config("VLM4Rec", "babyscale", overrides={
            "data_path": tmp, "item_features": {"vlm": None}, "item_feature": "vlm",
            "load_col": {"inter": ["user_id", "item_id"]}, "show_progress": False,
            "state": "WARNING", "gpu_id": "", "checkpoint_dir": f"{tmp}/saved",
        })
        init_seed(config["seed"], config["reproducibility"])
        data = create_dataset(config)
        train, _, test = data_preparation(config, data)
        model = get_model_class("VLM4Rec")(config, train._dataset)
        trainer = get_trainer(config["MODEL_TYPE"], "VLM4Rec")(config, model)
        n_test_users = len(test.uid_list)

        profiles = torch.randn(n_test_users, DIM)
        items = torch.randn(DIM, data.item_num)
        t_matmul = best_of(args.repeats, lambda: profiles @ items)

        def score_all() -> None:
            with torch.no_grad():
                for batch in test:
                    model.full_sort_predict(batch[0])

        t_scoring = best_of(args.repeats, score_all)
        t_evaluate = best_of(
            args.repeats, lambda: trainer.evaluate(test, load_best_model=False)
        )
        result = trainer.evaluate(test, load_best_model=False)

    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"dataset: {data.user_num - 1:,} users, {data.item_num - 1:,} items, {described}")
    print(f"test users scored: {n_test_users:,} x {data.item_num:,} items, dim {DIM}, "
          f"{len(test)} eval batches, torch threads {args.threads}, best of {args.repeats}")
    print(f"{'step':<10}{'seconds':>10}{'x matmul':>10}")
    for name, seconds in [("matmul", t_matmul), ("scoring", t_scoring), ("evaluate", t_evaluate)]:
        print(f"{name:<10}{seconds:>10.3f}{seconds / t_matmul:>10.2f}")
    print(f"target evaluate/matmul <= 1.5: {'met' if t_evaluate / t_matmul <= 1.5 else 'NOT met'}")
    print(f"peak RSS: {peak_gb:.2f} GB (target <= 1.5 GB: {'met' if peak_gb <= 1.5 else 'NOT met'})")
    print(f"sanity: recall@20 with random features = {result['recall@20']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
