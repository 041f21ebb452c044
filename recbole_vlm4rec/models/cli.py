"""``vlm4rec models``: which model names run_recbole.py accepts."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "models", help="list the models that run here: this project's and RecBole's general ones")
    parser.set_defaults(func=_models)


def _models(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.models import project_models, recbole_models

    print("this project (configs/model/<Name>.yaml):")
    for name, cls in sorted(project_models().items()):
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"  {name:<12} {summary}")
    print("RecBole's general recommenders (each runs through the same trainer and evaluator):")
    print("  " + ", ".join(sorted(recbole_models())))
    print("  on small datasets: NCL needs --num_clusters below the number of users (default "
          "1000); DGCF fails when the training interactions fit in one batch "
          "(lower --train_batch_size)")
    print("RecBole's sequential, context-aware and knowledge-aware models need other data and "
          "evaluation: not offered here.")
    return 0
