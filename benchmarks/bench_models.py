"""Per-epoch training time, full-ranking evaluation time and peak memory of every baseline at
Amazon-Baby scale, with each model's evaluation time as a ratio to LightGCN's.

    python benchmarks/bench_models.py                       # all models
    python benchmarks/bench_models.py --models BPR LightGCN VBPR --threads 1
    python benchmarks/bench_models.py --inter /path/to/baby.inter   # data elsewhere (a worktree)
    python benchmarks/bench_models.py --models BM3 MGCN --epochs 0  # evaluation cost only

Data: the real interactions and split of ../shared/data/amazon-baby/baby.inter (19,445 users,
7,050 items; x_label 0/1/2 = train/valid/test) and random item features of the real shapes:
``visual`` 4096-d (MMRec's CNN features) and ``text`` 384-d (MiniLM), both covering every item.
Multimodal models use ``content_features: [visual, text]``; VLM4Rec matches on ``text``.

Each model runs in its own subprocess (so peak RSS is its own): build, one training epoch
(RecBole's ``_train_epoch``; for non-trained models the single fitting pass), then RecBole's
full-ranking test evaluation (``trainer.evaluate``: scoring + masking + top-k + metrics; the
fastest of ``--repeats``), in wall seconds and in the process's CPU seconds (on a machine shared
with other jobs the CPU seconds move far less with the load); the training epoch too, with its
ratio to LightGCN's. Target: no model's evaluation
slower than 2x LightGCN's. Timings on a shared CPU are noisy; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BABY = REPO.parent / "shared" / "data" / "amazon-baby" / "baby.inter"
MODELS = ["Pop", "ItemKNN", "BPR", "LightGCN", "VBPR", "MMGCN", "FREEDOM", "LGMRec", "SMORE",
          "BM3", "LATTICE", "MGCN", "DRAGON", "GRCN", "DualGNN", "SLMRec", "PGL", "LayerGCN",
          "SelfCF", "VLM4Rec", "VLM4RecFusion"]
FEATURE_DIMS = {"visual": 4096, "text": 384}


def write_dataset(root: Path, name: str, inter_path: Path = BABY) -> None:
    import pandas as pd

    from recbole_vlm4rec.formats.features import save_feature

    frame = pd.read_csv(inter_path, sep="\t")
    folder = root / name
    folder.mkdir(parents=True)
    for label, part in enumerate(["train", "valid", "test"]):
        rows = frame[frame["x_label"] == label]
        lines = ["user_id:token\titem_id:token"] + [
            f"u{u}\ti{i}" for u, i in zip(rows["userID"], rows["itemID"])]
        (folder / f"{name}.{part}.inter").write_text("\n".join(lines) + "\n")
    items = [f"i{i}" for i in sorted(frame["itemID"].unique())]
    rng = np.random.default_rng(0)
    for feature, dim in FEATURE_DIMS.items():
        # non-negative like CNN activations, so the visual kNN graph is not degenerate
        vectors = np.abs(rng.normal(size=(len(items), dim))).astype(np.float32)
        save_feature(folder / "features", feature, vectors, items)


def babyscale_data(model_name: str, data_root: str):
    """The config and the train / test loaders of ``model_name`` on the dataset ``write_dataset``
    made under ``data_root``, with the settings every model is timed at (bench_train_step.py too).
    """
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_vlm4rec import compat
    from recbole_vlm4rec.run.protocol import build_config
    from recbole_vlm4rec.run.runner import create_dataset

    compat.install()  # the speed-ups and the tie-safe collector, as in a run
    config = build_config(model_name, "babyscale", overrides={
        "data_path": data_root, "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id"]},
        "item_features": {"visual": None, "text": None}, "default_item_feature": "text",
        "content_features": ["visual", "text"], "item_graph_weights": [0.1, 0.9],
        "show_progress": False, "state": "WARNING", "gpu_id": "",
        "checkpoint_dir": f"{data_root}/saved", "embedding_size": 64, "train_batch_size": 2048,
    })
    init_seed(config["seed"], config["reproducibility"])
    train, _, test = data_preparation(config, create_dataset(config))
    return config, train, test


def run_one(model_name: str, data_root: str, threads: int, repeats: int = 3,
            epochs: int = 1) -> dict:
    """Build, train ``epochs`` epochs (0: none), evaluate; returns seconds and peak RSS (runs in
    a subprocess)."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(REPO))
    from recbole.utils import get_trainer

    from recbole_vlm4rec.models import get_model_class

    config, train, test = babyscale_data(model_name, data_root)
    start = time.perf_counter()
    model = get_model_class(model_name)(config, train._dataset)
    built = time.perf_counter()
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    built_cpu = time.process_time()
    for epoch in range(epochs):
        trainer._train_epoch(train, epoch)
    trained, trained_cpu = time.perf_counter(), time.process_time()
    eval_times, eval_cpu = [], []
    for _ in range(repeats):  # best of: one evaluation on a shared CPU is noisy
        started, started_cpu = time.perf_counter(), time.process_time()
        result = trainer.evaluate(test, load_best_model=False)
        eval_times.append(time.perf_counter() - started)
        eval_cpu.append(time.process_time() - started_cpu)
    return {
        "model": model_name, "build_s": built - start,
        "epoch_s": (trained - built) / epochs if epochs else None,
        "epoch_cpu_s": (trained_cpu - built_cpu) / epochs if epochs else None,
        "eval_s": min(eval_times), "eval_cpu_s": min(eval_cpu), "recall@20": float(result["recall@20"]),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "n_test_users": len(test.uid_list),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model")
    parser.add_argument("--inter", type=Path, default=BABY,
                        help="MMRec's baby.inter (default: ../shared/data/amazon-baby/baby.inter "
                             "beside the checkout)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="evaluations per model; the fastest is reported (default 3)")
    parser.add_argument("--epochs", type=int, default=1, choices=[0, 1, 2, 3],
                        help="training epochs before evaluating (default 1; the epoch column is "
                             "their mean). 0 measures the evaluation cost alone: an untrained "
                             "model ranks as fast as a trained one, so the eval columns hold")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.data_root, args.threads, args.repeats,
                                 args.epochs)))
        return 0
    if not args.inter.is_file():
        parser.error(f"needs the Amazon-Baby interactions at {args.inter} (--inter)")
    models = args.models if "LightGCN" in args.models else ["LightGCN", *args.models]
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(REPO))
        write_dataset(Path(tmp), "babyscale", args.inter)
        for name in models:
            done = subprocess.run(
                [sys.executable, __file__, "--one", name, "--data-root", tmp,
                 "--threads", str(args.threads), "--repeats", str(args.repeats),
                 "--epochs", str(args.epochs)],
                capture_output=True, text=True, cwd=tmp, env=env)
            if done.returncode != 0:
                print(f"{name}: FAILED\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  {name}: done", file=sys.stderr, flush=True)
    base = next((r["eval_s"] for r in rows if r["model"] == "LightGCN"), None)
    base_cpu = next((r["eval_cpu_s"] for r in rows if r["model"] == "LightGCN"), None)
    print(f"Amazon-Baby scale ({rows[0]['n_test_users']:,} test users x 7,051 items), "
          f"random features visual 4096-d + text 384-d, torch threads {args.threads}")
    print(f"{'model':<14}{'build s':>9}{'epoch s':>9}{'eval s':>8}{'eval/LightGCN':>15}"
          f"{'eval CPU s':>12}{'CPU/LightGCN':>14}{'peak RSS GB':>13}")
    for r in rows:
        ratio = f"{r['eval_s'] / base:.2f}" if base else "-"
        cpu_ratio = f"{r['eval_cpu_s'] / base_cpu:.2f}" if base_cpu else "-"
        epoch = f"{r['epoch_s']:.2f}" if r["epoch_s"] is not None else "-"
        print(f"{r['model']:<14}{r['build_s']:>9.2f}{epoch:>9}{r['eval_s']:>8.2f}"
              f"{ratio:>15}{r['eval_cpu_s']:>12.2f}{cpu_ratio:>14}{r['peak_rss_gb']:>13.2f}")
    epoch_base = next((r for r in rows if r["model"] == "LightGCN"), None)
    if args.epochs:  # --epochs 0 trains nothing: no training table
        print(f"training: {'model':<14}{'epoch s':>9}{'/LightGCN':>11}{'epoch CPU s':>13}"
              f"{'CPU/LightGCN':>14}")
        for r in rows:
            wall = f"{r['epoch_s'] / epoch_base['epoch_s']:.2f}" if epoch_base else "-"
            cpu = f"{r['epoch_cpu_s'] / epoch_base['epoch_cpu_s']:.2f}" if epoch_base else "-"
            print(f"          {r['model']:<14}{r['epoch_s']:>9.2f}{wall:>11}"
                  f"{r['epoch_cpu_s']:>13.2f}{cpu:>14}")
    if base:
        slow = [r["model"] for r in rows if r["eval_s"] > 2 * base]
        verdict = "met" if not slow else "NOT met by " + ", ".join(slow)
        print(f"target eval <= 2x LightGCN: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
