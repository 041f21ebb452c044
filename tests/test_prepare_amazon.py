"""`vlm4rec prepare amazon`: 2014 review JSON lines + Python-literal metadata."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from recbole_vlm4rec import cli
from recbole_vlm4rec.data.prepare.amazon import parse_record, prepare_amazon
from recbole_vlm4rec.data.prepare.prepared import PrepareError
from recbole_vlm4rec.formats.items import read_atomic_item_file


def write_dumps(folder: Path, n_users: int = 12, n_items: int = 6) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    reviews = []
    for user in range(n_users):
        for item in range(n_items):
            if (user + item) % 5 == 4:
                continue
            reviews.append(json.dumps({
                "reviewerID": f"R{user}", "asin": f"B{item:03d}", "overall": 1.0 + (user + item) % 5,
                "unixReviewTime": 1_300_000_000 + 1000 * item, "reviewText": "great\tstuff\n",
            }))
    reviews.insert(3, '{"reviewerID": "R1", "asin": ')  # truncated JSON
    reviews.insert(5, json.dumps({"reviewerID": "R2", "asin": "B000"}))  # no rating
    # R0 reviewed B000 again, later: the earlier review (rating 1) is kept.
    reviews.append(json.dumps({"reviewerID": "R0", "asin": "B000", "overall": 5.0,
                               "unixReviewTime": 1_400_000_000}))
    meta = [
        repr({"asin": "B000", "title": "Soft\tblanket\nfor babies", "brand": "Acme",
              "categories": [["Baby", "Nursery"], ["Baby", "Bedding"]], "price": 12.5,
              "imUrl": "http://img.example/B000.jpg", "description": "Warm, 'cosy' & soft."}),
        json.dumps({"asin": "B001", "title": "JSON line", "imUrl": "http://img.example/1.jpg"}),
        "{'asin': 'B002', 'title': __import__('os').getcwd()}",  # code, not a literal
        repr({"asin": "B003", "title": "No image", "salesRank": {"Baby": 3}}),
        "{'asin': 'B004', 'title': 'broken",
        repr({"asin": "B999", "title": "never reviewed"}),
    ]
    reviews_path, meta_path = folder / "reviews_Toy_5.json.gz", folder / "meta_Toy.json.gz"
    with gzip.open(reviews_path, "wt") as handle:
        handle.write("\n".join(reviews) + "\n")
    with gzip.open(meta_path, "wt") as handle:
        handle.write("\n".join(meta) + "\n")
    return {"reviews": reviews_path, "meta": meta_path}


def test_parse_record_is_literal_only():
    assert parse_record("{'a': [1, 'x'], 'b': None}") == {"a": [1, "x"], "b": None}
    assert parse_record('{"a": true}') == {"a": True}
    for text in ("{'a': __import__('os').system('true')}", "[1, 2]", "{'a': 1"):
        with pytest.raises(ValueError):
            parse_record(text)


def test_reviews_and_meta_become_items_with_counted_problems(tmp_path):
    files = write_dumps(tmp_path)
    prepared = prepare_amazon(files["reviews"], files["meta"], "toy", split="recbole")
    inter = prepared.inter
    assert list(inter.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert inter.loc[(inter.user_id == "R0") & (inter.item_id == "B000"), "rating"].item() == 1.0
    counters = prepared.counters
    assert counters["duplicate_interactions"] == 1
    assert counters["malformed_review_lines"] == 2 and counters["malformed_meta_lines"] == 2
    assert "reviews_Toy_5.json.gz:4" in prepared.reasons["malformed_review_lines"]
    assert "meta_Toy.json.gz:3" in prepared.reasons["malformed_meta_lines"]
    assert "reviews_Toy_5" not in prepared.reasons["malformed_meta_lines"]
    assert counters["items_without_metadata"] == 3  # B002 and B004 broken, B005 absent
    items = prepared.items.set_index("item_id")
    assert items.loc["B000", "title"] == "Soft blanket for babies"
    assert items.loc["B000", "categories"] == "Baby | Nursery | Bedding"
    assert items.loc["B003", "image"] == "" and items.loc["B001", "image"].startswith("http://")


def test_hostile_lines_are_counted_per_file_and_skipped(tmp_path):
    """A line nested 100,000 deep, NaN / infinite numbers, a review without asin, meta lines
    without asin or repeating one: each skipped and counted with its file:line, none crashes."""
    files = write_dumps(tmp_path)
    with gzip.open(files["reviews"], "at") as handle:
        handle.write("[" * 100_000 + "\n")
        handle.write('{"reviewerID": "R1", "asin": "B001", "overall": NaN, "unixReviewTime": 1}\n')
        handle.write('{"reviewerID": "R2", "asin": "B001", "overall": 4, "unixReviewTime": Infinity}\n')
        handle.write('{"reviewerID": "R3", "asin": "B001", "overall": "nan", "unixReviewTime": 1}\n')
        handle.write('{"reviewerID": "R3", "overall": 4, "unixReviewTime": 1}\n')
        handle.write('{"reviewerID": "R3", "asin": " ", "overall": 4, "unixReviewTime": 1}\n')
        handle.write('{"reviewerID": "R3", "asin": "B001", "overall": [4], "unixReviewTime": 1}\n')
    with gzip.open(files["meta"], "at") as handle:
        handle.write("{'a': " * 50_000 + "\n")
        handle.write(repr({"asin": "B000", "title": "second line for B000"}) + "\n")
        handle.write(repr({"title": "no asin at all"}) + "\n")
    prepared = prepare_amazon(files["reviews"], files["meta"], "toy", split="recbole")
    counters, reasons = prepared.counters, prepared.reasons
    assert counters["malformed_review_lines"] == 2 + 3  # nested, no asin, blank asin
    assert counters["wrong_json_types"] == 1  # a list as rating
    assert counters["non_finite_values"] == 3
    assert counters["malformed_meta_lines"] == 2 + 2 and counters["duplicate_meta_lines"] == 1
    review_reasons = reasons["malformed_review_lines"]
    assert "meta_Toy.json.gz:7: " in reasons["malformed_meta_lines"]
    assert "meta_Toy.json.gz:9: no asin" in reasons["malformed_meta_lines"]
    assert "reviews_Toy_5.json.gz:62: nested too deeply" in review_reasons and "invalid id" not in review_reasons
    assert "meta_Toy.json.gz:8: asin B000 already on line 1" in reasons["duplicate_meta_lines"]
    assert prepared.items.set_index("item_id").loc["B000", "title"] == "Soft blanket for babies"
    inter = prepared.inter
    assert inter["rating"].notna().all() and np.isfinite(inter[["rating", "timestamp"]].to_numpy()).all()


def test_review_line_problems_name_the_field(tmp_path):
    reviews = tmp_path / "r.json"
    lines = ['{"reviewerID": "R1", "overall": 4, "unixReviewTime": 1}',
             '{"reviewerID": "R1", "asin": "", "overall": 4, "unixReviewTime": 1}',
             '{"reviewerID": "R1", "asin": "B1", "overall": "four", "unixReviewTime": 1}',
             "[" * 100_000,
             '{"reviewerID": "R1", "asin": "B1", "overall": 4, "unixReviewTime": 1}']
    reviews.write_text("\n".join(lines) + "\n")
    prepared = prepare_amazon(reviews, None, "x", split="recbole")
    examples = prepared.reasons["malformed_review_lines"]
    assert "r.json:1: no asin" in examples and "r.json:2: empty asin" in examples
    assert "r.json:3: overall 'four' is not a number" in examples and "r.json:4: nested too deeply" in examples


def test_mmrec_split_cli_is_byte_identical_and_atomic(tmp_path, monkeypatch):
    files = write_dumps(tmp_path / "raw", n_users=30, n_items=14)
    root = tmp_path / "datasets"
    argv = ["prepare", "amazon", "--reviews", str(files["reviews"]), "--meta", str(files["meta"]),
            "--name", "toy", "--k-core", "5", "--root", str(root), "--config-dir",
            str(tmp_path / "cfg")]
    assert cli.main(argv) == 0
    folder = root / "toy"
    snapshot = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert {"toy.train.inter", "toy.valid.inter", "toy.test.inter", "toy.item", "card.json",
            "CARD.md"} <= set(snapshot)
    header = snapshot["toy.item"].decode().splitlines()[0]
    assert header == ("item_id:token\ttitle:token_seq\tbrand:token_seq\tcategories:token_seq\t"
                      "description:token_seq\tprice:float\timage:token")
    card = json.loads(snapshot["card.json"])
    assert card["command"].startswith("vlm4rec prepare amazon --name toy --k-core 5 --meta /")
    assert card["command"].endswith("--seed 2024 --split mmrec")
    assert card["split"]["train"] > card["split"]["valid"] > 0
    assert read_atomic_item_file(folder / "toy.item").shape[0] == card["counts"]["items"]

    assert cli.main(argv) == 0  # the same command again: identical bytes
    assert {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == snapshot

    # A prepare that dies half-way leaves the previous dataset untouched and no staging folder.
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("recbole_vlm4rec.data.prepare.output.write_card", ctrl_c)
    assert cli.main(argv[:-4] + ["--seed", "9", *argv[-4:]]) == 130
    assert {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == snapshot
    assert [p.name for p in root.iterdir()] == ["toy"]
    # A prepare killed outright (no cleanup ran) leaves a staging folder: the next one removes it.
    (root / ".toy.preparing-999999999").mkdir()
    monkeypatch.undo()
    assert cli.main(argv) == 0
    assert [p.name for p in root.iterdir()] == ["toy"]


def test_missing_inputs_are_clear_errors(tmp_path, capsys):
    with pytest.raises(PrepareError, match="file not found"):
        prepare_amazon(tmp_path / "nope.json.gz", None, "x")
    (tmp_path / "r.json").write_text("not json\n")
    assert cli.main(["prepare", "amazon", "--reviews", str(tmp_path / "r.json"), "--name", "x",
                     "--root", str(tmp_path)]) == 2
    assert "r.json: no valid review lines" in capsys.readouterr().err
