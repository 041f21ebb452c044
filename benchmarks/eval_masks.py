#!/usr/bin/env python
"""Evaluate saved RecBole checkpoints on the test split under both history-masking rules.

    python benchmarks/eval_masks.py saved/BPR-*.pth saved/LightGCN-*.pth

For each checkpoint (written by run_recbole.py) prints test Recall/NDCG@20 with
``eval_history_mask=train_valid`` (RecBole: training + validation items masked) and ``train``
(MMRec: training items only), so numbers can be set beside MMRec's published tables.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recbole_vlm4rec import compat  # noqa: E402

compat.install()

import torch  # noqa: E402
from recbole.data import data_preparation  # noqa: E402
from recbole.utils import get_trainer, init_seed  # noqa: E402

from recbole_vlm4rec.run.masking import MASKS, apply_eval_history_mask  # noqa: E402
from recbole_vlm4rec.models import get_model_class  # noqa: E402
from recbole_vlm4rec.run.runner import create_dataset  # noqa: E402


def evaluate_both(checkpoint_path: Path) -> dict[str, dict[str, float]]:
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    config = checkpoint["config"]
    if isinstance(config, dict):  # pickled as the dict of its values (compat.config_class)
        config = compat.config_from_dict(config)
    config["show_progress"] = False
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, test_data = data_preparation(config, create_dataset(config))
    model = get_model_class(config["model"])(config, train_data._dataset)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    results = {}
    for mask in MASKS:  # train_valid first: the loader's own rule, before it is changed
        config["eval_history_mask"] = mask
        apply_eval_history_mask(config, train_data, test_data)
        results[mask] = dict(trainer.evaluate(test_data, load_best_model=False))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    args = parser.parse_args()
    print(f"{'checkpoint':<45} {'mask':<12} {'recall@20':>9} {'ndcg@20':>8}")
    for path in args.checkpoints:
        for mask, metrics in evaluate_both(path).items():
            print(f"{path.name:<45} {mask:<12} {metrics['recall@20']:>9.4f} "
                  f"{metrics['ndcg@20']:>8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
