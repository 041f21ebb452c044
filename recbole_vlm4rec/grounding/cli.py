"""``vlm4rec ground``: describe item images with a vision-language model (VLM4Rec step 1)."""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

EXAMPLES = """\
examples:
  # try the prompt on 3 items without calling any model
  vlm4rec ground amazon-baby --backend openai --model Qwen/Qwen2.5-VL-7B-Instruct --dry-run --limit 3
  # a vLLM / Ollama / hosted endpoint (API key read from $OPENAI_API_KEY), 32 requests in flight
  vlm4rec ground amazon-baby --backend openai --base-url http://gpu1:8000/v1 \\
      --model Qwen/Qwen2.5-VL-7B-Instruct --concurrency 32
  # a fleet: two servers (or --base-urls-file servers.txt), 64 requests in flight over both
  vlm4rec ground amazon-baby --backend openai --base-url http://gpu1:8000/v1 \\
      --base-url http://gpu2:8000/v1 --model Qwen/Qwen2.5-VL-7B-Instruct --concurrency 64
  # a local Hugging Face model folder or hub id, batched on the GPU, structured JSON slots
  vlm4rec ground amazon-baby --backend transformers --model ./Qwen2-VL-2B-Instruct \\
      --prompt structured --domain baby --batch-size 8 --dtype bfloat16
  # any table (csv/tsv) instead of a prepared dataset, with the title in the prompt
  vlm4rec ground --items products.csv --item-column sku --image-column photo \\
      --image-root ./photos --context "{title}" --backend tagger

Output: <dataset>/descriptions/<tag>.jsonl (one row per item; `vlm4rec encode` reads it) and the
cache <tag>.sqlite beside it. Rerunning the same command only does items that are missing, failed
or stale (changed image bytes, prompt file, model); Ctrl-C keeps everything finished so far. The
.jsonl lists every row the cache holds, also those of items outside --limit. A failed attempt
never replaces a good description. One tag holds one backend/model/prompt's descriptions: another
one is refused on it (use its own --tag, or --redo to switch). Two runs on the same tag (e.g. on
two machines sharing the folder) split the items between them.
"""

# flag -> backend constructor keyword; only flags the user sets are passed on.
BACKEND_FLAGS = {
    "model": "model", "base_url": "base_url", "api_key_env": "api_key_env",
    "concurrency": "concurrency", "timeout": "timeout", "max_retries": "max_retries",
    "batch_size": "batch_size", "max_new_tokens": "max_new_tokens", "dtype": "dtype",
    "device": "device",
}


def register(subparsers: Any) -> None:
    from recbole_vlm4rec.grounding.backends import BACKENDS

    parser = subparsers.add_parser(
        "ground",
        help="describe item images with a vision-language model (cached, resumable)",
        description="Turn each item image into a preference-oriented description (style, "
        "material, colour, usage, occasion) with a vision-language model backend.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", nargs="?", help="prepared dataset under dataset/ (reads <name>.item)")
    source = parser.add_argument_group("items (instead of a dataset)")
    source.add_argument("--items", type=Path, help="item table: .item / .tsv / .csv")
    source.add_argument("--item-column", default="item_id", help="item token column (default: item_id)")
    source.add_argument("--image-column", default="image", help="image path/URL column (default: image)")
    source.add_argument("--image-root", type=Path, help="folder of relative image paths (default: the table's folder)")
    source.add_argument("--out-dir", type=Path, help="where descriptions go (default: <dataset or table folder>/descriptions)")

    what = parser.add_argument_group("what to run")
    what.add_argument("--backend", default="tagger", choices=sorted(BACKENDS),
                      help="grounding backend (default: tagger, the offline CPU substitute)")
    what.add_argument("--prompt", default="preference",
                      help="prompt name in configs/prompts/ or a YAML path (default: preference; "
                      "structured = JSON slots)")
    what.add_argument("--domain", help="prompt domain: slot set / configs/prompts/<domain>/ override")
    what.add_argument("--context", metavar="TEMPLATE",
                      help='item text added to the prompt, e.g. "{title} ({brand})" (default: none)')
    what.add_argument("--tag", help="output name (default: <backend>-<prompt>[-<domain>])")
    what.add_argument("--limit", type=int, help="only the first N items in table order (rows of "
                      "other items already in the cache stay in the output); with "
                      "--only-with-image, the first N that have one")
    what.add_argument("--only-with-image", action="store_true",
                      help="only items whose image is a local file that exists (items without one "
                      "get no row instead of a failed one; URLs need `prepare --download-images`)")
    what.add_argument("--dry-run", action="store_true", help="print rendered prompts and the plan; call nothing, write nothing")
    what.add_argument("--no-retry-failed", dest="retry_failed", action="store_false",
                      help="keep failed rows of the cache instead of retrying them")
    what.add_argument("--redo", action="store_true",
                      help="describe every item again, also those with a current row, and let this "
                      "backend/model/prompt take over a tag another one wrote (a good row is "
                      "still replaced only by a good one)")
    what.add_argument("--max-side", type=int, default=1024, help="downscale longer image side to this (default 1024)")
    what.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    model = parser.add_argument_group("backend options (each applies to the backends that take it)")
    model.add_argument("--model", help="model: HF folder / hub id (transformers), served model name (openai)")
    model.add_argument("--base-url", action="append", metavar="URL",
                       help="openai: endpoint base URL, e.g. http://localhost:8000/v1; repeat it (or "
                       "comma-separate) for a fleet: each request goes to the server with the fewest "
                       "in flight, a failed one is retried on another")
    model.add_argument("--base-urls-file", type=Path, metavar="FILE",
                       help="openai: a file of base URLs, one per line (# comments), added to --base-url")
    model.add_argument("--api-key-env", help="openai: environment variable holding the API key (default OPENAI_API_KEY)")
    model.add_argument("--concurrency", type=int, help="openai: requests in flight")
    model.add_argument("--timeout", type=float, help="openai: seconds for a whole request (connect to last byte)")
    model.add_argument("--max-retries", type=int, help="openai: retries on 429/5xx/connection errors")
    model.add_argument("--batch-size", type=int, help="images per model call (transformers, tagger)")
    model.add_argument("--max-new-tokens", type=int, help="longest answer in tokens")
    model.add_argument("--dtype", help="transformers: auto, float32, bfloat16, float16")
    model.add_argument("--device", help="transformers/tagger: cpu, cuda, cuda:1 (default: GPU when present)")
    model.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other backend keyword (value parsed as YAML); repeatable")
    parser.set_defaults(func=_ground)


