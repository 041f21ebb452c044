"""Paired per-user tests of some models of a benchmark folder against another reference than the
spec's: the same tests as ``vlm4rec report`` (benchmark/stats.py: per-user values averaged over
the seeds both ran, paired t-test and Wilcoxon, Holm-corrected over the models compared).

    python benchmarks/paired.py results/benchmarks/cold-start --dataset ml-100k-posters \\
        --reference VBPR --models 'VLM4RecHybrid (text)' --models 'Text only' --metrics recall@20
"""

from __future__ import annotations

import argparse
import sys

from recbole_vlm4rec.benchmark.report import load_report
from recbole_vlm4rec.benchmark.stats import compare_to_reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a benchmark output folder (vlm4rec bench / tune)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--reference", required=True, help="the model label compared against")
    parser.add_argument("--models", action="append", required=True,
                        help="model labels to compare (repeatable; a label may hold commas)")
    parser.add_argument("--metrics", default="recall@20,ndcg@20",
                        help="comma-separated (default recall@20,ndcg@20)")
    args = parser.parse_args(argv)
    summaries = load_report(args.folder).datasets.get(args.dataset)
    if summaries is None:
        print(f"error: no records for dataset {args.dataset!r} in {args.folder}", file=sys.stderr)
        return 2
    unknown = [label for label in [args.reference, *args.models] if label not in summaries]
    if unknown:
        print(f"error: {unknown} not in {args.folder} ({list(summaries)})", file=sys.stderr)
        return 2
    print(f"reference: {args.reference} on {args.dataset}")
    print("| metric | model | users | mean diff | t-test p (Holm) | Wilcoxon p (Holm) |")
    print("|---|---|---|---|---|---|")
    for metric in args.metrics.split(","):
        per_model = {label: summaries[label].per_user(metric)
                     for label in [args.reference, *args.models]}
        for label, test in compare_to_reference(per_model, args.reference).items():
            print(f"| {metric} | {label} | {test.n_users} | {test.mean_difference:+.4f} | "
                  f"{test.t_p_holm:.3g} | {test.wilcoxon_p_holm:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
