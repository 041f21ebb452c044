"""`vlm4rec prepare catalogue` and `ml-100k-posters`: tables + images become a dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recbole_vlm4rec import cli
from recbole_vlm4rec.data.prepare.catalogue import prepare_catalogue, prepare_ml100k_posters
from recbole_vlm4rec.data.prepare.prepared import PrepareError
from recbole_vlm4rec.formats.items import read_atomic_item_file


def write_catalogue(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    images = folder / "img"
    images.mkdir()
    for name in ("a.jpg", "b.png"):
        (images / name).write_bytes(b"\xff\xd8fake")
    lines = ["userId,movieId,rating,timestamp"]
    for user in range(4):
        for item in ("a", "b", "c", "d"):
            lines.append(f"u{user},{item},4,{100 + user}")
    lines += ["u0,a,5,999", "u9,,3,1", "u1,b,x,2", "u2,c"]  # duplicate, empty id, bad float, short
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    (folder / "items.csv").write_text(
        "movieId,title,genre,image\n"
        'a,"Alpha, the\tfirst",drama,a.jpg\n'  # quoted comma and a tab inside the title
        "b,Beta,comedy,http://img.example/b.jpg\n"
        "c,Gamma,,missing.jpg\n"  # file does not exist
        "z,Zeta,horror,b.png\n"  # no interaction names z
    )  # d has no row at all
    return {"inter": folder / "ratings.csv", "items": folder / "items.csv", "images": images}


def test_catalogue_items_images_and_counters(tmp_path):
    files = write_catalogue(tmp_path / "shop")
    prepared = prepare_catalogue(files["inter"], "shop", items=files["items"],
                                 images=files["images"])
    assert len(prepared.inter) == 16 and list(prepared.inter.columns) == [
        "user_id", "item_id", "rating", "timestamp"]
    counters = prepared.counters
    assert counters["duplicate_interactions"] == 1
    assert counters["malformed_lines"] == 3
    assert counters["items_without_interactions"] == 1
    assert counters["items_without_metadata"] == 1
    assert counters["image_files_missing"] == 1
    assert counters["items_without_image"] == 2  # c (missing file) and d (no row)
    items = prepared.items.set_index("item_id")
    assert items.loc["a", "image"] == str((files["images"] / "a.jpg").resolve())
    assert items.loc["b", "image"] == "http://img.example/b.jpg"
    assert items.loc["d", "title"] == "" and "z" not in items.index


def test_catalogue_cli_writes_sanitised_item_file(tmp_path):
    files = write_catalogue(tmp_path / "shop")
    root = tmp_path / "datasets"
    assert cli.main(["prepare", "catalogue", "--interactions", str(files["inter"]), "--items",
                     str(files["items"]), "--images", str(files["images"]), "--name", "shop",
                     "--root", str(root), "--config-dir", str(tmp_path / "cfg")]) == 0
    item_file = root / "shop" / "shop.item"
    assert item_file.read_text().splitlines()[0] == (
        "item_id:token\ttitle:token_seq\tgenre:token_seq\timage:token")
    items = read_atomic_item_file(item_file)
    assert items.loc[items["item_id"] == "a", "title"].item() == "Alpha, the first"
    card = json.loads((root / "shop" / "card.json").read_text())
    assert card["split"]["kind"] == "recbole" and card["items"]["with_image"] == 2
    assert "--images " + str(files["images"].resolve()) in card["command"]


def test_recbole_headers_images_folder_and_mmrec_split(tmp_path):
    folder = tmp_path / "atomic"
    folder.mkdir()
    rows = [f"u{u}\ti{i}\t{i}" for u in range(3) for i in range(15)]
    (folder / "x.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                    + "\n".join(rows) + "\n")
    (folder / "pics").mkdir()
    (folder / "pics" / "i3.webp").write_bytes(b"RIFF")
    prepared = prepare_catalogue(folder / "x.inter", "x", images=folder / "pics", split="mmrec",
                                 seed=7)
    sizes = prepared.inter.groupby("user_id")["split"].value_counts().unstack()
    assert (sizes[0] == 12).all() and (sizes[1] == 1).all() and (sizes[2] == 2).all()
    again = prepare_catalogue(folder / "x.inter", "x", images=folder / "pics", split="mmrec",
                              seed=7)
    assert again.inter.equals(prepared.inter)
    items = prepared.items.set_index("item_id")
    assert items.loc["i3", "image"].endswith("i3.webp") and items.loc["i4", "image"] == ""


def test_k_core_counts_and_bad_input_errors(tmp_path):
    path = tmp_path / "r.tsv"
    lines = ["user\titem"] + [f"u{u}\ti{i}" for u in range(3) for i in range(3)] + ["u9\ti0"]
    path.write_text("\n".join(lines) + "\n")
    prepared = prepare_catalogue(path, "k", k=2)
    assert prepared.counters["k_core_removed_users"] == 1
    assert prepared.counters["k_core_removed_interactions"] == 1
    latin = tmp_path / "latin.csv"
    latin.write_bytes("user,item\nu1,caf\xe9\nu2,b\n".encode("latin-1"))
    prepared = prepare_catalogue(latin, "l")
    assert prepared.counters["malformed_lines"] == 1 and "latin.csv:2" in str(prepared.reasons)
    assert "caf\xe9" in set(prepare_catalogue(latin, "l", encoding="latin-1").inter["item_id"])
    (tmp_path / "bad.csv").write_text("who,what\nu1,i1\n")
    with pytest.raises(PrepareError, match=r"bad.csv:1: no column named any of"):
        prepare_catalogue(tmp_path / "bad.csv", "b")


def test_ml100k_posters_references_posters_in_place(tmp_path):
    posters = tmp_path / "posters"
    (posters / "images").mkdir(parents=True)
    (posters / "images" / "1.jpg").write_bytes(b"\xff\xd8")
    (posters / "ml100k_items_with_posters.tsv").write_text(
        "item_id\tml1m_movie_id\ttitle\tyear\tgenres\tposter_path\n"
        "1\t1\tToy Story\t1995\tAnimation\timages/1.jpg\n"
        "2\t10\tGoldenEye\t1995\tAction\timages/10.jpg\n")  # 10.jpg does not exist
    prepared = prepare_ml100k_posters(posters)
    assert len(prepared.inter) == 100000 and prepared.inter["item_id"].nunique() == 1682
    items = prepared.items.set_index("item_id")
    assert list(items.columns) == ["movie_title", "release_year", "class", "image"]
    assert items.loc["1", "image"] == str(posters / "images" / "1.jpg")
    assert prepared.counters["items_without_image"] == 1681
    assert prepared.counters["image_files_missing"] == 1
    with pytest.raises(PrepareError, match="ml100k_items_with_posters.tsv"):
        prepare_ml100k_posters(tmp_path)
