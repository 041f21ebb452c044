"""``vlm4rec bench`` (run a grid from a spec) and ``vlm4rec report`` (rebuild its report)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

BENCH_EPILOG = """\
examples:
  vlm4rec bench configs/benchmarks/smoke.yaml           # a few minutes: checks the harness
  vlm4rec bench configs/benchmarks/quick.yaml           # the comparison on a CPU: ~20 min
  vlm4rec bench configs/benchmarks/paper.yaml           # the VLM4Rec comparison: hours on a CPU
  vlm4rec bench configs/benchmarks/paper.yaml --seeds 2020 --max-epochs 20   # cheaper, marked †
  vlm4rec bench configs/benchmarks/paper.yaml --out results/benchmarks/paper-v2 --rerun
  vlm4rec bench configs/benchmarks/posters.yaml --rerun-undertrained --patience 50
  vlm4rec report results/benchmarks/paper              # tables/plots/tests again, no rerun

Each cell (model x dataset x seed) runs through the same code as run_recbole.py, by default in
its own process (isolated peak memory; a crash fails only that cell). Finished cells are skipped
on rerun (Ctrl-C is safe: rerun to resume); skipped/failed cells are retried. Cells that need a
feature or dataset that is not there are recorded as skipped with the reason. Every cell is
checked before any runs: an unknown model, config key or value stops the grid at once (exit 2),
listing each cell setting at fault. A trained run stopped by patience with its best epoch among
the first validations (early-best) or still improving at its epoch cap (still-improving) is
flagged undertrained in its record and the report; --rerun-undertrained reruns only those cells
with more patience (docs/protocol.md, "Undertrained runs"). --publish DIR copies the report under
DIR and refreshes the docs tables citing it (docs/results.md).
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
    bench.add_argument("--seeds", metavar="S1,S2",
                       help="run these seeds instead of the spec's, e.g. --seeds 2020 (one seed: "
                       "a third of a three-seed spec's cost, no spread in the tables)")
    bench.add_argument("--max-epochs", type=int, metavar="N",
                       help="cap every cell's epochs at N (smaller settings are kept); the report "
                       "marks runs whose training ended at the cap instead of early stopping")
    bench.add_argument("--publish", metavar="DIR",
                       help="copy the report to DIR (e.g. docs/results/<spec>) and refresh the "
                       "README/docs tables citing DIR/summary.csv (docs/results.md)")
    _add_rerun_undertrained(bench)
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
    _add_rerun_undertrained(tune)
    tune.set_defaults(func=_tune)

    report = subparsers.add_parser(
        "report", help="rebuild a benchmark's tables, plots and tests from its run records",
        description="Reads <folder>/spec.yaml and <folder>/runs/**/*.json and rewrites report.md, "
        "summary.csv, runs.csv, significance.csv, plots/*.png and report.html (one "
        "self-contained page: table, plots, examples with thumbnails, how the run was made). "
        "Example: vlm4rec report results/benchmarks/paper",
    )
    report.add_argument("folder", help="a benchmark output folder")
    report.add_argument("--example-models", action="append", metavar="LABELS",
                        help="models whose top-10 the page shows (comma-separated and/or "
                        "repeated; default: the reference and the next models, 4 in all)")
    report.add_argument("--example-users", type=int, metavar="N",
                        help="test users shown in the examples (default 3; at most the 12 a "
                        "run records)")
    report.add_argument("--publish", metavar="DIR", help="as `vlm4rec bench --publish`")
    report.set_defaults(func=_report)


def _add_rerun_undertrained(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rerun-undertrained", action="store_true",
                        help="after the grid, rerun the cells flagged undertrained (early-best: "
                        "stopped by patience with the best epoch among the first validations; "
                        "still-improving: best epoch at the epoch cap) with more patience, and "
                        "twice the epochs for still-improving ones; other cells are kept")
    parser.add_argument("--patience", type=int, metavar="N",
                        help="with --rerun-undertrained: the reruns' stopping_step (default: "
                        "twice each run's own)")


def _check_rerun_args(args: argparse.Namespace) -> str | None:
    if args.patience is not None and not args.rerun_undertrained:
        return ("--patience applies to --rerun-undertrained; to give every cell another "
                "patience use --set stopping_step=N")
    if args.patience is not None and args.patience < 1:
        return f"--patience must be at least 1, got {args.patience}"
    return None


