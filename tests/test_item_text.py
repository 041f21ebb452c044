"""Item-text features: rendering, cache keyed by texts and encoder, the real offline MiniLM."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from recbole_vlm4rec.data.features import load_feature, read_meta
from recbole_vlm4rec.encoding import item_text
from recbole_vlm4rec.encoding.item_text import build_item_text_feature, read_atomic_item_file, render_item_texts
from recbole_vlm4rec.encoding.text import TextEncoder

ITEMS = (
    "item_id:token\ttitle:token_seq\tyear:token\tgenre:token_seq\n"
    "m1\tToy Story\t1995\tAnimation Comedy\n"
    "m2\tHeat\t1995\tAction Crime\n"
    "m3\t\t\t\n"
)


class CountingEncoder:
    """Deterministic stand-in for a sentence encoder; counts how often it is asked to encode."""

    calls: list[tuple[str, int]] = []

    def __init__(self, spec, device=None, batch_size=64):
        self.spec = spec

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


def test_cache_reuses_until_texts_or_encoder_change(items_file, tmp_path, monkeypatch):
    monkeypatch.setattr(item_text, "TextEncoder", CountingEncoder)
    CountingEncoder.calls.clear()
    out = tmp_path / "features"
    build = lambda enc="enc-a", template="{title}": build_item_text_feature(  # noqa: E731
        items_file, template, out, "text", enc)
    build()
    build()
    assert CountingEncoder.calls == [("enc-a", 2)]  # second build was a cache hit
    build(enc="enc-b")
    assert CountingEncoder.calls[-1] == ("enc-b", 2)
    assert read_meta(out, "text")["encoder"] == "enc-b"
    build(enc="enc-b", template="{title} {genre}")
    assert len(CountingEncoder.calls) == 3
    items_file.write_text(ITEMS.replace("Heat", "Heat (director's cut)"))
    build(enc="enc-b", template="{title} {genre}")
    assert len(CountingEncoder.calls) == 4
    feature = load_feature(out, "text")
    assert feature.tokens == ["m1", "m2"] and read_meta(out, "text")["items_without_text"] == 1


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
    from recbole_vlm4rec.runner import build_config, create_dataset

    config = build_config("VLM4Rec", "ml-100k", overrides={
        "gpu_id": "", "features_dir": str(tmp_path / "features"), "state": "WARNING"})
    feature = create_dataset(config).item_feature("text")
    assert feature.n_items == 1682 and feature.n_covered == 1682 and feature.dim == 384
    assert read_meta(tmp_path / "features", "text")["encoder"] == "all-MiniLM-L6-v2"
