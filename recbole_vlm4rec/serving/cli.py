"""``vlm4rec export`` (write a serving bundle) and ``vlm4rec recommend`` (top-k from one);
``vlm4rec serve`` and ``vlm4rec audit`` are in serve_cli.py."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from recbole_vlm4rec.models import DEFAULT_MODEL
from recbole_vlm4rec.serving import serve_cli
from recbole_vlm4rec.serving.serve_cli import at_least

EXPORT_EPILOG = """\
examples:
  vlm4rec export ml-100k                                # VLM4Rec on the default feature (text)
  vlm4rec export ml-100k-posters --feature vlm --descriptions tagger-preference
  vlm4rec export ml-100k-posters --model VLM4RecFusion --content_features=[visual,text]
  vlm4rec export amazon-baby --feature vlm --index hnsw --out bundles/baby-vlm-hnsw
  vlm4rec export --checkpoint saved/LightGCN-Dec-01-2026_10-00-00.pth --top-n 100

Feature-based models (VLM4Rec, VLM4RecFusion) are built from the dataset's features exactly as a
run builds them (same split, masking, --key=value overrides) and exported as a `profile` bundle:
item vectors + FAISS index + profiles; it also answers new item lists and text queries. Any other
model is exported from its checkpoint (written by `vlm4rec run` / run_recbole.py under ./saved)
as a `topn` bundle: each known user's best items of its full_sort_predict under the run's masking.
`vlm4rec recommend` then needs nothing else (no RecBole, no dataset).
"""

RECOMMEND_EPILOG = """\
examples:
  vlm4rec recommend bundles/ml-100k-text --user 196
  vlm4rec recommend bundles/ml-100k-text --items 50,181,172 -k 5     # a new user
  vlm4rec recommend bundles/ml-100k-text --text "space opera with robots" --json

