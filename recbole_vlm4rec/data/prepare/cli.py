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
card.json + CARD.md) and, for a dataset with no shipped yaml, dataset/<name>/<name>.yaml, then
prints "next:" lines: commands that run now (vlm4rec run --model=LightGCN --dataset=<name>, and
VLM4Rec / VBPR when their features exist) and what makes each declared feature still missing.
"""


def register(subparsers: Any) -> None:
    prepare = subparsers.add_parser(
        "prepare", help="turn user data (MMRec folder, Amazon dumps, catalogue) into a dataset",
        description="Turn user data into dataset/<name>/: RecBole atomic files, item metadata "
        "with image references, imported features and a dataset card. One SOURCE per data "
        "shape; `vlm4rec prepare SOURCE --help` shows its options.", epilog=PREPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.set_defaults(func=lambda args: prepare.print_help() or 2)
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
    mmrec.add_argument("--meta", help="optional Amazon 2014 meta_<Cat>.json.gz: item text "
                       "(title, brand, categories, description, price) joined by asin")
    _add_download_options(mmrec)
    mmrec.set_defaults(func=_run(_prepare_mmrec, positional=("folder",)))

    catalogue = _source_parser(
        sources, "catalogue", "any catalogue: an interactions table (csv/tsv, RecBole atomic "
        "headers too) + an items table (text columns, image path or URL) + an images folder",
        "vlm4rec prepare catalogue --interactions ratings.csv --items movies.csv "
        "--images posters/ --name my-movies",
    )
    catalogue.add_argument("--interactions", required=True, help="interactions table")
    catalogue.add_argument("--items", help="items table: item column, text columns, image column")
    catalogue.add_argument("--images", help="images folder: base of relative image paths, or "
                           "<item>.<jpg|png|webp> when the items table has no image column")
    for column in ("user", "item", "rating", "time", "image"):
        catalogue.add_argument(f"--{column}-col", help=f"name of the {column} column "
                               "(default: guessed from common names)")
    catalogue.add_argument("--text-cols", help="comma-separated text columns of the items table "
                           "(default: every column but item and image)")
    _add_split_options(catalogue)
    _add_download_options(catalogue)
    catalogue.set_defaults(func=_run(_prepare_catalogue))

    amazon = _source_parser(
        sources, "amazon", "Amazon 2014 review dumps: reviews_<Cat>_5.json.gz (JSON lines) + "
        "meta_<Cat>.json.gz (Python-literal dicts)",
        "vlm4rec prepare amazon --reviews reviews_Baby_5.json.gz --meta meta_Baby.json.gz "
        "--name amazon-baby --split mmrec --download-images",
    )
    amazon.add_argument("--reviews", required=True, help="reviews_<Cat>_5.json.gz (or plain)")
    amazon.add_argument("--meta", help="meta_<Cat>.json.gz: item text and image URLs")
    _add_split_options(amazon, default_split="mmrec")
    _add_download_options(amazon)
    amazon.set_defaults(func=_run(_prepare_amazon))

    posters = _source_parser(
        sources, "ml-100k-posters", "RecBole's bundled ml-100k with movie posters referenced "
        "in place", "vlm4rec prepare ml-100k-posters --posters ../shared/data/movielens-posters",
        default_name="ml-100k-posters",
    )
    posters.add_argument("--posters", required=True,
                         help="folder with ml100k_items_with_posters.tsv and images/")
    _add_split_options(posters, k_core=False)
    posters.set_defaults(func=_run(_prepare_ml100k_posters))


def _add_download_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--download-images", action="store_true",
                        help="fetch image URLs into dataset/<name>/images/ (resumable: files "
                        "already there are kept); the .item then names the local files")
    parser.add_argument("--concurrency", type=int, default=8, help="parallel downloads (8)")
    parser.add_argument("--retries", type=int, default=3, help="retries per image (3)")
    parser.add_argument("--max-image-bytes", type=int, default=10_000_000,
                        help="reject larger images (10 MB)")


def _add_split_options(parser: argparse.ArgumentParser, k_core: bool = True,
                       default_split: str = "recbole") -> None:
    if k_core:
        parser.add_argument("--k-core", type=int, default=0,
                            help="drop users and items with fewer than K interactions, "
                            "iteratively (default 0: no filtering)")
    parser.add_argument("--split", choices=("recbole", "mmrec"), default=default_split,
                        help=f"recbole: one <name>.inter split by RecBole at load time; mmrec: "
                        "predefined per-user shuffled 8:1:1 train/valid/test files (default "
                        f"{default_split})")
    parser.add_argument("--seed", type=int, default=2024, help="seed of --split mmrec (default 2024)")


def _source_parser(sources: Any, name: str, help_text: str, example: str,
                   default_name: str | None = None) -> argparse.ArgumentParser:
    parser = sources.add_parser(name, help=help_text, description=help_text,
                                epilog=f"example:\n  {example}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=default_name is None, default=default_name,
                        help="dataset name: writes dataset/<name>/"
                        + (f" (default {default_name})" if default_name else ""))
    parser.add_argument("--encoding", default="utf-8",
                        help="text encoding of the input files (default utf-8)")
    parser.add_argument("--root", default=None, help="dataset root (default: the project's dataset/)")
    parser.add_argument("--config-dir", default=None,
                        help="where to write <name>.yaml if missing (default: the dataset folder, "
                        "dataset/<name>/, which the run layer reads after the shipped "
                        "configs/dataset/<name>.yaml; named datasets use the shipped one)")
    return parser


def render_command(args: argparse.Namespace, positional: tuple[str, ...]) -> str:
    """The canonical command that rebuilds this dataset: absolute paths, non-default options."""
    parts = ["vlm4rec", "prepare", args.source]
    for name in positional:
        parts.append(str(Path(getattr(args, name)).resolve()))
    parts += ["--name", args.name]
    skip = {"func", "source", "command", "root", "config_dir", "name", *positional}
    for key, value in sorted(vars(args).items()):
        if key in skip or value in (None, False) or (key, value) in _DEFAULTS:
            continue
        if key == "seed" and getattr(args, "split", None) != "mmrec":
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
            continue
        if key in _PATH_OPTIONS:
            value = str(Path(value).resolve())
        parts += [flag, str(value)]
    return shlex.join(parts)


_DEFAULTS = {("encoding", "utf-8"), ("ids", "raw"), ("k_core", 0), ("concurrency", 8),
             ("retries", 3), ("max_image_bytes", 10_000_000)}
_PATH_OPTIONS = {"inter", "interactions", "items", "images", "posters", "reviews", "meta"}


def _run(build: Callable[[argparse.Namespace], Any],
         positional: tuple[str, ...] = ()) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from recbole_vlm4rec.formats import paths
        from recbole_vlm4rec.data.prepare.card import read_card
        from recbole_vlm4rec.data.prepare.config import next_steps, write_dataset_config
        from recbole_vlm4rec.data.prepare.output import write_dataset
        from recbole_vlm4rec.data.prepare.prepared import PrepareError

        started = time.perf_counter()
        try:
            prepared = build(args)
        except (PrepareError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        prepared.command = render_command(args, positional)
        root = Path(args.root) if args.root else paths.dataset_root()
        if getattr(args, "download_images", False):
            from recbole_vlm4rec.data.prepare.images import localise_images

            report = localise_images(prepared, root / prepared.name,
                                     concurrency=args.concurrency, retries=args.retries,
                                     max_bytes=args.max_image_bytes)
            print(f"images: {len(report.saved):,} local ({report.reused:,} from an earlier run), "
                  f"{len(report.failures):,} failed")
        folder = write_dataset(prepared, root)
        shipped = paths.configs_dir() / "dataset" / f"{prepared.name}.yaml"
        if args.config_dir is None and shipped.is_file():
            config_path, written = shipped, False  # a named dataset: the shipped protocol layer
        else:
            config_path, written = write_dataset_config(
                prepared, Path(args.config_dir) if args.config_dir else folder)
        card = read_card(folder) or {}
        _print_summary(folder, card, time.perf_counter() - started)
        _compare_with_published(prepared.name, card)
        print(f"config: {config_path} ({'written' if written else 'exists, left unchanged'})")
        for line in next_steps(folder, config_path, custom_root=args.root is not None):
            print(f"next: {line}")
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


def _compare_with_published(name: str, card: dict[str, Any]) -> None:
    from recbole_vlm4rec.data.registry import NAMED_DATASETS

    info = NAMED_DATASETS.get(name)
    if info is None or info.expected_counts is None:
        return
    counts = card.get("counts", {})
    got = (counts.get("users"), counts.get("items"), counts.get("interactions"))
    if got == info.expected_counts:
        print(f"  matches the published counts of '{name}'")
    else:
        print(f"warning: '{name}' is published with users/items/interactions "
              f"{info.expected_counts}, this preparation has {got}: results will not be "
              "comparable with the literature", file=sys.stderr)


def _prepare_mmrec(args: argparse.Namespace) -> Any:
    from recbole_vlm4rec.data.prepare.mmrec import prepare_mmrec_folder

    return prepare_mmrec_folder(args.folder, args.name, inter_file=args.inter, ids=args.ids,
                                encoding=args.encoding, meta=args.meta)


def _prepare_catalogue(args: argparse.Namespace) -> Any:
    from recbole_vlm4rec.data.prepare.catalogue import prepare_catalogue

    return prepare_catalogue(
        args.interactions, args.name, items=args.items, images=args.images,
        user_col=args.user_col, item_col=args.item_col, rating_col=args.rating_col,
        time_col=args.time_col, image_col=args.image_col,
        text_cols=args.text_cols.split(",") if args.text_cols else None,
        k=args.k_core, split=args.split, seed=args.seed, encoding=args.encoding,
    )


def _prepare_ml100k_posters(args: argparse.Namespace) -> Any:
    from recbole_vlm4rec.data.prepare.catalogue import prepare_ml100k_posters

    return prepare_ml100k_posters(args.posters, args.name, split=args.split, seed=args.seed)


def _prepare_amazon(args: argparse.Namespace) -> Any:
    from recbole_vlm4rec.data.prepare.amazon import prepare_amazon

    return prepare_amazon(args.reviews, args.meta, args.name, k=args.k_core, split=args.split,
                          seed=args.seed, encoding=args.encoding)
