"""`vlm4rec prepare` on real data: time per source, and whether a second prepare is byte-identical.

    python benchmarks/bench_prepare.py [--shared ../shared/data]

Prepares, into a temporary root (dataset/ is not touched), each twice in one process:

  amazon-baby (mmrec)    ../shared/data/amazon-baby (MMRec folder, 160,792 interactions)
  ml-100k-posters        RecBole's ml-100k + ../shared/data/movielens-posters
  amazon-baby (amazon)   Amazon-2014-format dumps synthesised from the same folder (reviews JSON
                         lines with the real users/items, Python-literal meta with the real image
                         URLs; ratings/times are made up), prepared with --split mmrec: checks the
                         dump path at Baby scale and that both Amazon paths give the same tokens.

Prints seconds (first and second run), sha256-identical yes/no, and the counts.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def synthesise_dumps(mmrec: Path, out: Path) -> tuple[Path, Path]:
    import pandas as pd

    inter = pd.read_csv(mmrec / "baby.inter", sep="\t")
    users = pd.read_csv(mmrec / "u_id_mapping.csv", sep="\t").set_index("userID")["user_id"]
    items = pd.read_csv(mmrec / "i_id_mapping.csv", sep="\t").set_index("itemID")["asin"]
    urls = pd.read_csv(mmrec / "baby_url.csv", keep_default_na=False)
    reviews, meta = out / "reviews_Baby_5.json.gz", out / "meta_Baby.json.gz"
    with gzip.open(reviews, "wt") as handle:
        for n, (u, i) in enumerate(zip(inter["userID"], inter["itemID"])):
            handle.write(json.dumps({"reviewerID": users[u], "asin": items[i],
                                     "overall": float(1 + n % 5),
                                     "unixReviewTime": 1_300_000_000 + 3600 * n}) + "\n")
    with gzip.open(meta, "wt") as handle:
        for asin, url in zip(urls["asin"], urls["imUrl"]):
            record = {"asin": asin, "title": f"Baby item {asin}", "categories": [["Baby"]]}
            if url:
                record["imUrl"] = url
            handle.write(repr(record) + "\n")
    return reviews, meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args()
    shared = Path(args.shared)
    from recbole_vlm4rec import cli

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root, configs = Path(tmp) / "datasets", Path(tmp) / "configs"
        common = ["--root", str(root), "--config-dir", str(configs)]
        reviews, meta = synthesise_dumps(shared / "amazon-baby", Path(tmp))
        jobs = [
            ("amazon-baby (mmrec)", "amazon-baby",
             ["prepare", "mmrec", str(shared / "amazon-baby"), "--name", "amazon-baby"]),
            ("ml-100k-posters", "ml-100k-posters",
             ["prepare", "ml-100k-posters", "--posters", str(shared / "movielens-posters")]),
            ("amazon-baby (amazon dumps)", "baby-from-dumps",
             ["prepare", "amazon", "--reviews", str(reviews), "--meta", str(meta), "--name",
              "baby-from-dumps", "--split", "mmrec"]),
        ]
        for label, name, argv in jobs:
            seconds, digests = [], []
            for _ in range(2):
                started = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    code = cli.main(argv + common)
                seconds.append(time.perf_counter() - started)
                if code != 0:
                    print(f"{label}: prepare failed with exit code {code}")
                    return 1
                digests.append(tree_digest(root / name))
            card = json.loads((root / name / "card.json").read_text())
            rows.append((label, seconds, digests[0] == digests[1], card))
        same_tokens = (
            (root / "amazon-baby" / "amazon-baby.item").read_text().splitlines()[1:]
            and sorted(line.split("\t")[0] for line in
                       (root / "amazon-baby" / "amazon-baby.item").read_text().splitlines()[1:])
            == sorted(line.split("\t")[0] for line in
                      (root / "baby-from-dumps" / "baby-from-dumps.item")
                      .read_text().splitlines()[1:]))

    print(f"{'source':<28} {'1st s':>6} {'2nd s':>6} {'identical':>9}  users/items/inters   "
          "train/valid/test")
    for label, seconds, identical, card in rows:
        counts, split = card["counts"], card["split"]
        sizes = "/".join(str(split.get(p, "-")) for p in ("train", "valid", "test"))
        print(f"{label:<28} {seconds[0]:>6.2f} {seconds[1]:>6.2f} {str(identical):>9}  "
              f"{counts['users']}/{counts['items']}/{counts['interactions']}   {sizes}")
    print(f"amazon dumps and MMRec folder give the same item tokens: {bool(same_tokens)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
