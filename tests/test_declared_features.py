"""Declared item-text features: rendering, built through the encode stage before the dataset,
rebuilt only when the declaration changes, a file from `vlm4rec encode` used as written."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from recbole_vlm4rec import cli
from recbole_vlm4rec.encoding import encode
from recbole_vlm4rec.encoding.declared import ensure_declared_features
from recbole_vlm4rec.encoding.text import TextEncoder
from recbole_vlm4rec.formats.features import load_feature, read_meta
from recbole_vlm4rec.formats.items import read_atomic_item_file, render_item_texts

ITEMS = (
    "item_id:token\ttitle:token_seq\tyear:token\tgenre:token_seq\n"
    "m1\tToy Story\t1995\tAnimation Comedy\n"
    "m2\tHeat\t1995\tAction Crime\n"
    "m3\t\t\t\n"
)


class CountingEncoder:
    """Deterministic stand-in for a sentence encoder; counts how often it is asked to encode."""

    calls: list[tuple[str, int]] = []

    def __init__(self, spec, device=None, batch_size=64, processes=1):
        self.spec = spec

    def close(self):
        pass

    def encode(self, texts, show_progress=True):
        CountingEncoder.calls.append((self.spec, len(texts)))
        rows = [np.frombuffer(hashlib.sha256(f"{self.spec}{t}".encode()).digest()[:16], np.uint8)
                for t in texts]
        return np.asarray(rows, dtype=np.float32) + 1.0


@pytest.fixture
def items_file(tmp_path):
    path = tmp_path / "movies.item"
    path.write_text(ITEMS)
    return path


def test_render_fills_template_and_reports_items_without_text(items_file):
    items = read_atomic_item_file(items_file)
    tokens, texts, without = render_item_texts(items, "{title} ({year}). Genres: {genre}.", "item_id")
    assert tokens == ["m1", "m2"]
    assert texts[0] == "Toy Story (1995). Genres: Animation Comedy."
    assert without == ["m3"]
    with pytest.raises(KeyError, match=r"movies\.item.*needs columns \['plot'\]"):
        render_item_texts(items, "{title} {plot}", "item_id", items_file)


def test_declared_feature_rebuilds_exactly_when_its_recipe_changes(items_file, tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "TextEncoder", CountingEncoder)
    CountingEncoder.calls.clear()
    out = tmp_path / "features"

    def build(enc="enc-a", template="{title}"):
        return ensure_declared_features({"text": {"build": "item_text", "template": template}},
                                        items_file, out, enc)

    assert "built" in build()[0]
    assert "up to date" in build()[0]
    assert CountingEncoder.calls == [("enc-a", 2)]  # second call: nothing rebuilt
    build(enc="enc-b")
    assert CountingEncoder.calls[-1] == ("enc-b", 2)
    assert read_meta(out, "text")["encoder"] == "enc-b"
    assert read_meta(out, "text")["origin"] == "declared"
    build(enc="enc-b", template="{title} {genre}")
    assert len(CountingEncoder.calls) == 3
    items_file.write_text(ITEMS.replace("Heat", "Heat (director's cut)"))
    assert "rebuilt" in build(enc="enc-b", template="{title} {genre}")[0]
    # one cache for every text feature: only the changed text went through the encoder
    assert CountingEncoder.calls[-1] == ("enc-b", 1)
    feature = load_feature(out, "text")
    meta = read_meta(out, "text")
    assert feature.tokens == ["m1", "m2"] and meta["skipped_by_reason"] == {"empty_text": 1}


def test_feature_written_by_vlm4rec_encode_is_used_as_written(items_file, tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "TextEncoder", CountingEncoder)
    out = tmp_path / "features"
    assert cli.main(["encode", "toy", "--items", str(items_file), "--template", "{genre}",
                     "--feature", "text", "--features-dir", str(out), "--quiet"]) == 0
    written = load_feature(out, "text").matrix.copy()
    assert read_meta(out, "text")["origin"] == "vlm4rec encode"
    notes = ensure_declared_features({"text": {"build": "item_text", "template": "{title}"}},
                                     items_file, out, "enc-a")
    assert "as written" in notes[0]
    np.testing.assert_array_equal(load_feature(out, "text").matrix, written)


def test_real_minilm_encoder_offline():
    encoder = TextEncoder("all-MiniLM-L6-v2")
    vectors = encoder.encode(
        ["red leather running shoe", "athletic sneaker for jogging", "chocolate birthday cake"],
        show_progress=False,
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    with pytest.raises(ValueError, match="empty texts"):
        encoder.encode(["fine", "  "])


def test_default_dataset_text_feature_builds_and_covers_every_item(tmp_path, monkeypatch):
    """The embedded default: ml-100k's item text encoded offline, aligned to all 1,682 items."""
    monkeypatch.chdir(tmp_path)
    from recbole_vlm4rec.run.protocol import prepare_run
    from recbole_vlm4rec.run.runner import create_dataset

    prepared = prepare_run("VLM4Rec", "ml-100k", overrides={
        "gpu_id": "", "features_dir": str(tmp_path / "features"), "state": "WARNING"})
    assert prepared.features == ["text"] and "built" in prepared.notes[0]
    feature = create_dataset(prepared.config).item_feature("text")
    assert feature.n_items == 1682 and feature.n_covered == 1682 and feature.dim == 384
    assert read_meta(tmp_path / "features", "text")["encoder"] == "all-MiniLM-L6-v2"
