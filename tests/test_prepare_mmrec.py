"""`vlm4rec prepare mmrec`: MMRec folders become predefined-split RecBole datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from recbole_vlm4rec import cli
from recbole_vlm4rec.formats.features import load_feature
from recbole_vlm4rec.data.prepare.mmrec import prepare_mmrec_folder
from recbole_vlm4rec.data.prepare.prepared import PrepareError
from recbole_vlm4rec.formats.items import read_atomic_item_file


def write_mmrec_folder(folder: Path, n_users: int = 12, n_items: int = 9) -> dict:
    """An MMRec folder with ids, labels, mappings, urls, features and a few broken lines."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["userID\titemID\trating\ttimestamp\tx_label"]
    labels = {}
    for user in range(n_users):
        items = rng.choice(n_items, size=5, replace=False)
        for position, item in enumerate(items):
            label = 0 if position < 3 else position - 2
            labels[(user, int(item))] = label
            lines.append(f"{user}\t{item}\t5.0\t{1000 + position}\t{label}")
    lines.insert(4, "0\tx\t5.0\t1\t0")  # non-integer item id
    lines.insert(7, "1\t2\t5.0")  # too few fields
    lines.append(lines[1][:-1] + "2")  # same pair again, other label: the first line wins
    lines.append("3\t1\t4.0\t7\t5")  # x_label out of range
    (folder / "toy.inter").write_text("\n".join(lines) + "\n")
    (folder / "i_id_mapping.csv").write_text(
        "asin\titemID\n" + "".join(f"A{i:03d}\t{i}\n" for i in range(n_items)))
    (folder / "u_id_mapping.csv").write_text(
        "user_id\tuserID\n" + "".join(f"U{u}\t{u}\n" for u in range(n_users)))
    (folder / "toy_url.csv").write_text(
        "itemID,asin,imUrl\n" + "".join(
            f"{i},A{i:03d},{'' if i == 0 else f'http://img.example/{i}.jpg'}\n"
            for i in range(n_items)))
    visual = rng.normal(size=(n_items, 6)).astype(np.float32)
    np.save(folder / "image_feat.npy", visual)
    np.save(folder / "text_feat.npy", rng.normal(size=(n_items, 4)))
    return {"labels": labels, "visual": visual}


def test_split_ids_features_and_counted_problems(tmp_path):
    source = write_mmrec_folder(tmp_path / "toy")
    prepared = prepare_mmrec_folder(tmp_path / "toy", "toy")
    inter = prepared.inter
    assert len(inter) == len(source["labels"])
    for row in inter.itertuples(index=False):  # every pair keeps its x_label exactly
        user, item = int(row.user_id[1:]), int(row.item_id[1:])
        assert row.split == source["labels"][(user, item)]
    assert prepared.counters["malformed_lines"] == 3
    assert "toy.inter:5" in prepared.reasons["malformed_lines"]
    assert prepared.counters["duplicate_interactions"] == 1
    assert prepared.counters["items_without_image"] == 1
    visual = prepared.features["visual"]
    row = visual.tokens.index("A004")
    np.testing.assert_allclose(visual.matrix[row], source["visual"][4])
    assert prepared.features["text"].matrix.dtype == np.float32


def test_cli_writes_loadable_dataset_config_and_card(tmp_path, capsys):
    write_mmrec_folder(tmp_path / "toy")
    root, configs = tmp_path / "datasets", tmp_path / "configs"
    argv = ["prepare", "mmrec", str(tmp_path / "toy"), "--name", "toy", "--root", str(root),
            "--config-dir", str(configs)]
    assert cli.main(argv) == 0
    assert "split train/valid/test" in capsys.readouterr().out
    folder = root / "toy"
    sizes = [len((folder / f"toy.{p}.inter").read_text().splitlines()) - 1
             for p in ("train", "valid", "test")]
    assert sizes == [36, 12, 12]
    assert (folder / "toy.train.inter").read_text().startswith(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\nU0\t")
    items = read_atomic_item_file(folder / "toy.item")
    assert list(items.columns) == ["item_id", "image"]
    assert items.set_index("item_id").loc["A000", "image"] == ""
    feature = load_feature(folder / "features", "visual")
    assert feature.matrix.shape == (9, 6) and feature.tokens[0] == "A000"
    card = json.loads((folder / "card.json").read_text())
    assert card["split"] == {**card["split"], "kind": "predefined", "train": 36, "test": 12}
    assert card["command"].startswith("vlm4rec prepare mmrec /") and "--name toy" in card["command"]
    assert card["features"]["visual"]["items_covered"] == 9
    assert {s["path"].rsplit("/", 1)[1] for s in card["sources"]} >= {"toy.inter", "image_feat.npy"}
    config = yaml.safe_load((configs / "toy.yaml").read_text())
    assert config["benchmark_filename"] == ["train", "valid", "test"]
    assert config["load_col"] == {"inter": ["user_id", "item_id", "rating", "timestamp"]}
    assert set(config["item_features"]) == {"vlm", "visual", "text"}


def test_mmrec_ids_and_missing_files(tmp_path):
    write_mmrec_folder(tmp_path / "toy")
    prepared = prepare_mmrec_folder(tmp_path / "toy", "toy", ids="mmrec")
    assert set(prepared.inter["item_id"]) <= {str(i) for i in range(9)}
    assert list(prepared.items.columns) == ["item_id", "asin", "image"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match="exactly one MMRec"):
        prepare_mmrec_folder(tmp_path / "empty", "x")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "b.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n0\t1\t1\n0\t2\t2\n")
    prepared = prepare_mmrec_folder(bare, "bare")
    assert prepared.features == {} and list(prepared.inter.columns) == [
        "user_id", "item_id", "split"]


