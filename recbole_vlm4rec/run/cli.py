"""``vlm4rec run`` (and ``python run_recbole.py``): one model on one dataset; ``vlm4rec features``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from recbole_vlm4rec.compat_distributed import DEFAULT_TIMEOUT_S
from recbole_vlm4rec.models import DEFAULT_MODEL

DESCRIPTION = """\
Train and evaluate one model on one dataset through RecBole's trainer and full-ranking evaluator,
under the protocol shipped with the package (configs/overall.yaml + the model's and the dataset's
yaml). Works from any folder."""

EPILOG = """\
examples:
  vlm4rec run --model=VLM4Rec                       # offline default: ml-100k
  vlm4rec run --model=LightGCN --dataset=ml-100k --epochs=50
  vlm4rec run --model=VLM4Rec --item_feature=text --profile_aggregation=max
  vlm4rec run --model=BPR --config_files="my.yaml other.yaml" --learning_rate=0.01
  python run_recbole.py --model=VLM4Rec             # the same, RecBole-style entry
  vlm4rec run --model=LightGCN --nproc 2            # 2 processes (gloo on CPU, nccl on GPUs)

Any other --key=value is a RecBole/model config override (highest priority). Config layers, later
wins: RecBole defaults < configs/overall.yaml < configs/model/<Model>.yaml <
configs/dataset/<dataset>.yaml < dataset/<dataset>/<dataset>.yaml < --config_files < --key=value.
The results JSON records each layer's path and sha256. Every key must be read by RecBole, the
dataset or this model: an unknown key (a typo) fails with a did-you-mean, another model's key
(--reg_weight for BPR) fails, a wrong value (--epochs=abc, --profile_aggregation=maxx) fails
naming what the key takes; all before anything loads (docs/configuration.md).

Prints a metrics table (best-valid and test) and writes the run as JSON to
results/<dataset>/<Model>-<time>.json (set --results_dir=... to change). RecBole's own logs go to
./log/ and checkpoints to ./saved/.

