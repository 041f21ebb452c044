"""``vlm4rec prepare <source> ...``: build ``dataset/<name>/`` from user data (see __init__)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

PREPARE_EPILOG = """\
examples:
  vlm4rec prepare mmrec ../shared/data/amazon-baby --name amazon-baby
  vlm4rec prepare amazon --reviews reviews_Baby_5.json.gz --meta meta_Baby.json.gz \\
      --name amazon-baby --split mmrec
  vlm4rec prepare catalogue --interactions ratings.csv --items items.csv --images posters/ \\
      --name my-shop
  vlm4rec prepare ml-100k-posters --posters ../shared/data/movielens-posters

Writes dataset/<name>/ atomically (atomic files, <name>.item with an image column, features/,
card.json + CARD.md) and configs/dataset/<name>.yaml when none exists. Then:
  python run_recbole.py --model=LightGCN --dataset=<name>
"""


def register(subparsers: Any) -> None:
    prepare = subparsers.add_parser(
        "prepare", help="turn user data (MMRec folder, Amazon dumps, catalogue) into a dataset",
        description=__doc__, epilog=PREPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sources = prepare.add_subparsers(dest="source", metavar="SOURCE")

    mmrec = _source_parser(
        sources, "mmrec", "an MMRec data folder: <x>.inter with x_label, optional "
        "image_feat.npy / text_feat.npy / i_id_mapping.csv / *url*.csv",
        "vlm4rec prepare mmrec ../shared/data/amazon-baby --name amazon-baby",
    )
    mmrec.add_argument("folder", help="the MMRec folder (e.g. MMRec's data/baby)")
    mmrec.add_argument("--inter", help="the .inter file, when the folder has several")
    mmrec.add_argument("--ids", choices=("raw", "mmrec"), default="raw",
                       help="tokens: raw Amazon ids from the *_id_mapping.csv files (default; same "
                       "tokens as `prepare amazon`), or MMRec's integers")
    mmrec.set_defaults(func=_run(_prepare_mmrec, positional=("folder",)))


def _source_parser(sources: Any, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
    parser = sources.add_parser(name, help=help_text, description=help_text,
                                epilog=f"example:\n  {example}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="dataset name: writes dataset/<name>/")
    parser.add_argument("--encoding", default="utf-8",
                        help="text encoding of the input files (default utf-8)")
    parser.add_argument("--root", default=None, help="dataset root (default: the project's dataset/)")
    parser.add_argument("--config-dir", default=None,
                        help="where to write <name>.yaml if missing (default: configs/dataset/)")
    return parser


def render_command(args: argparse.Namespace, positional: tuple[str, ...]) -> str:
    """The canonical command that rebuilds this dataset: absolute paths, non-default options."""
    parts = ["vlm4rec", "prepare", args.source]
    for name in positional:
        parts.append(str(Path(getattr(args, name)).resolve()))
    skip = {"func", "source", "command", "root", "config_dir", *positional}
    for key, value in sorted(vars(args).items()):
        if key in skip or value in (None, False) or (key, value) in _DEFAULTS:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
            continue
        if key in _PATH_OPTIONS:
            value = str(Path(value).resolve())
        parts += [flag, str(value)]
    return shlex.join(parts)


_DEFAULTS = {("encoding", "utf-8"), ("ids", "raw")}
_PATH_OPTIONS = {"inter"}


def _run(build: Callable[[argparse.Namespace], Any],
         positional: tuple[str, ...] = ()) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from recbole_vlm4rec import paths
        from recbole_vlm4rec.data.prepare.card import read_card
        from recbole_vlm4rec.data.prepare.config import write_dataset_config
        from recbole_vlm4rec.data.prepare.output import PrepareError, write_dataset

        started = time.perf_counter()
        try:
            prepared = build(args)
        except (PrepareError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        prepared.command = render_command(args, positional)
        root = Path(args.root) if args.root else paths.dataset_root()
        folder = write_dataset(prepared, root)
        config_dir = Path(args.config_dir) if args.config_dir else paths.configs_dir() / "dataset"
        config_path, written = write_dataset_config(prepared, config_dir)
        card = read_card(folder) or {}
        _print_summary(folder, card, time.perf_counter() - started)
        print(f"config: {config_path} ({'written' if written else 'exists, left unchanged'})")
        print(f"next: python run_recbole.py --model=LightGCN --dataset={prepared.name}")
        return 0

    return command


def _print_summary(folder: Path, card: dict[str, Any], seconds: float) -> None:
    counts, split = card.get("counts", {}), card.get("split", {})
    print(f"prepared {folder} in {seconds:.1f} s")
    print(f"  {counts.get('users', 0):,} users, {counts.get('items', 0):,} items, "
          f"{counts.get('interactions', 0):,} interactions "
          f"(sparsity {100 * counts.get('sparsity', 0):.3f}%)")
    if split.get("kind") == "predefined":
        print(f"  split train/valid/test: {split['train']:,} / {split['valid']:,} / "
              f"{split['test']:,}")
    items = card.get("items", {})
    if items.get("rows"):
        print(f"  items with image: {items['with_image']:,}, without: {items['without_image']:,}")
    for name, info in card.get("features", {}).items():
        print(f"  feature {name}: dim {info['dim']}, {info['items_covered']:,} items covered")
    for key, info in card.get("counters", {}).items():
        print(f"  {key}: {info['count']:,} ({info['reason']})")


def _prepare_mmrec(args: argparse.Namespace) -> Any:
    from recbole_vlm4rec.data.prepare.mmrec import prepare_mmrec_folder

    return prepare_mmrec_folder(args.folder, args.name, inter_file=args.inter, ids=args.ids,
                                encoding=args.encoding)
