"""``vlm4rec export`` (write a serving bundle) and ``vlm4rec recommend`` (top-k from one)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

EXPORT_EPILOG = """\
examples:
  vlm4rec export ml-100k                                # the default feature (text) -> bundles/ml-100k-text
  vlm4rec export amazon-baby --feature vlm --descriptions dataset/amazon-baby/descriptions.tsv
  vlm4rec export amazon-baby --feature vlm --index hnsw --out bundles/baby-vlm-hnsw

The bundle holds item embeddings + tokens, a FAISS index, users' histories, the model config and
the encoder fingerprint; `vlm4rec recommend` needs nothing else (no RecBole, no dataset).
"""

RECOMMEND_EPILOG = """\
examples:
  vlm4rec recommend bundles/ml-100k-text --user 196
  vlm4rec recommend bundles/ml-100k-text --items 50,181,172 -k 5     # a new user
  vlm4rec recommend bundles/ml-100k-text --text "space opera with robots" --json

Seen items are never recommended; each recommendation names the history items most similar to it.
Exit code 2 with a clear message for unknown users/items, an empty history, or a text query with an
encoder other than the bundle's.
"""


def register(subparsers: Any) -> None:
    export = subparsers.add_parser(
        "export", help="write a serving bundle (embeddings, FAISS index, histories) for VLM4Rec",
        epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export VLM4Rec on a dataset feature as a self-contained serving bundle.",
    )
    export.add_argument("dataset", help="dataset name, e.g. ml-100k")
    export.add_argument("--feature", help="item feature (default: the dataset's default feature)")
    export.add_argument("--out", help="bundle folder (default: bundles/<dataset>-<feature>)")
    export.add_argument("--aggregation", choices=("mean", "max"), default="mean",
                        help="profile aggregation served (as VLM4Rec's profile_aggregation)")
    export.add_argument("--descriptions", help="item descriptions for explanations: TSV with an "
                        "item_id and a description column, or JSON lines")
    export.add_argument("--index", choices=("flat", "hnsw"), default="flat",
                        help="flat: exact search (default); hnsw: approximate, faster on large "
                        "catalogues")
    export.set_defaults(func=_export)

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
    recommend.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    recommend.add_argument("--explain", type=int, default=2,
                           help="history items shown per recommendation (default 2)")
    recommend.add_argument("--encoder", help="text queries: the encoder to use (must match the "
                           "bundle's; default: the bundle's)")
    recommend.add_argument("--json", action="store_true", help="print JSON instead of text")
    recommend.set_defaults(func=_recommend)


def _export(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.data.dataset import MissingFeatureError
    from recbole_vlm4rec.data.features import FeatureFileError
    from recbole_vlm4rec.data.registry import UnknownDatasetError
    from recbole_vlm4rec.serving.export import export_dataset_bundle

    out = args.out or f"bundles/{args.dataset}-{args.feature or 'default'}"
    try:
        started = time.perf_counter()
        folder = export_dataset_bundle(args.dataset, out, args.feature, args.aggregation,
                                       args.descriptions, args.index)
    except (MissingFeatureError, FeatureFileError, UnknownDatasetError, FileNotFoundError,
            ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    meta = json.loads((folder / "bundle.json").read_text())
    print(f"bundle written to {folder} in {time.perf_counter() - started:.1f} s: "
          f"{meta['n_items']} items x {meta['dim']} ({meta['item_feature']}), "
          f"{meta['n_users']} users, {meta['index']} index, {meta['n_descriptions']} descriptions")
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.serving.bundle import BundleError
    from recbole_vlm4rec.serving.recommend import Recommender, ServingError

    try:
        recommender = Recommender(args.bundle)
        started = time.perf_counter()
        if args.user is not None:
            found, what = recommender.for_user(args.user, args.k, args.explain), f"user {args.user}"
        elif args.items is not None:
            found = recommender.for_items(args.items.split(","), args.k, args.explain)
            what = f"history [{args.items}]"
            if recommender.ignored_items:
                print(f"note: {len(recommender.ignored_items)} history items have no "
                      f"'{recommender.bundle.meta.get('item_feature')}' vector and were left out: "
                      f"{', '.join(recommender.ignored_items[:10])}", file=sys.stderr)
        else:
            found, what = recommender.for_text(args.text, args.k, args.encoder), repr(args.text)
        elapsed_ms = 1000 * (time.perf_counter() - started)
    except (ServingError, BundleError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"query": what, "ms": round(elapsed_ms, 2),
                          "recommendations": [asdict(r) for r in found]}, indent=2))
        return 0
    meta = recommender.bundle.meta
    print(f"top {len(found)} for {what} (VLM4Rec on '{meta['item_feature']}', "
          f"{meta['profile_aggregation']} profile; {elapsed_ms:.1f} ms)")
    for rank, rec in enumerate(found, start=1):
        print(f"{rank:>3}. {rec.item}  {rec.score:.4f}  {rec.description or ''}".rstrip())
        for because in rec.because:
            text = f' "{because.description}"' if because.description else ""
            print(f"       because you liked {because.item} (cos {because.similarity:.3f}){text}")
    return 0
