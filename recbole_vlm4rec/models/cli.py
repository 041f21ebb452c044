"""``vlm4rec models``: which model names run_recbole.py accepts."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("models", help="list this project's models and RecBole's")
    parser.set_defaults(func=_models)


def _models(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.models import project_models, recbole_models

    print("this project (configs/model/<Name>.yaml):")
    for name, cls in sorted(project_models().items()):
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"  {name:<12} {summary}")
    print("RecBole:")
    print("  " + ", ".join(sorted(recbole_models())))
    return 0
