"""End to end on the real ml-100k posters: tagger grounding, then text and image encoding.

    OMP_NUM_THREADS=2 python benchmarks/bench_posters_end_to_end.py [--limit N] [--keep DIR]

Builds a dataset folder ``ml-100k-posters`` in a temp dir (or --keep DIR): every ml-100k item from
RecBole's bundled ``ml-100k.item``, with an ``image`` column holding its poster from
../shared/data/movielens-posters/ (1,421 items) or nothing (items without a poster are a normal
case: they must be counted, not crash the run). Then runs, through the ``vlm4rec`` CLI code path:

  1. vlm4rec ground  --backend tagger            -> descriptions/tagger.jsonl
  2. vlm4rec encode  --descriptions tagger        -> features/vlm.npy    (MiniLM, 384-d)
  3. vlm4rec encode  --modality image             -> features/visual.npy (EfficientNet-Lite0)

and the same three again (everything cached), printing time, items/s, failures by reason and the
rerun times. Finally loads both features the way the dataset does and prints their coverage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench_encoding import POSTERS, quiet_cli, setup  # same folder: shared poster helpers

NAME = "ml-100k-posters"


def build_dataset(root: Path, limit: int | None) -> tuple[int, int]:
    import pandas as pd
    import recbole

    bundled = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.item"
    items = pd.read_csv(bundled, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    items.columns = [c.split(":")[0] for c in items.columns]
    posters = pd.read_csv(POSTERS / "ml100k_items_with_posters.tsv", sep="\t", dtype=str,
                          keep_default_na=False)
    path_of = {r.item_id: str(POSTERS / r.poster_path) for r in posters.itertuples() if r.poster_path}
    items["image"] = items["item_id"].map(path_of).fillna("")
    if limit:
        items = items.head(limit)
    folder = root / NAME
    folder.mkdir(parents=True, exist_ok=True)
    header = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\timage:token"
    lines = [header] + ["\t".join(r) for r in items[["item_id", "movie_title", "release_year",
                                                     "class", "image"]].itertuples(index=False)]
    (folder / f"{NAME}.item").write_text("\n".join(lines) + "\n")
    return len(items), int((items["image"] != "").sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N ml-100k items")
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not setup(args.threads):
        return 2
    import torch

    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        n_items, n_with_image = build_dataset(root, args.limit)
        folder = root / NAME
        print(f"{NAME}: {n_items} items, {n_with_image} with a poster; torch threads "
              f"{torch.get_num_threads()}; data in {root}")
        steps = {
            "ground (tagger)": ["ground", "--items", str(folder / f"{NAME}.item"),
                                "--out-dir", str(folder / "descriptions"), "--tag", "tagger",
                                "--backend", "tagger", "--device", "cpu", "--no-progress"],
            "encode vlm (MiniLM)": ["encode", NAME, "--data-path", str(root), "--descriptions",
                                    "tagger", "--device", "cpu", "--quiet"],
            "encode visual (EffNet)": ["encode", NAME, "--data-path", str(root), "--modality",
                                       "image", "--device", "cpu", "--quiet"],
        }
        first, again, outputs = {}, {}, {}
        for label, argv in steps.items():
            first[label], outputs[label] = quiet_cli(argv)
        for label, argv in steps.items():
            again[label], _ = quiet_cli(argv)
        print(f"\n{'step':<24}{'first run':>11}{'items/s':>9}{'rerun':>9}{'speed-up':>10}")
        for label in steps:
            rate = n_with_image / first[label]
            print(f"{label:<24}{first[label]:>10.1f}s{rate:>9.1f}{again[label]:>8.1f}s"
                  f"{first[label] / again[label]:>9.0f}x")
        total_first, total_again = sum(first.values()), sum(again.values())
        print(f"{'total':<24}{total_first:>10.1f}s{n_with_image / total_first:>9.1f}"
              f"{total_again:>8.1f}s{total_first / total_again:>9.0f}x")
        report(folder, outputs)
    return 0


def report(folder: Path, outputs: dict[str, str]) -> None:
    from recbole_vlm4rec.formats.features import load_feature

    rows = [json.loads(line) for line in (folder / "descriptions/tagger.jsonl").open()]
    status = Counter(r["status"] for r in rows)
    reasons = Counter(r["reason"] for r in rows if r["status"] == "failed")
    print(f"\ngrounding: {status['ok']} ok, {status['failed']} failed {dict(reasons)}")
    print("  e.g. " + next(r["text"] for r in rows if r["status"] == "ok"))
    for feature in ("vlm", "visual"):
        loaded = load_feature(folder / "features", feature)
        print(f"feature {feature}: {len(loaded.tokens)} rows x {loaded.matrix.shape[1]}; "
              f"skipped {loaded.meta['skipped_by_reason']}")
    print("\n" + outputs["ground (tagger)"].strip())


if __name__ == "__main__":
    sys.exit(main())