def test_predefined_split_trains_through_recbole(tmp_path, monkeypatch):
    from recbole_vlm4rec.run.runner import run

    monkeypatch.chdir(tmp_path)
    write_mmrec_folder(tmp_path / "toy", n_users=30, n_items=20)
    root = tmp_path / "datasets"
    assert cli.main(["prepare", "mmrec", str(tmp_path / "toy"), "--name", "toy", "--root",
                     str(root), "--config-dir", str(tmp_path / "configs")]) == 0
    config = yaml.safe_load((tmp_path / "configs" / "toy.yaml").read_text())
    result = run("BPR", "toy", overrides={
        **config, "data_path": str(root), "epochs": 1, "state": "WARNING", "gpu_id": "",
        "show_progress": False, "checkpoint_dir": str(tmp_path / "saved"),
        "results_dir": str(tmp_path / "results")})
    assert 0.0 <= result.test_result["recall@20"] <= 1.0


def test_meta_file_adds_item_text(tmp_path):
    write_mmrec_folder(tmp_path / "toy")
    meta = tmp_path / "meta_Toy.json"
    meta.write_text(repr({"asin": "A000", "title": "Crib\tsheet", "price": 9.5,
                          "imUrl": "http://img.example/meta0.jpg", "categories": [["Baby"]]})
                    + "\n" + repr({"asin": "A001", "title": "Bib"}) + "\n")
    prepared = prepare_mmrec_folder(tmp_path / "toy", "toy", meta=meta)
    items = prepared.items.set_index("item_id")
    assert items.loc["A000", "title"] == "Crib sheet" and items.loc["A000", "price"] == 9.5
    assert items.loc["A000", "image"] == "http://img.example/meta0.jpg"  # url file had none
    assert items.loc["A001", "image"] == "http://img.example/1.jpg"  # url file wins
    assert prepared.counters["items_without_metadata"] == 7
    assert "items_without_image" not in prepared.counters
    assert prepared.item_types["price"] == "float" and list(items.columns)[-1] == "image"


def test_reprepare_keeps_later_features_drops_vanished_imports(tmp_path):
    from recbole_vlm4rec.formats.features import save_feature

    write_mmrec_folder(tmp_path / "toy")
    root = tmp_path / "datasets"
    argv = ["prepare", "mmrec", str(tmp_path / "toy"), "--name", "toy", "--root", str(root),
            "--config-dir", str(tmp_path / "cfg")]
    assert cli.main(argv) == 0
    features = root / "toy" / "features"
    save_feature(features, "vlm", np.ones((2, 3)), ["A000", "A001"], {"kind": "vlm"})
    (tmp_path / "toy" / "text_feat.npy").unlink()
    assert cli.main(argv) == 0
    assert (features / "vlm.npy").is_file() and (features / "vlm.tokens").is_file()
    assert (features / "visual.npy").is_file() and not (features / "text.npy").exists()


def test_named_datasets_say_how_to_prepare(tmp_path, capsys):
    from recbole_vlm4rec.data.registry import NAMED_DATASETS, UnknownDatasetError, check_dataset

    for name in ("amazon-baby", "amazon-sports", "amazon-clothing", "ml-100k-posters"):
        assert NAMED_DATASETS[name].expected_counts is not None
        with pytest.raises(UnknownDatasetError, match=f"vlm4rec prepare .*--name {name}|"
                           "vlm4rec prepare ml-100k-posters"):
            check_dataset(name, root=tmp_path)
    write_mmrec_folder(tmp_path / "toy")
    assert cli.main(["prepare", "mmrec", str(tmp_path / "toy"), "--name", "amazon-sports",
                     "--root", str(tmp_path / "d"), "--config-dir", str(tmp_path / "c")]) == 0
    assert "published with users/items/interactions (35598" in capsys.readouterr().err
    assert cli.main(["prepare"]) == 2