Processes (RecBole's distributed data-parallel training; docs/performance.md): --nproc N runs N
processes on this machine, each holding the whole dataset and model (graphs included) and taking
1/N of every training batch: train_batch_size stays the batch of one optimiser step over all
processes, and an epoch is still one pass over the training interactions. Evaluation is not
split: every process ranks every user, so metrics equal a one-process evaluation of the same
weights. One-pass models (VLM4Rec, Pop, EASE, ItemKNN...) are refused with --nproc > 1. Several
machines: the same --world_size, --ip (rank 0's machine) and --port everywhere, and each
machine's --nproc and --group_offset (the rank of its first process).
"""


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", default=DEFAULT_MODEL,
                        help="model class name: ours or any RecBole general model; `vlm4rec "
                        "models` lists them and what each needs. Default: %(default)s")
    parser.add_argument("--dataset", "-d", default=None,
                        help="dataset name (default: ml-100k, embedded, runs offline); "
                        "`vlm4rec datasets` lists them")
    parser.add_argument("--config_files", default="",
                        help="extra yaml files, space separated, applied after the built-in layers")
    group = parser.add_argument_group(
        "processes", "distributed data-parallel training (RecBole's torch.distributed path)")
    group.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="processes on this machine (default 1: no torch.distributed). On a "
                       "GPU machine one GPU per process: also pass --gpu_id=0,1,...")
    group.add_argument("--world_size", type=int, default=-1, metavar="N",
                       help="processes over all machines (default: --nproc, one machine)")
    group.add_argument("--ip", default="localhost", metavar="ADDRESS",
                       help="address of the machine holding rank 0 (default: %(default)s)")
    group.add_argument("--port", type=int, default=None, metavar="PORT",
                       help="port rank 0 listens on (default: a free port; several machines "
                       "must name one)")
    group.add_argument("--group_offset", type=int, default=0, metavar="RANK",
                       help="global rank of this machine's first process (default 0)")
    group.add_argument("--dist_timeout", type=int, default=DEFAULT_TIMEOUT_S,
                       metavar="SECONDS",
                       help="seconds a process waits on the others (a crashed or stuck peer) "
                       "before failing (default: %(default)s)")


def split_overrides(parser: argparse.ArgumentParser, rest: list[str]) -> dict[str, str]:
    """``--key=value`` arguments argparse did not know, as a dict."""
    overrides: dict[str, str] = {}
    for item in rest:
        if not item.startswith("--") or "=" not in item:
            parser.error(f"unrecognised argument {item!r}: overrides are written --key=value")
        key, value = item[2:].split("=", 1)
        overrides[key] = value
    return overrides


def run_command(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """Run, print the metrics table; user mistakes are one line on stderr and exit 2."""
    from recbole_vlm4rec.data.dataset import MissingFeatureError
    from recbole_vlm4rec.data.registry import DEFAULT_DATASET, UnknownDatasetError
    from recbole_vlm4rec.formats.features import FeatureFileError
    from recbole_vlm4rec.models import UnknownModelError
    from recbole_vlm4rec.run.accounting import ConfigError
    from recbole_vlm4rec.run.cold_start import ColdStartConfigError
    from recbole_vlm4rec.compat_distributed import DistributedError
    from recbole_vlm4rec.run.distributed import Processes, ProcessFailed, run_processes
    from recbole_vlm4rec.run.runner import TopKError, format_metrics_table

    processes = Processes(nproc=args.nproc, world_size=args.world_size, ip=args.ip,
                          port=args.port, group_offset=args.group_offset,
                          timeout_s=args.dist_timeout)
    try:
        result = run_processes(args.model, args.dataset or DEFAULT_DATASET,
                               args.config_files.split(), overrides, processes)
    except (UnknownModelError, UnknownDatasetError, FeatureFileError, MissingFeatureError,
            FileNotFoundError, ColdStartConfigError, TopKError, ConfigError,
            DistributedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ProcessFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if result is None:
        print(f"ranks {args.group_offset}..{args.group_offset + args.nproc - 1} finished; the "
              "results are written on the machine of rank 0")
        return 0
    print()
    for key, where in result.config_accounting.get("not_read", {}).items():
        print(f"note: config key '{key}' ({where} layer) is not read by {result.model}")
    print(format_metrics_table(result))
    print(f"\nseconds: {result.seconds}")
    print(f"results written to {result.result_file}")
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``run_recbole.py``'s entry: the same flags as ``vlm4rec run``."""
    from recbole_vlm4rec import compat

    parser = build_parser(prog)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    overrides = split_overrides(parser, rest)
    compat.install()  # where a run starts (vlm4rec's own main does it for `vlm4rec run`)
    return run_command(args, overrides)


def register(subparsers: Any) -> None:
    run = subparsers.add_parser(
        "run", help="train and evaluate one model on one dataset (as run_recbole.py)",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(run)
    run.set_defaults(func=_run, accepts_overrides=True, patches_recbole=True)

    features = subparsers.add_parser(
        "features",
        help="list a dataset's item features: present (with coverage) or missing (with the "
        "command that makes it)",
        description="Lists every item feature of a dataset: the ones declared under "
        "`item_features` in its yaml and every feature file in its features folder. Declared "
        "features with a build recipe (e.g. ml-100k's `text`) are built first. A present "
        "feature is loaded, aligned to RecBole's item ids and reported with its coverage; a "
        "missing or unreadable one is reported with the command that makes it. Exit code 0 "
        "when every feature is present, 1 when one is missing or unreadable, 2 for an unknown "
        "dataset. Example: vlm4rec features ml-100k-posters",
    )
    features.add_argument("dataset", help="dataset name, e.g. ml-100k")
    features.add_argument("--data-path", help="folder holding dataset folders (default: the "
                          "project's dataset/)")
    features.set_defaults(func=_features, patches_recbole=True)


def _run(args: argparse.Namespace) -> int:
    parser = argparse.ArgumentParser(prog="vlm4rec run")
    return run_command(args, split_overrides(parser, getattr(args, "overrides", [])))


def _features(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.data.dataset import (dataset_folder, declared_item_features,
                                              feature_file, features_dir, item_file)
    from recbole_vlm4rec.data.feature_status import how_to_make
    from recbole_vlm4rec.data.registry import UnknownDatasetError
    from recbole_vlm4rec.formats.features import FeatureFileError, feature_paths
    from recbole_vlm4rec.run.protocol import build_config, build_declared_features
    from recbole_vlm4rec.run.runner import create_dataset

    try:
        overrides: dict[str, Any] = {"state": "WARNING"}
        if args.data_path:
            overrides["data_path"] = args.data_path
        config = build_config(DEFAULT_MODEL, args.dataset, overrides=overrides)
        declared = declared_item_features(config)
    except (UnknownDatasetError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not declared:
        print(f"dataset '{args.dataset}' has no item features: none declared under "
              f"`item_features` and no feature files in {features_dir(config)}")
        hint = how_to_make(args.dataset, "text", {}, item_file(config), dataset_folder(config))
        print(f"  e.g. text: {hint}")
        return 1
    print(f"dataset '{args.dataset}': {len(declared)} item features "
          f"(folder {features_dir(config)})")
    problems: dict[str, str] = {}
    for name, spec in declared.items():
        if spec.get("build"):
            try:
                for note in build_declared_features(config, [name]):
                    print(f"  {note}")
            except Exception as error:  # noqa: BLE001  (reported per feature; the rest listed)
                problems[name] = f"could not be built: {type(error).__name__}: {error}"
    dataset = create_dataset(config) if len(problems) < len(declared) else None
    width = max(len(name) for name in declared)
    for name, spec in declared.items():
        origin = ("built from a declaration" if spec.get("build")
                  else "found in the features folder" if spec.get("discovered") else "declared")
        if name in problems:
            print(f"  {name:<{width}}  FAILED   {problems[name]}")
            continue
        directory, stem = feature_file(config, spec)
        if not feature_paths(directory, stem)[0].is_file():
            problems[name] = "missing"
            hint = how_to_make(args.dataset, name, spec, item_file(config), dataset_folder(config))
            print(f"  {name:<{width}}  missing  ({origin}) make it: {hint}")
            continue
        try:
            aligned = dataset.item_feature(name)
        except FeatureFileError as error:
            problems[name] = str(error)
            print(f"  {name:<{width}}  UNREADABLE  {error}")
            continue
        print(f"  {name:<{width}}  present  ({origin}) {aligned.n_covered}/{aligned.n_items} "
              f"items, {aligned.dim}-d [{aligned.path}]")
    return 1 if problems else 0
