"""What patience (``stopping_step``) trained models need: RecBole's early stopping replayed on the
validation curves that benchmark runs record (``training.valid_curve``, run/training.py).

    python benchmarks/patience.py results/benchmarks/posters results/benchmarks/patience
    python benchmarks/patience.py FOLDER... --patience 5,10,20,30 --tolerance 0.005

Reads every ``runs/**/*.json`` record of each benchmark folder whose run trained (epochs > 1) and
prints, per run: the epochs it ran, its best validation epoch and score, the *patience needed*
(the longest stretch of validations without a better score that preceded a better one: any
patience at least this large keeps the same best epoch), and for each patience P what RecBole's
rule (a tie counts as better; stop after P + 1 validations without one) would have done on the
same curve: the epoch it stops at, the epoch it keeps and the validation score lost. A run whose
recorded patience ran out tells nothing beyond it: the needed patience is then "at least" what
was seen. Deterministic training (``reproducibility: True``, one seed) makes a shorter patience a
prefix of the recorded run, so the replay is what that run would have done.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def replay(curve: list[list[float]], patience: int) -> tuple[int, int, float]:
    """(epoch stopped at, best epoch kept, best score kept) under RecBole's early stopping."""
    best, best_epoch, since = float("-inf"), -1, 0
    for epoch, score in curve:
        if score >= best:
            best, best_epoch, since = score, int(epoch), 0
        else:
            since += 1
            if since > patience:
                return int(epoch), best_epoch, best
    return int(curve[-1][0]), best_epoch, best


def patience_needed(curve: list[list[float]]) -> int:
    """The longest run of validations without a better score that ended in a better one."""
    best, since, needed = float("-inf"), 0, 0
    for _, score in curve:
        if score >= best:
            needed, best, since = max(needed, since), score, 0
        else:
            since += 1
    return needed


def records(folders: list[str]) -> list[dict[str, Any]]:
    found = []
    for folder in folders:
        for path in sorted(Path(folder).glob("runs/**/*.json")):
            record = json.loads(path.read_text())
            training = ((record.get("result") or {}).get("training") or {})
            if record.get("status") == "ok" and training.get("valid_curve") and \
                    int(training.get("epochs") or 0) > 1:
                found.append(record)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="benchmark output folders (with runs/)")
    parser.add_argument("--patience", default="5,10,20,30",
                        help="comma-separated patiences to replay (default 5,10,20,30)")
    parser.add_argument("--tolerance", type=float, default=0.005,
                        help="relative validation loss counted as 'same' (default 0.005: 0.5%%)")
    args = parser.parse_args(argv)
    patiences = [int(p) for p in args.patience.split(",") if p.strip()]
    found = records(args.folders)
    if not found:
        print("error: no trained run with a recorded valid_curve under "
              + ", ".join(args.folders), file=sys.stderr)
        return 2
    head = ["run", "patience run", "epochs run", "best epoch", "best valid", "patience needed"]
    head += [f"P={p}: stop / kept / valid lost" for p in patiences]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    enough = {p: 0 for p in patiences}
    for record in found:
        cell, training = record["cell"], record["result"]["training"]
        curve = training["valid_curve"]
        stopped, best_epoch, best = replay(curve, 10**9)
        needed = patience_needed(curve)
        needed_text = str(needed) + (" (ran to its cap)" if training.get("capped") else "")
        row = [f"{cell['label']} ({cell['dataset']}, seed {cell['seed']})",
               str(training.get("stopping_step")), str(training["epochs_run"]), str(best_epoch),
               f"{best:.4f}", needed_text]
        for p in patiences:
            stop, kept, score = replay(curve, p)
            lost = (best - score) / best if best > 0 else 0.0
            if lost <= args.tolerance:
                enough[p] += 1
            row.append(f"{stop} / {kept} / {100 * lost:.1f}%")
        print("| " + " | ".join(row) + " |")
    print()
    for p in patiences:
        print(f"patience {p}: {enough[p]}/{len(found)} runs keep a validation score within "
              f"{100 * args.tolerance:g}% of their best")
    return 0


if __name__ == "__main__":
    sys.exit(main())