TUNE_EPILOG = """\
examples:
  vlm4rec tune configs/benchmarks/tune-posters.yaml           # the README's tuning run
  vlm4rec tune configs/benchmarks/paper.yaml --datasets ml-100k-posters --max-trials 4
  vlm4rec report results/tune/tune-posters                   # tables again, no rerun
  vlm4rec tune configs/benchmarks/tune-posters.yaml --rerun-undertrained   # flagged runs only

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


def _parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds needs distinct integers, got {text!r}")
    return seeds


# Seconds per training epoch (with its validation) on ml-100k, this project's 2-core CPU,
# OMP_NUM_THREADS=1: BPR 1.9, LightGCN 3.9, VBPR 2.4, MMGCN 10.2, FREEDOM 6.2; their mean.
CPU_SECONDS_PER_EPOCH_ML100K = 4.9


@dataclass
class Plan:
    """What a spec's grid holds: every cell, those on prepared datasets, and the trainer cap
    (``epochs``) of each runnable cell that trains a model."""

    cells: int
    runnable: int
    trained_epochs: list[int]

    def line(self) -> str:
        """The plan line ``vlm4rec bench`` prints (docs and spec comments quote it)."""
        note = (f"plan: {self.cells} cells, {len(self.trained_epochs)} of them train a model (up "
                f"to {max(self.trained_epochs, default=0)} epochs each; early stopping may end "
                "sooner)")
        if self.runnable < self.cells:
            note += f"; {self.cells - self.runnable} on datasets not prepared (recorded as skipped)"
        return note


def plan_of(spec, prepared: Callable[[Path | None], Iterable[str]] | None = None) -> Plan:
    """The spec's plan; ``prepared(data_path)`` names the datasets that can run under a data
    path (default: every dataset of the spec counts as prepared)."""
    from recbole_vlm4rec.benchmark.spec import protocol_epochs
    from recbole_vlm4rec.models import UnknownModelError, get_model_info

    cells = spec.cells()
    if prepared is None:
        runnable = cells
    else:
        available: dict[str | None, set[str]] = {}  # data_path -> datasets that can run there
        for cell in cells:
            root = cell.overrides.get("data_path")
            if root not in available:
                available[root] = set(prepared(Path(root) if root else None))
        runnable = [c for c in cells if c.dataset in available[c.overrides.get("data_path")]]
    trained_epochs = []
    for cell in runnable:
        try:
            if not get_model_info(cell.model).trained:
                continue  # one pass, nothing trained (its contract / RecBole type says so)
        except UnknownModelError:
            continue  # recorded as failed by the grid
        trained_epochs.append(int(cell.overrides.get("epochs", protocol_epochs())))
    return Plan(len(cells), len(runnable), trained_epochs)


def cost_note(spec) -> str:
    """Lines printed before a grid starts: how many cells train a model, for how many epochs at
    most, and without a GPU a warning with the cheaper options when that adds up to hours."""
    import torch

    from recbole_vlm4rec.data.registry import available_datasets

    plan = plan_of(spec, available_datasets)
    trained_epochs = plan.trained_epochs
    note = plan.line()
    worst_hours = sum(trained_epochs) * CPU_SECONDS_PER_EPOCH_ML100K / 3600
    if not torch.cuda.is_available() and worst_hours > 1:
        note += (f"\nwarning: no GPU: at ml-100k's measured ~{CPU_SECONDS_PER_EPOCH_ML100K:g} s "
                 f"per epoch on 2 CPU cores, the trained cells can take up to {worst_hours:.0f} h "
                 "(more on larger datasets). Cheaper: --max-epochs 20 --seeds 2020, or "
                 "configs/benchmarks/quick.yaml (docs/benchmarks.md: what a benchmark costs)")
    return note


def _selected_spec(args: argparse.Namespace):
    """The spec of ``bench`` / ``tune`` narrowed by --datasets / --models / --set; None (after
    printing why) when it cannot load or the rerun options conflict."""
    from recbole_vlm4rec.benchmark.spec import SpecError, load_spec

    try:
        spec = load_spec(args.spec)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return None
    spec.datasets = _subset(spec.datasets, args.datasets, "datasets")
    spec.models = _subset(spec.models, args.models, "models")
    spec.with_forced(_parse_set(args.set))
    if problem := _check_rerun_args(args):
        print(f"error: {problem}", file=sys.stderr)
        return None
    return spec


def _bench(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.benchmark.grid import GridConfigError, rerun_undertrained, run_grid
    from recbole_vlm4rec.benchmark.report import write_report

    spec = _selected_spec(args)
    if spec is None:
        return 2
    try:
        spec.with_seeds(_parse_seeds(args.seeds))
        if args.max_epochs is not None and args.max_epochs < 1:
            raise ValueError(f"--max-epochs must be at least 1, got {args.max_epochs}")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    spec.with_max_epochs(args.max_epochs)
    print(cost_note(spec), file=sys.stderr)
    try:
        summary = run_grid(spec, args.out, rerun=args.rerun, isolation=args.isolation)
    except GridConfigError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"error: {len(error.problems)} cell setting(s) of {args.spec} cannot run; no cell "
              "was started", file=sys.stderr)
        return 2
    print(f"cells: {summary.line()}")
    if args.rerun_undertrained and not summary.interrupted:
        reruns = rerun_undertrained(spec.cells(), summary.out_dir,
                                    args.isolation or spec.isolation, spec.timeout_s,
                                    patience=args.patience, max_epochs=spec.max_epochs)
        print(f"undertrained cells rerun: {reruns.line()}")
        summary.interrupted = reruns.interrupted
        if reruns.counts.get("failed"):
            summary.counts["failed"] = summary.counts.get("failed", 0) + reruns.counts["failed"]
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
    from recbole_vlm4rec.benchmark.tune import default_out_dir, run_tune

    spec = _selected_spec(args)
    if spec is None:
        return 2
    out = args.out or default_out_dir(spec)
    try:
        trials, finals = run_tune(spec, out, isolation=args.isolation,
                                  max_trials=args.max_trials, max_minutes=args.max_minutes,
                                  rerun_undertrained=args.rerun_undertrained,
                                  patience=args.patience)
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

    from recbole_vlm4rec.benchmark.html_examples import ExampleChoiceError

    models = None
    if args.example_models:
        models = []
        for value in args.example_models:  # a label with a comma may be passed whole
            models += ([value] if "," not in value
                       else [v.strip() for v in value.split(",") if v.strip()])
    if args.example_users is not None and args.example_users < 1:
        print("error: --example-users must be at least 1", file=sys.stderr)
        return 2
    try:
        written = write_report(args.folder, models, args.example_users)
    except (FileNotFoundError, SpecError, ExampleChoiceError) as error:
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
