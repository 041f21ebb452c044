"""``vlm4rec bench`` (run a grid from a spec) and ``vlm4rec report`` (rebuild its report)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

BENCH_EPILOG = """\
examples:
  vlm4rec bench configs/benchmarks/smoke.yaml           # a few minutes: checks the harness
  vlm4rec bench configs/benchmarks/paper.yaml           # the VLM4Rec comparison
  vlm4rec bench configs/benchmarks/paper.yaml --out results/benchmarks/paper-v2 --rerun
  vlm4rec report results/benchmarks/paper              # tables/plots/tests again, no rerun

Each cell (model x dataset x seed) runs through the same code as run_recbole.py, by default in
its own process (isolated peak memory; a crash fails only that cell). Finished cells are skipped
on rerun (Ctrl-C is safe: rerun to resume); skipped/failed cells are retried. Cells that need a
feature or dataset that is not there are recorded as skipped with the reason. Every cell is
checked before any runs: an unknown model, config key or value stops the grid at once (exit 2),
listing each cell setting at fault.
"""


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser(
        "bench", help="run a benchmark grid (models x datasets x seeds) and write its report",
        description="Run every cell of a benchmark spec (configs/benchmarks/*.yaml) and write "
        "one JSON per run, CSV + Markdown tables, plots and paired significance tests.",
        epilog=BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("spec", help="benchmark spec yaml, e.g. configs/benchmarks/paper.yaml")
    bench.add_argument("--out", help="output folder (default: results/benchmarks/<spec name>)")
    bench.add_argument("--rerun", action="store_true", help="rerun cells that already finished")
    bench.add_argument("--isolation", choices=("subprocess", "inprocess"),
                       help="override the spec: a process per cell (default) or all in this one")
    bench.add_argument("--datasets", action="append",
                       help="subset of the spec's datasets: comma-separated and/or repeated")
    bench.add_argument("--models", action="append",
                       help="subset of the spec's model labels: comma-separated and/or repeated "
                       "(--models BPR,LightGCN --models 'VLM4Rec (vlm, max)')")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override for every cell, above all spec layers (yaml value), e.g. "
                       "--set epochs=1; repeatable. Saved in <out>/spec.yaml; use another --out")
    bench.add_argument("--publish", metavar="DIR",
                       help="copy the report to DIR (e.g. docs/results/<spec>) and refresh the "
                       "README/docs tables citing DIR/summary.csv (docs/results.md)")
    bench.set_defaults(func=_bench)

    tune = subparsers.add_parser(
        "tune", help="choose each model's settings on validation, then run them on every seed",
        description="For every model x dataset of a benchmark spec: run the grid of its search "
        "space (the spec's `search.space`, else the model's `search_space` in its yaml) on one "
        "seed, trained and validated only (no test evaluation), choose the best validation "
        "metric, then run the choice on every seed of the spec and write the report (mean +- "
        "std of the choices, plus every trial). Resumable; budgets in trials and minutes.",
        epilog=TUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    tune.add_argument("spec", help="benchmark spec yaml with an optional `search:` block")
    tune.add_argument("--out", help="output folder (default: results/tune/<spec name>)")
    tune.add_argument("--max-trials", type=int, help="per model and dataset (beats the spec)")
    tune.add_argument("--max-minutes", type=float,
                      help="per model and dataset: no trial starts after this much trial time")
    tune.add_argument("--isolation", choices=("subprocess", "inprocess"))
    tune.add_argument("--datasets", action="append", help="subset of the spec's datasets")
    tune.add_argument("--models", action="append", help="subset of the spec's model labels")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override for every cell and trial, above all spec layers")
    tune.add_argument("--publish", metavar="DIR", help="as `vlm4rec bench --publish`")
    tune.set_defaults(func=_tune)

    report = subparsers.add_parser(
        "report", help="rebuild a benchmark's tables, plots and tests from its run records",
        description="Reads <folder>/spec.yaml and <folder>/runs/**/*.json and rewrites report.md, "
        "summary.csv, runs.csv, significance.csv and plots/*.png. Example: "
        "vlm4rec report results/benchmarks/paper",
    )
    report.add_argument("folder", help="a benchmark output folder")
    report.add_argument("--publish", metavar="DIR", help="as `vlm4rec bench --publish`")
    report.set_defaults(func=_report)


TUNE_EPILOG = """\
examples:
  vlm4rec tune configs/benchmarks/tune-posters.yaml           # the README's tuning run
  vlm4rec tune configs/benchmarks/paper.yaml --datasets ml-100k-posters --max-trials 4
  vlm4rec report results/tune/tune-posters                   # tables again, no rerun

