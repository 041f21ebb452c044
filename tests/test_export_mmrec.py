"""benchmarks/export_mmrec.py: a prepared dataset -> MMRec's layout -> `prepare mmrec` gives the
same interactions, split and features back; items without a vector are an error or dropped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recbole_vlm4rec.formats.features import load_feature, save_feature
from recbole_vlm4rec.data.prepare.mmrec import prepare_mmrec_folder


@pytest.fixture(scope="module")
def exporter(benchmark_script):
    return benchmark_script("export_mmrec")


def test_round_trip_through_prepare_mmrec(tiny_dataset, exporter, tmp_path):
    root, name, _ = tiny_dataset
    out = tmp_path / "mmrec" / "tinyexport"
    record = exporter.export(root / name, out, {"image": "emb"}, seed=7)
    table = pd.read_csv(out / "tinyexport.inter", sep="\t")
    assert list(table.columns) == ["userID", "itemID", "rating", "timestamp", "x_label"]
    assert sorted(table["itemID"].unique()) == list(range(40))  # dense ids from 0
    assert record["interactions"] == len(table) == 300
    # MMRec's rule: 10 interactions per user -> 1 valid, (10+5)//10 = 1 test
    assert (table.groupby("userID")["x_label"].apply(lambda s: sorted(s.tolist()))
            .map(lambda labels: labels[-2:] == [1, 2]).all())
    assert not (out / "text_feat.npy").exists()

    back = prepare_mmrec_folder(out, "back")
    original = pd.read_csv(root / name / f"{name}.inter", sep="\t", dtype=str)
    original.columns = [c.split(":")[0] for c in original.columns]
    pairs = set(zip(back.inter["user_id"], back.inter["item_id"]))
    assert pairs == set(zip(original["user_id"], original["item_id"]))  # tokens restored
    labels = dict(zip(zip(back.inter["user_id"], back.inter["item_id"]), back.inter["split"]))
    users = pd.read_csv(out / "u_id_mapping.csv", sep="\t").set_index("userID")["user_id"]
    items = pd.read_csv(out / "i_id_mapping.csv", sep="\t").set_index("itemID")["asin"]
    for row in table.itertuples():
        assert labels[(users[row.userID], items[row.itemID])] == row.x_label
    emb = load_feature(root / name / "features", "emb")
    by_token = dict(zip(emb.tokens, emb.matrix))
    imported = back.features["visual"]
    for token, vector in zip(imported.tokens, imported.matrix):
        np.testing.assert_array_equal(vector, by_token[token])
    # Same seed, same labels; another seed, another split.
    assert exporter.export(root / name, tmp_path / "again" / "tinyexport", {"image": "emb"},
                           seed=7)["per_split"] == record["per_split"]
    other = exporter.export(root / name, tmp_path / "other" / "tinyexport", {"image": "emb"},
                            seed=8)
    relabelled = pd.read_csv(tmp_path / "other" / "tinyexport" / "tinyexport.inter", sep="\t")
    assert other["per_split"] == record["per_split"]
    assert not relabelled["x_label"].equals(table["x_label"])


def test_items_without_a_vector(tiny_dataset, exporter, tmp_path):
    root, name, _ = tiny_dataset
    tokens = [f"i{i}" for i in range(5, 40)]
    vectors = np.random.default_rng(0).normal(size=(len(tokens), 3))
    vectors[0] = 0.0  # an all-zero row counts as no vector: i5 is missing too
    save_feature(root / name / "features", "partial", vectors, tokens)
    with pytest.raises(exporter.ExportError, match="'partial' lacks 6 .*--missing drop-items"):
        exporter.export(root / name, tmp_path / "a" / "x", {"image": "emb", "text": "partial"}, 1)
    record = exporter.export(root / name, tmp_path / "b" / "x",
                             {"image": "emb", "text": "partial"}, 1, missing="drop-items")
    assert record["items"] == 34 and record["items_dropped_without_vector"] == 6
    assert np.load(tmp_path / "b" / "x" / "text_feat.npy").shape == (34, 3)
    assert np.load(tmp_path / "b" / "x" / "image_feat.npy").shape == (34, 8)


def test_image_scale_multiplies_the_image_feature_only(tiny_dataset, exporter, tmp_path):
    root, name, _ = tiny_dataset
    plain = exporter.export(root / name, tmp_path / "a" / "x", {"image": "emb"}, seed=7)
    scaled = exporter.export(root / name, tmp_path / "b" / "x", {"image": "emb"}, seed=7,
                             image_scale=30.0)
    assert (plain["image_scale"], scaled["image_scale"]) == (1.0, 30.0)
    before = np.load(tmp_path / "a" / "x" / "image_feat.npy")
    after = np.load(tmp_path / "b" / "x" / "image_feat.npy")
    assert after.dtype == np.float32
    np.testing.assert_array_equal(after, before * np.float32(30.0))
    assert (pd.read_csv(tmp_path / "a" / "x" / "x.inter", sep="\t")
            .equals(pd.read_csv(tmp_path / "b" / "x" / "x.inter", sep="\t")))
    with pytest.raises(ValueError, match="image_scale"):
        exporter.export(root / name, tmp_path / "c" / "x", {"image": "emb"}, seed=7,
                        image_scale=0.0)
