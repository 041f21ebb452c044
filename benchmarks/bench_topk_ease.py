"""VLM4RecHybrid's top-k EASE backbone against dense EASE: test metrics and fit time side by side.

    python benchmarks/bench_topk_ease.py --data-path DATASETS --dataset synth-10k
    python benchmarks/bench_topk_ease.py --data-path DATASETS --dataset synth-10k --neighbours 50 100 200

The dataset: any prepared one with the features named by ``--features`` (default: the synthetic
10k catalogue of bench_scale.py, ``content_features: [visual, text]``). Each variant is one full
``vlm4rec run`` (same split, same seed): ``ease_backbone: dense``, then ``topk`` for each k.
Prints Recall@20 / NDCG@20 on test and the fit seconds of each run (memory: bench_scale.py, one
process per cell).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", required=True, help="folder holding the dataset folder")
    parser.add_argument("--dataset", default="synth-10k")
    parser.add_argument("--features", nargs="+", default=["visual", "text"])
    parser.add_argument("--neighbours", nargs="+", type=int, default=[50, 100, 200])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(1)
    from recbole_vlm4rec.run.runner import run

    base = {"data_path": args.data_path, "content_features": args.features,
            "show_progress": False, "state": "WARNING", "gpu_id": "",
            "results_dir": "results", "checkpoint_dir": "saved"}
    variants = [("dense", {"ease_backbone": "dense"})] + [
        (f"topk k={k}", {"ease_backbone": "topk", "ease_neighbours": k}) for k in args.neighbours]
    print(f"VLM4RecHybrid on {args.dataset}, features {args.features}, torch threads 1")
    print(f"{'backbone':<14}{'recall@20':>11}{'ndcg@20':>10}{'fit s':>9}")
    for label, overrides in variants:
        result = run("VLM4RecHybrid", args.dataset, overrides={**base, **overrides},
                     write_results=False)
        print(f"{label:<14}{result.test_result['recall@20']:>11.4f}"
              f"{result.test_result['ndcg@20']:>10.4f}{result.seconds['fit']:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