Output: trials/ (validation only), runs/ (the choices on every seed), tuning.json / tuning.csv,
report.md. docs/tuning.md describes the search block and the model search spaces.
"""


def _subset(entries: dict, wanted: list[str] | None, what: str) -> dict:
    if not wanted:
        return entries
    names = []
    for value in wanted:  # a whole value naming an entry wins over splitting it at commas
        names += [value] if value in entries else [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise SystemExit(f"error: {what} {unknown} not in the spec: {list(entries)}")
    return {n: entries[n] for n in names}


def _parse_set(items: list[str]) -> dict[str, Any]:
    import yaml

    forced = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set takes KEY=VALUE, got {item!r}")
        forced[key] = yaml.safe_load(value)
    return forced


def _bench(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.benchmark.grid import GridConfigError, run_grid
    from recbole_vlm4rec.benchmark.report import write_report
    from recbole_vlm4rec.benchmark.spec import SpecError, load_spec

    try:
        spec = load_spec(args.spec)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    spec.datasets = _subset(spec.datasets, args.datasets, "datasets")
    spec.models = _subset(spec.models, args.models, "models")
    spec.with_forced(_parse_set(args.set))
    try:
        summary = run_grid(spec, args.out, rerun=args.rerun, isolation=args.isolation)
    except GridConfigError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"error: {len(error.problems)} cell setting(s) of {args.spec} cannot run; no cell "
              "was started", file=sys.stderr)
        return 2
    print(f"cells: {summary.line()}")
    try:
        written = write_report(summary.out_dir)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"report: {summary.out_dir / 'report.md'} ({len(written)} files)")
    _publish(summary.out_dir, args.publish)
    if summary.interrupted:
        return 130
    return 1 if summary.counts.get("failed") else 0


def _tune(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.benchmark.grid import GridConfigError
    from recbole_vlm4rec.benchmark.report import write_report
    from recbole_vlm4rec.benchmark.spec import SpecError, load_spec
    from recbole_vlm4rec.benchmark.tune import default_out_dir, run_tune

    try:
        spec = load_spec(args.spec)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    spec.datasets = _subset(spec.datasets, args.datasets, "datasets")
    spec.models = _subset(spec.models, args.models, "models")
    spec.with_forced(_parse_set(args.set))
    out = args.out or default_out_dir(spec)
    try:
        trials, finals = run_tune(spec, out, isolation=args.isolation,
                                  max_trials=args.max_trials, max_minutes=args.max_minutes)
    except GridConfigError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"error: {len(error.problems)} setting(s) of {args.spec} cannot run; nothing was "
              "started", file=sys.stderr)
        return 2
    print(f"trials: {trials.line()}")
    print(f"chosen settings on every seed: {finals.line()}")
    try:
        write_report(finals.out_dir)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"report: {finals.out_dir / 'report.md'}")
    _publish(finals.out_dir, args.publish)
    if trials.interrupted or finals.interrupted:
        return 130
    return 1 if finals.counts.get("failed") else 0


def _report(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.benchmark.report import write_report
    from recbole_vlm4rec.benchmark.spec import SpecError

    try:
        written = write_report(args.folder)
    except (FileNotFoundError, SpecError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    _publish(args.folder, args.publish)
    return 0


def _publish(folder: Any, destination: str | None) -> None:
    if not destination:
        return
    from recbole_vlm4rec.benchmark.publish import publish

    for path in publish(folder, destination):
        print(f"published: {path}")