def backend_options(args: argparse.Namespace, backend_class: type) -> dict[str, Any]:
    """Constructor keywords from the flags the user set; ValueError for flags it does not take."""
    import yaml

    options = {kw: getattr(args, flag) for flag, kw in BACKEND_FLAGS.items() if getattr(args, flag, None) is not None}
    for pair in args.backend_option:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--backend-option {pair!r}: expected KEY=VALUE")
        options[key.strip().replace("-", "_")] = yaml.safe_load(value)
    parameters = inspect.signature(backend_class.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return options
    unknown = [key for key in options if key not in parameters]
    if unknown:
        flags = ", ".join("--" + key.replace("_", "-") for key in unknown)
        takes = ", ".join(name for name in parameters if name != "self")
        raise ValueError(f"backend {backend_class.name!r} does not take {flags} (it takes: {takes})")
    return options


def _ground(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.grounding.backends import BackendUnavailableError, get_backend_class
    from recbole_vlm4rec.formats.items import read_item_table
    from recbole_vlm4rec.formats.openai_messages import read_base_urls
    from recbole_vlm4rec.grounding.items import (items_of_named_dataset, items_from_table,
                                                 with_local_image)
    from recbole_vlm4rec.grounding.prompts import PromptError, load_prompt
    from recbole_vlm4rec.grounding.run import (GroundingAborted, TagHeldByAnotherDescriber,
                                               run_grounding)
    from recbole_vlm4rec.grounding.store import DescriptionStore
    from recbole_vlm4rec.formats.paths import dataset_root

    def fail(message: str, code: int = 2) -> int:
        print(f"vlm4rec ground: error: {message}", file=sys.stderr)
        return code

    if bool(args.dataset) == bool(args.items):
        return fail("give a dataset name or --items FILE (exactly one)")
    if args.limit is not None and args.limit < 1:
        return fail("--limit must be at least 1")
    try:
        prompt = load_prompt(args.prompt, args.domain)
        if args.items:
            table = read_item_table(args.items)
            root = args.image_root or args.items.parent
            items = items_from_table(table, root, args.item_column, args.image_column, args.context, args.items)
            out_dir = args.out_dir or args.items.parent / "descriptions"
        else:
            items = items_of_named_dataset(args.dataset, args.context, args.image_column)
            out_dir = args.out_dir or dataset_root() / args.dataset / "descriptions"
        if args.base_urls_file:
            args.base_url = (args.base_url or []) + read_base_urls(args.base_urls_file)
        backend_class = get_backend_class(args.backend)
        backend = backend_class(**backend_options(args, backend_class))
    except (PromptError, FileNotFoundError, KeyError, ValueError, ImportError) as error:
        return fail(str(error).strip('"'))
    if args.only_with_image:
        n_all, items = len(items), with_local_image(items)
        print(f"--only-with-image: {len(items)} of {n_all} items have a local image file",
              file=sys.stderr)
        if not items:
            return fail("no item has a local image file (URLs: vlm4rec prepare ... --download-images)")
    if args.limit:
        items = items[: args.limit]
    tag = args.tag or "-".join(filter(None, [args.backend, prompt.name, args.domain]))
    output = Path(out_dir) / f"{tag}.jsonl"
    try:
        with DescriptionStore(Path(out_dir) / f"{tag}.sqlite", read_only=args.dry_run) as store:
            summary = run_grounding(items, prompt, backend, store, output, dry_run=args.dry_run,
                                    retry_failed=args.retry_failed, redo=args.redo,
                                    max_side=args.max_side, progress=args.progress)
    except TagHeldByAnotherDescriber as error:
        return fail(str(error))
    except GroundingAborted as error:  # the message says what failed and what to fix
        saved = getattr(error, "summary", None)
        if saved is not None:
            print(saved.format(), file=sys.stderr)
        return fail(str(error), 1)
    except BackendUnavailableError as error:  # unreachable endpoint, no weights... (before any item)
        return fail(str(error), 1)
    finally:
        backend.close()
    if args.dry_run:
        return 0
    print(f"grounding {args.backend} / {backend.model_id()} / prompt {prompt.name} v{prompt.version}")
    print(summary.format())
    return 130 if summary.interrupted else 0
