"""``vlm4rec encode``: descriptions, item text or item images -> a feature file the dataset loads."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from recbole_vlm4rec.encoding.lvlm_cli import EPILOG as LVLM_EPILOG
from recbole_vlm4rec.encoding.lvlm_cli import add_lvlm_arguments

EPILOG = """\
sources (pick one for text; images come from an item-table column):
  --descriptions TAG      dataset/<name>/descriptions/<TAG>.jsonl from `vlm4rec ground`
                          (or a path to a .jsonl); default feature: vlm
  --template TEXT         render each row of <name>.item (or --items FILE.csv/.tsv/.item)
                          with {column} placeholders; default feature: text
  --modality image        the --image-column of <name>.item (or --items); default feature: visual
  --modality lvlm         image + a grounding --prompt through a vision-language model, pooled
                          hidden states (options below); default feature: lvlm
  --modality slots        with --descriptions TAG of a structured prompt: the `fields` slots as
                          multi-hot attribute tokens (<slot>=<phrase>); default feature: slots

output: dataset/<name>/features/<feature>.npy + .tokens + .json (what the dataset loads), and a
per-input cache features/encode_cache.sqlite: a rerun encodes only new or changed texts/images.

examples:
  vlm4rec encode ml-100k-posters --descriptions tagger-preference   # after `vlm4rec ground ml-100k-posters`
  vlm4rec encode ml-100k --template "{movie_title} ({release_year}). Genres: {class}." --feature text
  vlm4rec encode amazon-baby --descriptions openai-preference --encoder all-mpnet-base-v2 --feature vlm_mpnet
  vlm4rec encode amazon-baby --descriptions openai-preference --processes 4   # 4 CPU processes, or 1 per GPU
  vlm4rec encode amazon-baby --modality image                 # EfficientNet-Lite0, 1280-d
  vlm4rec encode amazon-baby --modality image --encoder ~/models/clip-vit-base-patch32 --feature clip
  vlm4rec encode ml-100k --modality image --items posters.tsv --image-column poster_path
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "encode",
        help="encode descriptions, item text or item images into a dataset feature file",
        description="Encode item descriptions (from `vlm4rec ground`), item text columns, or "
        "item images into L2-normalised float32 vectors saved as a dataset feature.",
        epilog=EPILOG + "\n" + LVLM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", help="dataset name: inputs and outputs live in dataset/<name>/")
    parser.add_argument("--modality", choices=("text", "image", "lvlm", "slots"), default="text")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--descriptions", metavar="TAG|PATH",
                        help="descriptions file tag (descriptions/<TAG>.jsonl) or path")
    source.add_argument("--template", help="text template over item-table columns, "
                        "e.g. '{title}. {categories}'")
    parser.add_argument("--items", metavar="FILE", help="item table (.item/.csv/.tsv); default "
                        "dataset/<name>/<name>.item. Relative image paths are under its folder")
    parser.add_argument("--item-field", default="item_id", help="item id column (default item_id)")
    parser.add_argument("--image-column", default="image", help="image column (default image)")
    parser.add_argument("--feature", help="output feature name (default vlm / text / visual)")
    parser.add_argument("--encoder", help="text: a sentence-transformers name or folder (default "
                        "all-MiniLM-L6-v2); image: efficientnet-lite0 (default) or a local "
                        "transformers vision model folder (CLIP, SigLIP, ViT...)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="encoder batch size (default 64 texts / 32 images / 4 lvlm)")
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cpu, cuda:1 (default: GPU when present)")
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="text: encode in N processes (sentence-transformers' multi-process "
                        "pool): one per GPU when GPUs are present, else N CPU processes; same "
                        "vectors as one process (default 1)")
    parser.add_argument("--data-path", help="folder holding dataset folders (default: the project home's dataset/, see docs/datasets.md)")
    parser.add_argument("--features-dir", help="output folder (default dataset/<name>/features)")
    parser.add_argument("--no-cache", action="store_true", help="ignore and do not write the "
                        "per-input cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_lvlm_arguments(parser)
    slots = parser.add_argument_group("--modality slots")
    slots.add_argument("--min-count", type=int, default=2,
                       help="keep tokens found in at least this many items (default 2)")
    slots.add_argument("--max-tokens", type=int, default=4096,
                       help="keep at most this many (most frequent) tokens (default 4096)")
    parser.set_defaults(func=_encode)


def dataset_folder(name: str, data_path: str | None) -> Path:
    from recbole_vlm4rec.formats import paths

    return (Path(data_path) if data_path else paths.dataset_root()) / name


def default_item_table(name: str, folder: Path) -> Path:
    """``<folder>/<name>.item``; for an embedded dataset without one, the copy in its package."""
    from recbole_vlm4rec.data.registry import is_embedded

    path = folder / f"{name}.item"
    if not path.is_file() and is_embedded(name):
        import recbole

        return Path(recbole.__file__).parent / "dataset_example" / name / f"{name}.item"
    return path


def descriptions_path(tag_or_path: str, folder: Path) -> Path:
    candidate = Path(tag_or_path).expanduser()
    if candidate.suffix == ".jsonl" or candidate.is_file():
        return candidate
    path = folder / "descriptions" / f"{tag_or_path}.jsonl"
    if not path.is_file():
        existing = sorted(p.stem for p in (folder / "descriptions").glob("*.jsonl"))
        raise FileNotFoundError(
            f"no descriptions file {path}; available tags: {', '.join(existing) or 'none'} "
            "(write one with `vlm4rec ground`)"
        )
    return path


def _encode(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.encoding.encode import EncodeInputError

    try:
        report = _run(args)
    except (EncodeInputError, FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"vlm4rec encode: error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def _run(args: argparse.Namespace):
    from recbole_vlm4rec.encoding import encode

    folder = dataset_folder(args.dataset, args.data_path)
    out_dir = Path(args.features_dir) if args.features_dir else folder / "features"
    items = (Path(args.items).expanduser() if args.items
             else default_item_table(args.dataset, folder))
    show_progress = not args.quiet
    if args.processes != 1 and (args.modality != "text" or args.processes < 1):
        raise ValueError(f"--processes {args.processes}: a number >= 1, for text encoding only "
                         f"(sentence-transformers); --modality {args.modality} runs in one process")
    if args.modality == "lvlm":
        from recbole_vlm4rec.encoding.lvlm_cli import run_lvlm

        return run_lvlm(args, folder, out_dir, items)
    if args.modality == "slots":
        if not args.descriptions:
            raise ValueError("--modality slots reads the `fields` of a structured descriptions "
                             "file: give --descriptions TAG")
        from recbole_vlm4rec.encoding.slots import encode_slot_feature

        path = descriptions_path(args.descriptions, folder)
        return encode_slot_feature(path, out_dir, args.feature or "slots", args.min_count,
                                   args.max_tokens, extra_meta={"command": shlex.join(
                                       ["vlm4rec", "encode", *sys.argv[2:]])})
    if args.modality == "image":
        if args.descriptions or args.template:
            raise ValueError("--descriptions/--template are for text; images come from "
                             "--image-column")
        from recbole_vlm4rec.encoding.image import DEFAULT_IMAGE_ENCODER, create_image_encoder

        refs = encode.image_refs_from_table(items, args.image_column, args.item_field)
        image_encoder = create_image_encoder(args.encoder or DEFAULT_IMAGE_ENCODER, args.device,
                                             batch_size=args.batch_size or 32)
        return encode.encode_image_feature(
            refs, items.parent, out_dir, args.feature or "visual", image_encoder,
            source=f"{items}:{args.image_column}", use_cache=not args.no_cache,
            show_progress=show_progress,
        )
    from recbole_vlm4rec.encoding.text import DEFAULT_TEXT_ENCODER

    extra_meta = {"command": shlex.join(["vlm4rec", "encode", *sys.argv[2:]])}
    if args.descriptions:
        path = descriptions_path(args.descriptions, folder)
        inputs, source, feature = encode.read_descriptions(path), str(path), "vlm"
        extra_meta["descriptions"] = str(path)
    elif args.template:
        inputs = encode.texts_from_table(items, args.template, args.item_field)
        source, feature = f"{items} with template {args.template!r}", "text"
        extra_meta.update(item_table=str(items), template=args.template)
    else:
        tags = sorted(p.stem for p in (folder / "descriptions").glob("*.jsonl"))
        raise ValueError(
            "say what to encode: --descriptions TAG (available: "
            f"{', '.join(tags) or 'none'}), --template '{{column}} ...', or --modality image"
        )
    return encode.encode_text_feature(
        inputs, out_dir, args.feature or feature, args.encoder or DEFAULT_TEXT_ENCODER,
        source=source, use_cache=not args.no_cache, device=args.device,
        batch_size=args.batch_size or 64, show_progress=show_progress, extra_meta=extra_meta,
        processes=args.processes,
    )