Each item is shown with its title (the item table's title or first text column, stored in the
bundle). Seen items are never recommended; each recommendation names the history items most
similar to it. The timing line separates loading (bundle, and for --text the encoder) from the
query itself; --json gives both as load_ms and query_ms. Exit code 2 with a clear message for unknown users/items, an empty history, or a text query with an
encoder other than the bundle's.
"""


def register(subparsers: Any) -> None:
    export = subparsers.add_parser(
        "export", help="write a serving bundle of a model (feature-based, or from a checkpoint)",
        epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a model as a self-contained serving bundle.",
    )
    export.add_argument("dataset", nargs="?", help="dataset name, e.g. ml-100k (not with "
                        "--checkpoint: the checkpoint names its dataset)")
    export.add_argument("--model", default=DEFAULT_MODEL,
                        help="feature-based model to export: one whose contract says "
                        "profile-servable (`vlm4rec models`; default %(default)s)")
    export.add_argument("--checkpoint", help="a RecBole checkpoint (.pth) of any model: export "
                        "its top-n per known user")
    export.add_argument("--top-n", type=at_least(1), default=100,
                        help="with --checkpoint: best items kept per user (default 100)")
    export.add_argument("--feature", help="VLM4Rec's item feature (default: the dataset's "
                        "default feature); same as --item_feature=...")
    export.add_argument("--out", help="bundle folder (default: bundles/<dataset>-<model>-<feature>, "
                        "or bundles/<checkpoint name> with --checkpoint)")
    export.add_argument("--aggregation", choices=("mean", "max"),
                        help="profile aggregation (as --profile_aggregation=...)")
    export.add_argument("--descriptions", help="item descriptions for explanations: a tag of "
                        "dataset/<name>/descriptions/<tag>.jsonl, a .jsonl path, or a TSV with "
                        "an item_id and a description column")
    export.add_argument("--index", choices=("flat", "hnsw"), default="flat",
                        help="flat: exact search (default); hnsw: approximate, faster on large "
                        "catalogues")
    export.set_defaults(func=_export, accepts_overrides=True, patches_recbole=True)

    recommend = subparsers.add_parser(
        "recommend", help="top-k recommendations with explanations from a serving bundle",
        epilog=RECOMMEND_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Top-k for a known user, an ad-hoc list of item tokens, or a text.",
    )
    recommend.add_argument("bundle", help="bundle folder written by `vlm4rec export`")
    query = recommend.add_mutually_exclusive_group(required=True)
    query.add_argument("--user", help="a user token of the bundle's dataset")
    query.add_argument("--items", help="comma-separated item tokens: the history of a new user")
    query.add_argument("--text", help="a free-text wish, encoded with the bundle's encoder")
    recommend.add_argument("-k", type=at_least(1), default=10, help="how many items (default 10)")
    recommend.add_argument("--explain", type=at_least(0), default=2,
                           help="history items shown per recommendation (default 2)")
    recommend.add_argument("--encoder", help="text queries: the encoder to use (must match the "
                           "bundle's; default: the bundle's)")
    recommend.add_argument("--json", action="store_true", help="print JSON instead of text")
    recommend.set_defaults(func=_recommend)

    serve_cli.register(subparsers)


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from recbole_vlm4rec.data.dataset import MissingFeatureError
    from recbole_vlm4rec.data.registry import UnknownDatasetError
    from recbole_vlm4rec.formats import paths
    from recbole_vlm4rec.formats.descriptions import DescriptionsFileError
    from recbole_vlm4rec.formats.features import FeatureFileError
    from recbole_vlm4rec.run.cli import split_overrides
    from recbole_vlm4rec.serving.export import (export_bundle, export_checkpoint_bundle,
                                                profile_models)

    overrides: dict[str, Any] = split_overrides(argparse.ArgumentParser(prog="vlm4rec export"),
                                                args.overrides)
    if args.feature:
        overrides["item_feature"] = args.feature
    if args.aggregation:
        overrides["profile_aggregation"] = args.aggregation
    descriptions = args.descriptions
    if descriptions and args.dataset and not Path(descriptions).exists():
        descriptions = str(paths.descriptions_dir(args.dataset) / f"{descriptions}.jsonl")
    try:
        started = time.perf_counter()
        if not args.checkpoint and args.model not in profile_models():
            raise ValueError(f"--model {args.model} cannot be served from features: profile "
                             f"bundles serve {', '.join(profile_models())}; export a trained "
                             "run's checkpoint instead (vlm4rec export --checkpoint saved/...pth)")
        if args.checkpoint:
            if args.dataset or overrides:
                raise ValueError("--checkpoint exports the checkpoint's own model, dataset and "
                                 "config: give no dataset and no --key=value")
            out = args.out or f"bundles/{Path(args.checkpoint).stem}"
            folder = export_checkpoint_bundle(args.checkpoint, out, descriptions, args.top_n)
        else:
            if not args.dataset:
                raise ValueError("name a dataset (vlm4rec export ml-100k) or give --checkpoint")
            out = args.out or f"bundles/{args.dataset}-{args.model}-{args.feature or 'default'}"
            folder = export_bundle(args.model, args.dataset, out, overrides=overrides,
                                   descriptions_file=descriptions, index_kind=args.index)
    except (MissingFeatureError, FeatureFileError, UnknownDatasetError, FileNotFoundError,
            DescriptionsFileError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    meta = json.loads((folder / "bundle.json").read_text())
    print(f"{meta['kind']} bundle of {meta['model']} written to {folder} in "
          f"{time.perf_counter() - started:.1f} s: {meta['n_items']} items, {meta['n_users']} "
          f"users, {meta['n_descriptions']} descriptions")
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.serving.bundle import BundleError
    from recbole_vlm4rec.serving.recommend import Recommender, ServingError

    try:
        started = time.perf_counter()
        recommender = Recommender(args.bundle)
        if args.text is not None:
            recommender.load_text_encoder(args.encoder)  # model loading is not query latency
        loaded = time.perf_counter()
        if args.user is not None:
            found = recommender.for_user(args.user, args.k, args.explain)
            query: dict[str, Any] = {"user": args.user}
        elif args.items is not None:
            found = recommender.for_items(args.items.split(","), args.k, args.explain)
            query = {"items": [i.strip() for i in args.items.split(",") if i.strip()]}
            if recommender.ignored_items:
                print(f"note: {len(recommender.ignored_items)} history items have no "
                      f"'{recommender.bundle.meta.get('item_feature')}' vector and were left out: "
                      f"{', '.join(recommender.ignored_items[:10])}", file=sys.stderr)
        else:
            found = recommender.for_text(args.text, args.k, args.encoder)
            query = {"text": args.text}
        answered = time.perf_counter()
    except (ServingError, BundleError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    load_ms, query_ms = 1000 * (loaded - started), 1000 * (answered - loaded)
    if args.json:
        print(json.dumps({"query": query, "load_ms": round(load_ms, 2),
                          "query_ms": round(query_ms, 2),
                          "recommendations": [asdict(r) for r in found]},
                         indent=2, ensure_ascii=False))
        return 0
    meta = recommender.bundle.meta
    how = (f"{meta['profile_aggregation']} profile" if meta["kind"] == "profile"
           else f"precomputed top-{meta['top_n']}")
    what = {"user": lambda v: f"user {v}", "items": lambda v: f"history [{', '.join(v)}]",
            "text": lambda v: f'"{v}"'}
    (kind, value), = query.items()
    on = f" on '{meta['item_feature']}'" if meta.get("item_feature") else ""
    print(f"top {len(found)} for {what[kind](value)} ({meta['model']}{on}, {how}; "
          f"query {query_ms:.1f} ms, load {load_ms:.0f} ms)")
    for rank, rec in enumerate(found, start=1):
        title = f"  {rec.title}" if rec.title else ""
        print(f"{rank:>3}. {rec.item}{title}  {rec.score:.4f}  {rec.description or ''}".rstrip())
        for because in rec.because:
            named = f" {because.title}" if because.title else ""
            text = f' "{because.description}"' if because.description else ""
            print(f"       because you liked {because.item}{named} "
                  f"(cos {because.similarity:.3f}){text}")
    return 0
