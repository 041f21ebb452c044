#!/usr/bin/env python
"""Train and evaluate one model on one dataset through RecBole's trainer and full-ranking evaluator."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  python run_recbole.py --model=VLM4Rec                       # offline default: ml-100k
  python run_recbole.py --model=LightGCN --dataset=ml-100k --epochs=50
  python run_recbole.py --model=VLM4Rec --item_feature=text --profile_aggregation=max
  python run_recbole.py --model=BPR --config_files="my.yaml other.yaml" --learning_rate=0.01

Any other --key=value is a RecBole/model config override (highest priority). Config layers, later
wins: RecBole defaults < configs/overall.yaml < configs/model/<Model>.yaml <
configs/dataset/<dataset>.yaml < --config_files < --key=value.

Prints a metrics table (best-valid and test) and writes the run as JSON to
results/<dataset>/<Model>-<time>.json (set --results_dir=... to change). RecBole's own logs go to
./log/ and checkpoints to ./saved/.
"""


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", "-m", default="VLM4Rec",
                        help="model class name: ours (VLM4Rec, ...) or any RecBole model "
                        "(BPR, LightGCN, ItemKNN, Pop, ...). Default: VLM4Rec")
    parser.add_argument("--dataset", "-d", default=None,
                        help="dataset name (default: ml-100k, embedded, runs offline)")
    parser.add_argument("--config_files", default="",
                        help="extra yaml files, space separated, applied after the built-in layers")
    args, rest = parser.parse_known_args(argv)
    overrides: dict[str, str] = {}
    for item in rest:
        if not item.startswith("--") or "=" not in item:
            parser.error(f"unrecognised argument {item!r}: overrides are written --key=value")
        key, value = item[2:].split("=", 1)
        overrides[key] = value
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    from recbole_vlm4rec.data.cold_start import ColdStartConfigError
    from recbole_vlm4rec.data.dataset import MissingFeatureError
    from recbole_vlm4rec.data.features import FeatureFileError
    from recbole_vlm4rec.data.registry import DEFAULT_DATASET, UnknownDatasetError
    from recbole_vlm4rec.models import UnknownModelError
    from recbole_vlm4rec.runner import format_metrics_table, run

    try:
        result = run(
            model=args.model,
            dataset=args.dataset or DEFAULT_DATASET,
            config_files=args.config_files.split(),
            overrides=overrides,
        )
    except (UnknownModelError, UnknownDatasetError, FeatureFileError, MissingFeatureError,
            FileNotFoundError, ColdStartConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print()
    print(format_metrics_table(result))
    print(f"\nseconds: {result.seconds}")
    print(f"results written to {result.result_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
