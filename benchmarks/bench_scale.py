"""How cost grows with the catalogue: prepare, load, one epoch (or the fit), one full-ranking
evaluation and peak RSS per model on synthetic catalogues of 10k, 30k and 100k items.

    nice python benchmarks/bench_scale.py run --work ../scale-work          # every scale x model
    python benchmarks/bench_scale.py run --work ../scale-work --scales 10k --models LightGCN VBPR
    python benchmarks/bench_scale.py report                              # docs table + plot

Data: benchmarks/synthetic_dataset.py (seeded; power-law activity and popularity, 4096-d visual
and 384-d text features), written as an MMRec folder and turned into a dataset by ``vlm4rec
prepare mmrec`` (timed: the ``prepare`` column). A scale ``10k`` is 10,000 items, 20,000 users,
~1M interactions (100 per item); ``10k@3M`` the same catalogue with 3M interactions (60,000
users), which separates the cost of the catalogue from the cost of the interactions.

Each (scale, model) cell runs in its own subprocess, so its peak RSS (``os.wait4``) is its own:

``check``  ``prepare_run``: config checks and the memory estimate, before anything loads (a cell
           whose estimate is over the budget is recorded as refused, with the message);
``load``   RecBole's dataset, the predefined split and the data loaders;
``build``  the model's ``__init__`` (the whole fit of a model that does not train);
``epoch``  one training epoch (RecBole's ``_train_epoch``) of a model that trains;
``eval``   one full-ranking evaluation of the test split (``trainer.evaluate``).

Epoch and evaluation stop at ``--phase-limit`` seconds: the record then says how many of the
batches ran and the projected time (seconds x batches / batches run), marked as projected. A cell
that passes ``--cell-limit`` is killed and recorded as timed out, with the phase it was in. Results
are appended to ``--results`` (a JSON list, default docs/results/scale.json) as each cell ends; a
rerun skips the cells already there (``--redo`` runs them again), so an interrupted run resumes.
``report`` rewrites the table between the markers of docs/performance.md and the plot
docs/images/scale.png from that file alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results" / "scale.json"
DOC = REPO / "docs" / "performance.md"
PLOT = REPO / "docs" / "images" / "scale.png"
MODELS = ["Pop", "VLM4Rec", "LightGCN", "VBPR", "FREEDOM", "LGMRec", "SMORE", "VLM4RecHybrid",
          "VLM4RecHybrid[ease_backbone=topk]"]
SCALES = ["10k", "30k", "100k", "10k@3M"]
# The settings every model runs with: MMRec's feature pair and Baby-scale sizes (bench_models.py).
OVERRIDES = {
    "content_features": ["visual", "text"], "item_graph_weights": [0.1, 0.9],
    "default_item_feature": "text", "embedding_size": 64, "train_batch_size": 2048,
    "show_progress": False, "state": "WARNING", "gpu_id": "",
}


def parse_scale(scale: str) -> dict[str, int]:
    """``10k`` -> 10,000 items, 2 users per item, 100 interactions per item; ``10k@3M`` -> 3M
    interactions and users scaled with them (50 interactions per user either way)."""
    items_part, _, inter_part = scale.partition("@")
    n_items = _number(items_part)
    n_inter = _number(inter_part) if inter_part else 100 * n_items
    return {"items": n_items, "users": n_inter // 50, "interactions": n_inter}


def _number(text: str) -> int:
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if factor > 1 else text) * factor)


def dataset_name(scale: str) -> str:
    return "synth-" + scale.lower().replace("@", "-")


# --- one cell (runs in its own subprocess) -------------------------------------------------------
class PhaseLimit(Exception):
    pass


def emit(record: dict[str, Any]) -> None:
    """One line of the cell's progress for the parent (kept even if the cell is killed later)."""
    record["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("CELL " + json.dumps(record), flush=True)


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``VLM4RecHybrid[ease_backbone=topk]`` -> ("VLM4RecHybrid", {"ease_backbone": "topk"})."""
    import yaml

    name, _, rest = spec.partition("[")
    pairs = [p.split("=", 1) for p in rest.rstrip("]").split(",") if "=" in p]
    return name, {key: yaml.safe_load(value) for key, value in pairs}


def run_cell(spec: str, dataset: str, data_root: str, phase_limit: float,
             threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(REPO))
    from recbole.data import data_preparation
    from recbole.utils import ModelType, get_trainer, init_seed

    from recbole_vlm4rec import compat
    from recbole_vlm4rec.run.accounting import ConfigError, known_keys
    from recbole_vlm4rec.run.protocol import prepare_run
    from recbole_vlm4rec.run.runner import create_dataset

    compat.install()  # RecBole patched as in every run (scipy fixes, speed-ups, tie-safe ranking)
    model_name, extra = split_spec(spec)

    # only the keys this model reads (another model's key given on the command line is an error)
    reads = set(known_keys().general) | set(known_keys().model_keys(model_name,
                                                                    prepared_class(model_name)))
    overrides = {key: value for key, value in OVERRIDES.items() if key in reads}
    overrides.update(data_path=data_root, checkpoint_dir=f"{data_root}/saved", **extra)
    started = time.perf_counter()
    try:
        prepared = prepare_run(model_name, dataset, overrides=overrides)
    except ConfigError as error:  # the memory check's refusal is one of these
        emit({"phase": "check", "s": time.perf_counter() - started, "refused": str(error)})
        return
    config = prepared.config
    emit({"phase": "check", "s": time.perf_counter() - started,
          "notes": [n for n in prepared.notes if "memory" in n or "eval_batch_size" in n],
          "eval_batch_size": int(config["eval_batch_size"])})

    started = time.perf_counter()
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    train, _, test = data_preparation(config, data)
    emit({"phase": "load", "s": time.perf_counter() - started,
          "users": int(data.user_num - 1), "items": int(data.item_num - 1),
          "interactions": int(len(data.inter_feat))})

    started = time.perf_counter()
    model = prepared.model_class(config, train._dataset).to(config["device"])
    emit({"phase": "build", "s": time.perf_counter() - started})

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    # a model that does not train still gets RecBole's one pass (Pop counts items in it)
    epoch = timed_loop("epoch", len(train), phase_limit, lambda step: trainer._train_epoch(
        train, 0, loss_func=step(model.calculate_loss)))
    emit({**epoch, "trained": model.type != ModelType.TRADITIONAL})
    record = timed_loop("eval", len(test), phase_limit, lambda step: _evaluate(trainer, test, step))
    emit(record)


def prepared_class(model_name: str) -> type:
    from recbole_vlm4rec.models import get_model_class

    return get_model_class(model_name)


def _evaluate(trainer: Any, test: Any, step: Any) -> Any:
    trainer._full_sort_batch_eval = step(trainer._full_sort_batch_eval)
    return trainer.evaluate(test, load_best_model=False)


def timed_loop(phase: str, n_batches: int, limit: float, body: Any) -> dict[str, Any]:
    """Run ``body(step)``: ``step`` wraps the per-batch function, counting batches and raising
    PhaseLimit once ``limit`` seconds have passed (the phase's time is then projected)."""
    done = [0]
    started = time.perf_counter()

    def step(function: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if time.perf_counter() - started > limit:
                raise PhaseLimit
            done[0] += 1
            return function(*args, **kwargs)
        return counted

    result, complete = None, True
    try:
        result = body(step)
    except PhaseLimit:
        complete = False
    seconds = time.perf_counter() - started
    record: dict[str, Any] = {"phase": phase, "s": seconds, "batches": done[0],
                              "of": n_batches, "complete": complete}
    if not complete and done[0]:
        record["projected_s"] = seconds * n_batches / done[0]
    if complete and isinstance(result, dict) and "recall@20" in result:
        record["recall@20"] = float(result["recall@20"])
    return record


# --- the parent ----------------------------------------------------------------------------------
def load_results(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else []


def save_results(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, indent=1) + "\n")
    tmp.replace(path)


def store(path: Path, record: dict[str, Any]) -> None:
    records = [r for r in load_results(path)
               if (r["scale"], r["model"]) != (record["scale"], record["model"])]
    save_results(path, records + [record])


def run_child(command: list[str], limit: float, log: Path) -> tuple[list[dict], dict[str, Any]]:
    """Run ``command`` (stdout lines ``CELL {...}``), kill it at ``limit`` s; (records, outcome)."""
    started = time.perf_counter()
    records: list[dict] = []
    with open(log, "a") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, text=True,
                                   cwd=log.parent, env={**os.environ, "PYTHONPATH": str(REPO)},
                                   start_new_session=True)

        def read() -> None:
            for line in process.stdout:
                log_file.write(line)
                log_file.flush()
                if line.startswith("CELL "):
                    records.append(json.loads(line[5:]))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        killed = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if not killed and time.perf_counter() - started > limit:
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.5)
        reader.join(timeout=10)
    outcome: dict[str, Any] = {"wall_s": round(time.perf_counter() - started, 1),
                               "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3)}
    if killed:
        outcome["outcome"] = f"timed out after {limit:.0f} s"
    elif os.WIFSIGNALED(status):
        outcome["outcome"] = f"killed by signal {os.WTERMSIG(status)} (out of memory?)"
    elif os.WEXITSTATUS(status) != 0:
        outcome["outcome"] = f"failed (exit {os.WEXITSTATUS(status)}; see {log.name})"
    else:
        outcome["outcome"] = "ok"
    return records, outcome


def environment(threads: int) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from recbole_vlm4rec.run.runner import _machine, _source_commit

    return {"commit": _source_commit(), "machine": _machine(), "threads": threads,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def prepare_scale(scale: str, work: Path, results: Path, redo: bool) -> Path:
    """Generate + prepare the dataset of ``scale`` (recorded as model ``(prepare)``)."""
    name = dataset_name(scale)
    root = work / "datasets"
    done = any(r["scale"] == scale and r["model"] == "(prepare)" for r in load_results(results))
    if (root / name / "card.json").is_file() and done and not redo:
        return root
    sizes = parse_scale(scale)
    source = work / "mmrec" / name
    log = work / f"{name}-prepare.log"
    work.mkdir(parents=True, exist_ok=True)
    if not (source / "text_feat.npy").is_file():
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "synthetic_dataset.py"),
                        str(source), "--items", str(sizes["items"]), "--users",
                        str(sizes["users"]), "--interactions", str(sizes["interactions"])],
                       check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    command = [sys.executable, "-c", "import sys; from recbole_vlm4rec.cli import main; "
               "print('CELL {}'); sys.exit(main(sys.argv[1:]))", "prepare", "mmrec", str(source),
               "--name", name, "--ids", "mmrec", "--root", str(root)]
    _, outcome = run_child(command, 3600, log)
    card = json.loads((root / name / "card.json").read_text()) if outcome["outcome"] == "ok" \
        else {}
    store(results, {"scale": scale, "model": "(prepare)", **outcome,
                    "phases": {"prepare": {"s": outcome["wall_s"]}},
                    "dataset": card.get("counts", {})})
    return root


def run(args: argparse.Namespace) -> int:
    env = environment(args.threads)
    for scale in args.scales:
        root = prepare_scale(scale, args.work, args.results, args.redo)
        name = dataset_name(scale)
        card = json.loads((root / name / "card.json").read_text())["counts"]
        for model in args.models:
            done = [r for r in load_results(args.results)
                    if (r["scale"], r["model"]) == (scale, model)]
            if done and not args.redo:
                print(f"{scale} {model}: in {args.results.name} already ({done[0]['outcome']})")
                continue
            print(f"{scale} {model}: running", flush=True)
            command = [sys.executable, __file__, "cell", model, name, str(root),
                       "--phase-limit", str(args.phase_limit), "--threads", str(args.threads)]
            records, outcome = run_child(command, args.cell_limit,
                                         args.work / f"{name}-{model}.log")
            phases = {r.pop("phase"): r for r in records}
            if outcome["outcome"].startswith("timed out"):
                order = ["check", "load", "build", "epoch", "eval"]
                last = max((order.index(p) for p in phases), default=-1)
                outcome["outcome"] += f" in {order[last + 1] if last + 1 < 5 else 'eval'}"
            if phases.get("check", {}).get("refused"):
                outcome["outcome"] = "refused before loading"
            record = {"scale": scale, "model": model, **outcome, "phases": phases,
                      "dataset": card, **env, "phase_limit_s": args.phase_limit,
                      "cell_limit_s": args.cell_limit}
            store(args.results, record)
            print(f"{scale} {model}: {outcome['outcome']}, peak {outcome['peak_rss_gb']:.2f} GB, "
                  f"{outcome['wall_s']:.0f} s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="run the cells missing from --results")
    runner.add_argument("--work", type=Path, required=True,
                        help="folder for the generated data and logs (outside the repository)")
    runner.add_argument("--scales", nargs="+", default=SCALES)
    runner.add_argument("--models", nargs="+", default=MODELS)
    runner.add_argument("--results", type=Path, default=RESULTS)
    runner.add_argument("--phase-limit", type=float, default=300.0,
                        help="seconds before an epoch / evaluation stops and is projected (300)")
    runner.add_argument("--cell-limit", type=float, default=1800.0,
                        help="seconds before a cell is killed and recorded as timed out (1800)")
    runner.add_argument("--threads", type=int, default=1, help="torch threads per cell (1)")
    runner.add_argument("--redo", action="store_true", help="rerun cells already recorded")
    cell = commands.add_parser("cell", help=argparse.SUPPRESS)
    cell.add_argument("model")
    cell.add_argument("dataset")
    cell.add_argument("data_root")
    cell.add_argument("--phase-limit", type=float, default=300.0)
    cell.add_argument("--threads", type=int, default=1)
    report = commands.add_parser("report", help="rewrite docs/performance.md's table and plot")
    report.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.command == "cell":
        run_cell(args.model, args.dataset, args.data_root, args.phase_limit, args.threads)
        return 0
    if args.command == "run":
        args.work = args.work.resolve()
        if REPO in [args.work, *args.work.parents]:
            parser.error("--work must be outside the repository (it holds GBs of data)")
        return run(args)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from scale_report import write_report

    write_report(load_results(args.results), DOC, PLOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
