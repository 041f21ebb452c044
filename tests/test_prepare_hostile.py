"""Every table value checked at the door, for the catalogue, MMRec and Amazon sources alike.

Each hostile value (NaN / infinite / overflowing numbers, out-of-range timestamps, control
characters in ids, over-long lines, fields and ids, JSON values of the wrong type) is refused on
its own line and counted on the dataset card under its key with a ``file:line`` example; a file
with nothing usable left is refused whole with one line (exit 2). Never a traceback, never a
Python repr written as an id or as item text. All fixtures are written here.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from recbole_vlm4rec import cli
from recbole_vlm4rec.data.prepare import values
from recbole_vlm4rec.data.prepare.amazon import prepare_amazon
from recbole_vlm4rec.data.prepare.catalogue import prepare_catalogue
from recbole_vlm4rec.data.prepare.mmrec import prepare_mmrec_folder
from recbole_vlm4rec.data.prepare.prepared import PrepareError

NON_FINITE, OUT_OF_RANGE, CONTROL = values.NON_FINITE, values.OUT_OF_RANGE, values.CONTROL
OVER_LONG, WRONG_TYPE = values.OVER_LONG, values.WRONG_TYPE
BIG = 10 ** 400  # a JSON integer that no float holds

# (case, user, item, rating, timestamp, counter): one hostile value in an otherwise good line
TABLE_CASES = [
    ("nan rating", "u1", "i1", "nan", "5", NON_FINITE),
    ("NaN rating", "u1", "i1", "NaN", "5", NON_FINITE),
    ("inf rating", "u1", "i1", "inf", "5", NON_FINITE),
    ("-inf rating", "u1", "i1", "-inf", "5", NON_FINITE),
    ("1e400 rating", "u1", "i1", "1e400", "5", NON_FINITE),
    ("400-digit rating", "u1", "i1", "9" * 400, "5", NON_FINITE),
    ("beyond float32", "u1", "i1", "1e39", "5", NON_FINITE),
    ("inf timestamp", "u1", "i1", "4", "inf", NON_FINITE),
    ("negative timestamp", "u1", "i1", "4", "-1e12", OUT_OF_RANGE),
    ("far-future timestamp", "u1", "i1", "4", "1e15", OUT_OF_RANGE),
    ("NUL in user id", "u\x001", "i1", "4", "5", CONTROL),
    ("escape in item id", "u1", "i\x1b[31m", "4", "5", CONTROL),
    ("DEL in item id", "u1", "i\x7f", "4", "5", CONTROL),
    ("line separator in user id", "u\u20281", "i1", "4", "5", CONTROL),
    ("over-long user id", "u" * 300, "i1", "4", "5", OVER_LONG),
]


def write_table(path: Path, separator: str, hostile: tuple[str, ...] | None) -> int:
    """A 4-user x 3-item interactions table; the hostile row (if any) is last. Returns its line."""
    rows = [("userId", "movieId", "rating", "timestamp")]
    rows += [(f"u{u}", f"i{i}", "4", str(100 + u)) for u in range(4) for i in range(3)]
    if hostile:
        rows.append(hostile)
    path.write_text("".join(separator.join(row) + "\n" for row in rows), encoding="utf-8")
    return len(rows)


def assert_refused_once(prepared, key: str, where: str) -> None:
    """``key`` counted once with ``where`` as its example; nothing else refused; the 12 good
    interactions kept, with only the good ids."""
    assert prepared.counters.get(key) == 1, prepared.counters
    assert f"{where}: " in prepared.reasons[key]
    others = {k for k in prepared.counters if k in values.REASONS or k.startswith("malformed")}
    assert others == {key}, prepared.counters
    assert len(prepared.inter) == 12
    assert set(prepared.inter["user_id"]) == {f"u{u}" for u in range(4)}


@pytest.mark.parametrize("separator", [",", "\t"], ids=["csv", "tsv"])
@pytest.mark.parametrize("case, user, item, rating, stamp, key", TABLE_CASES,
                         ids=[case[0] for case in TABLE_CASES])
def test_catalogue_refuses_each_hostile_value_on_its_line(tmp_path, separator, case, user, item,
                                                          rating, stamp, key):
    path = tmp_path / ("r.csv" if separator == "," else "r.tsv")
    line = write_table(path, separator, (user, item, rating, stamp))
    prepared = prepare_catalogue(path, "shop")
    assert_refused_once(prepared, key, f"{path}:{line}")


@pytest.mark.parametrize("case, user, item, rating, stamp, key",
                         [c for c in TABLE_CASES if c[-1] != OVER_LONG],
                         ids=[c[0] for c in TABLE_CASES if c[-1] != OVER_LONG])
def test_mmrec_refuses_each_hostile_value_on_its_line(tmp_path, case, user, item, rating, stamp,
                                                      key):
    """The same values through an MMRec folder; ids in the raw-id mapping files."""
    folder = tmp_path / "mm"
    folder.mkdir()
    lines = ["userID\titemID\trating\ttimestamp\tx_label"]
    lines += [f"{u}\t{i}\t4\t{100 + u}\t{0 if i else 1}" for u in range(4) for i in range(3)]
    mapping_users = [f"u{u}\t{u}" for u in range(4)]
    mapping_items = [f"i{i}\t{i}" for i in range(3)]
    if user != "u1":  # the hostile raw id is a fifth user's
        mapping_users.append(f"{user}\t4")
        lines.append("4\t1\t4\t5\t0")
        hostile_file, hostile_line = folder / "u_id_mapping.csv", 6
    elif item != "i1":
        mapping_items.append(f"{item}\t3")
        lines.append("1\t3\t4\t5\t0")
        hostile_file, hostile_line = folder / "i_id_mapping.csv", 5
    else:
        lines.append(f"1\t1\t{rating}\t{stamp}\t0")
        hostile_file, hostile_line = folder / "x.inter", 14
    (folder / "x.inter").write_text("\n".join(lines) + "\n")
    (folder / "u_id_mapping.csv").write_text("user_id\tuserID\n" + "\n".join(mapping_users) + "\n")
    (folder / "i_id_mapping.csv").write_text("asin\titemID\n" + "\n".join(mapping_items) + "\n")
    where = f"{hostile_file}:{hostile_line}"
    if hostile_file.name == "x.inter":
        assert_refused_once(prepare_mmrec_folder(folder, "mm"), key, where)
        return
    # a refused raw id leaves its MMRec id unmapped: the import is refused, saying why
    with pytest.raises(PrepareError, match="use --ids mmrec") as error:
        prepare_mmrec_folder(folder, "mm")
    assert f"lines of it refused: {where}: " in str(error.value)
    assert "\n" not in str(error.value) and "\x00" not in str(error.value)
    prepared = prepare_mmrec_folder(folder, "mm", ids="mmrec")  # MMRec's integers still work
    assert len(prepared.inter) == 13
    if hostile_file.name == "i_id_mapping.csv":  # read for the asin column; users' is not read
        assert prepared.counters[key] == 1 and f"{where}: " in prepared.reasons[key]
        assert prepared.items.set_index("item_id").loc["3", "asin"] == ""


@pytest.mark.parametrize("value, key", [
    ("-1", "malformed_lines"), ("1_000", "malformed_lines"), ("\u0663", "malformed_lines"),
    ("9" * 400, OUT_OF_RANGE), ("", "malformed_lines")])
def test_mmrec_ids_are_plain_row_numbers(tmp_path, value, key):
    """A negative id would index a feature row from the end; 400 digits overflow an index."""
    folder = tmp_path / "mm"
    folder.mkdir()
    lines = ["userID\titemID\tx_label"] + [f"{u}\t{i}\t{0 if i else 1}" for u in range(4)
                                           for i in range(3)] + [f"1\t{value}\t0"]
    (folder / "x.inter").write_text("\n".join(lines) + "\n")
    prepared = prepare_mmrec_folder(folder, "mm")
    assert prepared.counters[key] == 1 and "x.inter:14: " in prepared.reasons[key]
    assert sorted(set(prepared.inter["item_id"])) == ["0", "1", "2"]


def test_a_50_mb_csv_line_and_a_52_million_character_tsv_id_are_one_refused_line(tmp_path):
    """No ``_csv.Error`` traceback, no id of 52 million characters; the line is never held whole."""
    csv_path, tsv_path = tmp_path / "r.csv", tmp_path / "r.tsv"
    line = write_table(csv_path, ",", ("u1", "x" * 50_000_000, "4", "5"))
    prepared = prepare_catalogue(csv_path, "shop")
    assert_refused_once(prepared, OVER_LONG, f"{csv_path}:{line}")
    assert "line of 50,000,0" in prepared.reasons[OVER_LONG]
    line = write_table(tsv_path, "\t", ("u1", "i" * 52_000_000, "4", "5"))
    prepared = prepare_catalogue(tsv_path, "shop")
    assert_refused_once(prepared, OVER_LONG, f"{tsv_path}:{line}")
    assert max(len(reason) for reason in prepared.reasons.values()) < 2000


def test_a_csv_field_over_the_csv_limit_is_refused_not_a_traceback(tmp_path):
    path = tmp_path / "r.csv"
    line = write_table(path, ",", ("u1", "i" * 200_000, "4", "5"))  # under the line limit
    prepared = prepare_catalogue(path, "shop")
    assert_refused_once(prepared, OVER_LONG, f"{path}:{line}")
    assert "field larger than field limit" in prepared.reasons[OVER_LONG]


def test_items_table_values_are_checked_too(tmp_path):
    inter = tmp_path / "r.csv"
    write_table(inter, ",", None)
    items = tmp_path / "items.csv"
    items.write_text("movieId,title,image\n"
                     "i0,Zero\x00with a NUL,i0.jpg\n"  # control characters in text: spaces
                     "i1\x00,One,i1.jpg\n"  # control character in the id: row refused
                     "i2,Two,http://img.example/\x1b.jpg\n")  # in the image reference: left empty
    prepared = prepare_catalogue(inter, "shop", items=items)
    table = prepared.items.set_index("item_id")
    assert table.loc["i0", "title"] == "Zero with a NUL"
    assert table.loc["i1", "title"] == ""  # kept, with empty text (items_without_metadata)
    assert table.loc["i2", "image"] == "" and table.loc["i2", "title"] == "Two"
    assert prepared.counters[CONTROL] == 2
    assert f"{items}:3: " in prepared.reasons[CONTROL]
    assert f"{items}:4: image " in prepared.reasons[CONTROL] and "(left empty)" in prepared.reasons[
        CONTROL]


def test_mmrec_url_file_references_are_checked(tmp_path):
    folder = tmp_path / "mm"
    folder.mkdir()
    (folder / "x.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n0\t1\t1\n0\t2\t2\n")
    (folder / "x_url.csv").write_text("itemID,asin,imUrl\n0,A,http://a/0.jpg\n"
                                      "1,B,http://a/\x00.jpg\n2,C,http://a/2.jpg\n")
    prepared = prepare_mmrec_folder(folder, "mm", ids="mmrec")
    assert list(prepared.items["image"]) == ["http://a/0.jpg", "", "http://a/2.jpg"]
    assert prepared.counters[CONTROL] == 1 and "x_url.csv:3: " in prepared.reasons[CONTROL]


def test_mmrec_feature_rows_that_are_not_finite_are_left_out(tmp_path, capsys):
    """Was a FeatureFileError traceback when the folder was written."""
    import numpy as np

    folder = tmp_path / "mm"
    folder.mkdir()
    (folder / "x.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n0\t1\t1\n0\t2\t2\n")
    visual = np.ones((3, 4))
    visual[1, 2] = np.nan
    text = np.ones((3, 2))
    text[2, 0] = 1e300  # finite as float64, infinite as float32
    np.save(folder / "image_feat.npy", visual)
    np.save(folder / "text_feat.npy", text)
    root = tmp_path / "datasets"
    assert cli.main(["prepare", "mmrec", str(folder), "--name", "mm", "--root", str(root)]) == 0
    card = json.loads((root / "mm" / "card.json").read_text())
    assert card["features"]["visual"]["items_covered"] == 2
    assert card["features"]["text"]["items_covered"] == 2
    assert card["counters"][NON_FINITE]["count"] == 2
    assert "image_feat.npy:row 1: visual vector of item 1" in card["counters"][NON_FINITE]["reason"]
    np.save(folder / "text_feat.npy", np.full((3, 2), np.inf))
    assert cli.main(["prepare", "mmrec", str(folder), "--name", "mm", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "text_feat.npy: no row of the dataset's items is finite" in err
    assert "Traceback" not in err


def review(user="U1", asin="B1", overall=4.0, stamp=1_300_000_000) -> str:
    return json.dumps({"reviewerID": user, "asin": asin, "overall": overall,
                       "unixReviewTime": stamp})


GOOD_REVIEWS = [review(f"U{u}", f"B{i}", 1.0 + (u + i) % 5, 1_300_000_000 + i)
                for u in range(4) for i in range(3)]
REVIEW_CASES = [
    ("reviewerID object", {"user": {"id": "U9"}}, WRONG_TYPE),
    ("reviewerID list", {"user": ["U9"]}, WRONG_TYPE),
    ("reviewerID boolean", {"user": True}, WRONG_TYPE),
    ("asin object", {"asin": {"id": "B9"}}, WRONG_TYPE),
    ("asin list", {"asin": ["B9"]}, WRONG_TYPE),
    ("asin boolean", {"asin": False}, WRONG_TYPE),
    ("overall boolean", {"overall": True}, WRONG_TYPE),
    ("overall object", {"overall": {"v": 4}}, WRONG_TYPE),
    ("400-digit overall", {"overall": BIG}, NON_FINITE),
    ("400-digit unixReviewTime", {"stamp": BIG}, NON_FINITE),
    ("1e400 overall", {"overall": "1e400"}, NON_FINITE),
    ("negative unixReviewTime", {"stamp": -10 ** 12}, OUT_OF_RANGE),
    ("far-future unixReviewTime", {"stamp": 10 ** 15}, OUT_OF_RANGE),
    ("NUL in reviewerID", {"user": "U\x009"}, CONTROL),
    ("lone surrogate in asin", {"asin": "B\ud800"}, CONTROL),
    ("over-long reviewerID", {"user": "U" * 300}, OVER_LONG),
]


@pytest.mark.parametrize("case, fields, key", REVIEW_CASES, ids=[c[0] for c in REVIEW_CASES])
def test_amazon_refuses_each_hostile_review_value(tmp_path, case, fields, key):
    path = tmp_path / "reviews.json.gz"
    hostile = review(fields.get("user", "U9"), fields.get("asin", "B1"),
                     fields.get("overall", 4.0), fields.get("stamp", 1_300_000_000))
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(GOOD_REVIEWS + [hostile]) + "\n")
    prepared = prepare_amazon(path, None, "toy", split="recbole")
    assert prepared.counters.get(key) == 1, prepared.counters
    assert f"{path}:13: " in prepared.reasons[key]
    assert set(prepared.counters) & (set(values.REASONS) | {"malformed_review_lines"}) == {key}
    assert len(prepared.inter) == 12
    assert set(prepared.inter["user_id"]) == {f"U{u}" for u in range(4)}
    assert set(prepared.inter["item_id"]) == {f"B{i}" for i in range(3)}


def test_amazon_meta_values_of_the_wrong_type_are_left_empty_and_counted(tmp_path):
    reviews, meta = tmp_path / "reviews.json", tmp_path / "meta.json"
    reviews.write_text("\n".join(GOOD_REVIEWS) + "\n")
    meta.write_text("\n".join([
        repr({"asin": "B0", "title": {"en": "Crib"}, "brand": "Acme", "price": BIG,
              "imUrl": "http://img.example/0.jpg"}),
        repr({"asin": "B1", "title": "Bib", "categories": [["Baby", {"x": 1}]], "price": True,
              "imUrl": ["http://img.example/1.jpg"], "description": ["Soft,", "warm."]}),
        json.dumps({"asin": "B2", "title": "Mat\ud800", "price": "$1,299.50",
                    "brand": False}),
        repr({"asin": {"id": "B2"}, "title": "an object as asin"}),
    ]) + "\n")
    prepared = prepare_amazon(reviews, meta, "toy", split="recbole")
    items = prepared.items.set_index("item_id")
    assert items.loc["B0", "title"] == "" and items.loc["B0", "brand"] == "Acme"
    assert items.loc["B0", "image"] == "http://img.example/0.jpg" and items.loc["B0", "price"] == ""
    assert items.loc["B1", "categories"] == "" and items.loc["B1", "image"] == ""
    assert items.loc["B1", "description"] == "Soft, warm." and items.loc["B1", "price"] == ""
    assert items.loc["B2", "title"] == "Mat\ufffd" and items.loc["B2", "price"] == 1299.5
    assert prepared.counters[WRONG_TYPE] == 6  # title, categories, price, imUrl, brand, asin
    assert prepared.counters[NON_FINITE] == 1  # the 400-digit price
    reasons = prepared.reasons[WRONG_TYPE]
    assert f"{meta}:1: title is an object" in reasons and "(left empty)" in reasons
    assert f"{meta}:1: price " in prepared.reasons[NON_FINITE]
    written = "\n".join(str(v) for v in items.to_numpy().ravel())
    assert "{'en'" not in written and "{'x'" not in written and "[" not in written


def test_cli_counts_on_the_card_and_refuses_an_unusable_file_in_one_line(tmp_path, capsys):
    root = tmp_path / "datasets"
    reviews = tmp_path / "reviews.json"
    reviews.write_text("\n".join(GOOD_REVIEWS + [
        review(user={"id": "U9"}), review(overall=BIG), review(stamp=-10 ** 12),
        review(user="U\x00"), "{" + '"a": 1, ' * 200_000 + "}"]) + "\n")
    argv = ["prepare", "amazon", "--reviews", str(reviews), "--name", "toy", "--split", "recbole",
            "--root", str(root), "--config-dir", str(tmp_path / "cfg")]
    assert cli.main(argv) == 0
    card = json.loads((root / "toy" / "card.json").read_text())
    counters = card["counters"]
    assert {key: counters[key]["count"] for key in values.REASONS if key in counters} == {
        WRONG_TYPE: 1, NON_FINITE: 1, OUT_OF_RANGE: 1, CONTROL: 1, OVER_LONG: 1}
    assert f"{reviews}:17: line of " in counters[OVER_LONG]["reason"]
    assert "| wrong_json_types | 1 |" in (root / "toy" / "CARD.md").read_text()
    inter = (root / "toy" / "toy.inter").read_text()
    assert "{" not in inter and "\x00" not in inter and len(inter.splitlines()) == 13
    out = capsys.readouterr().out
    assert "wrong_json_types: 1" in out

    reviews.write_text("\n".join([review(user=["U1"]), review(overall=float("nan")),
                                  review(stamp=-1)]) + "\n")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{reviews}: no valid review lines (line 1: reviewerID is a list" in err
    assert "line 2: overall nan is not finite" in err


@pytest.mark.parametrize("source", ["catalogue", "mmrec"])
def test_unusable_tables_are_refused_whole_in_one_line(tmp_path, capsys, source):
    folder = tmp_path / "in"
    folder.mkdir()
    if source == "catalogue":
        path = folder / "r.csv"
        path.write_text("user,item,rating\nu\x001,i1,4\nu2,i2,nan\nu3,i3,1e400\n")
        argv = ["catalogue", "--interactions", str(path)]
    else:
        path = folder / "x.inter"
        path.write_text("userID\titemID\trating\tx_label\n-1\t0\t4\t0\n0\t0\tinf\t0\n")
        argv = ["mmrec", str(folder)]
    assert cli.main(["prepare", *argv, "--name", "x", "--root", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: no valid interaction lines (line 2: ")
    assert err.count("\n") == 1 and "\x00" not in err and "Traceback" not in err
    assert not (tmp_path / "d" / "x").exists()


def test_an_over_long_or_undecodable_header_refuses_the_file(tmp_path):
    path = tmp_path / "r.tsv"
    path.write_text("user\t" + "x" * (values.MAX_LINE_BYTES + 10) + "\nu1\ti1\n")
    with pytest.raises(PrepareError, match=r"r.tsv:1: header line refused: line of 1,048,5"):
        prepare_catalogue(path, "x")
    path.write_bytes(b"user\titem\xff\nu1\ti1\n")
    with pytest.raises(PrepareError, match=r"r.tsv:1: header line refused: not utf-8"):
        prepare_catalogue(path, "x")


def test_an_unknown_encoding_is_one_line(tmp_path, capsys):
    path = tmp_path / "r.csv"
    write_table(path, ",", None)
    assert cli.main(["prepare", "catalogue", "--interactions", str(path), "--name", "x",
                     "--encoding", "klingon", "--root", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err == (
        "error: unknown --encoding 'klingon' (e.g. utf-8, latin-1, cp1252)\n")


def test_the_checks_one_by_one():
    assert values.check_id(" B00 ", "asin") == "B00" and values.check_id(123, "asin") == "123"
    assert values.check_number(" 4.5 ", "rating") == 4.5 and values.check_number(3, "r") == 3.0
    assert values.check_timestamp("0", "t") == 0 and values.check_timestamp(
        values.TIMESTAMP_MAX, "t") == values.TIMESTAMP_MAX
    for value, key in [(None, None), ("", None), ({"a": 1}, WRONG_TYPE), (1.5, WRONG_TYPE),
                       ("a\tb", CONTROL), ("a" * 257, OVER_LONG)]:
        with pytest.raises(ValueError) as error:
            values.check_id(value, "asin")
        assert getattr(error.value, "key", None) == key
    for value, key in [("four", None), (True, WRONG_TYPE), ([4], WRONG_TYPE), (BIG, NON_FINITE),
                       (float("nan"), NON_FINITE), ("-1e39", NON_FINITE)]:
        with pytest.raises(ValueError) as error:
            values.check_number(value, "rating")
        assert getattr(error.value, "key", None) == key
    assert values.clean_text("a\x00b\u2028c\x85d\ud800") == "a b c d\ufffd"
    assert values.json_text(["a", "b"], "d") == "a b" and values.json_text(7, "d") == "7"
    with pytest.raises(values.BadValue):
        values.json_text([["nested"]], "description")
    assert len(values.show("x" * 10_000)) < 80


def test_prepare_modules_import_one_another_without_a_cycle():
    """Issue 21: output -> card -> prepared, never back (the layer test cannot see inside a
    stage). Every import counts, module-level or inside a function."""
    from test_architecture import PACKAGE, imports_of

    folder = PACKAGE / "data" / "prepare"
    prefix = "recbole_vlm4rec.data.prepare."
    # imports_of also yields `module.name` for `from module import name`: keep the modules
    graph = {path.stem: {imported[len(prefix):] for _, imported in imports_of(path)
                         if imported.startswith(prefix)
                         and (folder / f"{imported[len(prefix):]}.py").is_file()}
             for path in folder.glob("*.py")}
    assert graph["card"] == {"prepared"} and "card" in graph["output"]
    visiting, done = [], set()

    def visit(module: str) -> None:
        assert module not in visiting, f"import cycle: {' -> '.join(visiting + [module])}"
        if module in done:
            return
        visiting.append(module)
        for target in sorted(graph.get(module, ())):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
