"""vlm4rec encode: descriptions / item text / images -> feature files, per-input cache, skips."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recbole_vlm4rec.cli import main as vlm4rec
from recbole_vlm4rec.formats.features import load_feature
from recbole_vlm4rec.encoding import encode as encode_module
from recbole_vlm4rec.encoding.encode import EncodeInputError, read_descriptions


class HashingEncoder:
    """Stand-in sentence encoder (deterministic vectors from the text hash) that records what it
    was asked to encode; the real MiniLM is exercised in test_real_minilm_rows_follow_tokens."""

    calls: list[list[str]] = []

    def __init__(self, spec, device=None, batch_size=64, processes=1):
        self.spec = spec

    def close(self):
        pass

    def encode(self, texts, show_progress=True):
        HashingEncoder.calls.append(list(texts))
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest(), np.uint8)[:8] for t in texts]
        vectors = np.array(rows, np.float32) - 127.5
        if any("NaN-please" in t for t in texts):
            vectors[[i for i, t in enumerate(texts) if "NaN-please" in t]] = np.nan
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def fake_text_encoder(monkeypatch):
    HashingEncoder.calls = []
    monkeypatch.setattr(encode_module, "TextEncoder", HashingEncoder)
    return HashingEncoder


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def ok(item_id, text):
    return {"item_id": item_id, "status": "ok", "text": text, "backend": "tagger"}


def run_encode(tmp_path: Path, *args: str) -> int:
    return vlm4rec(["encode", "toy", "--data-path", str(tmp_path / "data"), "--quiet", *args])


def test_descriptions_rows_are_encoded_skipped_and_counted(tmp_path, fake_text_encoder, capsys):
    write_jsonl(tmp_path / "data/toy/descriptions/run1.jsonl", [
        ok("a", "a red wool coat"),
        ok("b", "an old row, superseded below"),
        {"item_id": "c", "status": "failed", "text": None, "reason": "timeout", "detail": "30 s"},
        ok("d", "   "),
        {"item_id": "e", "status": "weird", "text": "x"},
        "{not json",
        {"status": "ok", "text": "no id"},
        ok("b", "a blue denim jacket"),
        ok("f", "NaN-please"),
    ])
    assert run_encode(tmp_path, "--descriptions", "run1") == 0
    feature = load_feature(tmp_path / "data/toy/features", "vlm")
    assert feature.tokens == ["a", "b"]
    meta = feature.meta
    assert meta["skipped_by_reason"] == {"malformed_line": 2, "failed": 1, "empty_text": 1,
                                         "bad_status": 1, "non_finite_vector": 1}
    assert meta["n_superseded_rows"] == 1
    assert {"item_id": "c", "reason": "failed", "detail": "timeout: 30 s"} in meta["skipped"]
    assert any(s["item_id"] == "run1.jsonl:6" for s in meta["skipped"])
    out = capsys.readouterr().out
    assert "no vector for 6 items" in out and "superseded" in out
    assert np.allclose(np.linalg.norm(feature.matrix, axis=1), 1.0)


def test_per_text_cache_encodes_only_changed_descriptions(tmp_path, fake_text_encoder, capsys):
    rows = [ok(f"i{n}", f"item number {n}") for n in range(6)]
    path = write_jsonl(tmp_path / "data/toy/descriptions/d.jsonl", rows)
    assert run_encode(tmp_path, "--descriptions", str(path)) == 0
    first = load_feature(tmp_path / "data/toy/features", "vlm")
    assert sum(len(c) for c in fake_text_encoder.calls) == 6

    fake_text_encoder.calls.clear()
    rows[2] = ok("i2", "a changed description")
    write_jsonl(path, rows + [ok("i9", "item number 0")])  # a new item with a cached text
    assert run_encode(tmp_path, "--descriptions", str(path)) == 0
    assert fake_text_encoder.calls == [["a changed description"]]
    second = load_feature(tmp_path / "data/toy/features", "vlm")
    assert second.meta["n_cache_hits"] == 6
    row = {t: i for i, t in enumerate(second.tokens)}
    assert np.array_equal(second.matrix[row["i9"]], first.matrix[first.tokens.index("i0")])
    assert not np.array_equal(second.matrix[row["i2"]], first.matrix[first.tokens.index("i2")])

    fake_text_encoder.calls.clear()
    assert run_encode(tmp_path, "--descriptions", str(path), "--no-cache") == 0
    assert sum(len(c) for c in fake_text_encoder.calls) == 6  # i0 and i9 share one text
    out = capsys.readouterr().out
    assert "encoded now: 6, from cache: 0; 1 items reused the vector of an identical" in out


def test_template_over_item_file_and_clear_input_errors(tmp_path, fake_text_encoder, capsys):
    folder = tmp_path / "data/toy"
    folder.mkdir(parents=True)
    (folder / "toy.item").write_text(
        "item_id:token\ttitle:token_seq\tgenre:token_seq\nx1\tAlien\tSci-Fi\nx2\t\t\nx3\tHeat\tCrime\n"
    )
    assert run_encode(tmp_path, "--template", "{title}. Genre: {genre}.") == 0
    feature = load_feature(folder / "features", "text")
    assert feature.tokens == ["x1", "x3"] and feature.meta["skipped_by_reason"] == {"empty_text": 1}
    assert run_encode(tmp_path, "--template", "{title} {year}") == 2
    assert "'year'" in capsys.readouterr().err
    (folder / "toy.item").write_text("item_id\ttitle\nx1\tA\nx1\tB\n")
    assert run_encode(tmp_path, "--template", "{title}") == 2
    assert "duplicate 'item_id'" in capsys.readouterr().err
    assert run_encode(tmp_path) == 2
    assert "--descriptions TAG" in capsys.readouterr().err
    assert run_encode(tmp_path, "--descriptions", "nope") == 2
    assert "no descriptions file" in capsys.readouterr().err
    with pytest.raises(EncodeInputError, match="not found"):
        read_descriptions(tmp_path / "missing.jsonl")


def test_real_minilm_rows_follow_tokens_whatever_the_input_order(tmp_path):
    from recbole_vlm4rec.encoding.text import TextEncoder

    texts = {f"m{n}": t for n, t in enumerate(
        ["a black leather handbag", "wooden toy train for toddlers", "summer floral dress",
         "stainless steel baby bottle", "a horror movie poster"])}
    order = list(texts)
    random.Random(3).shuffle(order)
    write_jsonl(tmp_path / "data/toy/descriptions/real.jsonl", [ok(i, texts[i]) for i in order])
    assert run_encode(tmp_path, "--descriptions", "real") == 0
    feature = load_feature(tmp_path / "data/toy/features", "vlm")
    assert feature.tokens == order and feature.matrix.shape == (5, 384)
    direct = TextEncoder().encode([texts[t] for t in feature.tokens], show_progress=False)
    assert np.allclose(feature.matrix, direct, atol=1e-5)


def test_processes_encode_in_a_pool_and_give_the_vectors_of_one_process(tmp_path, monkeypatch, capsys):
    """--processes 2: sentence-transformers' multi-process pool runs (two CPU workers here) and the
    feature equals the one-process feature; other modalities refuse the flag."""
    from sentence_transformers import SentenceTransformer

    started = []
    original = SentenceTransformer.start_multi_process_pool

    def recording_pool(self, target_devices=None):
        started.append(list(target_devices))
        return original(self, target_devices)

    monkeypatch.setattr(SentenceTransformer, "start_multi_process_pool", recording_pool)
    words = ["red", "wooden", "soft", "large", "striped", "vintage", "leather", "tiny"]
    texts = {f"t{n}": " ".join(words[: 1 + n % 8]) + f" item number {n}" for n in range(24)}
    write_jsonl(tmp_path / "data/toy/descriptions/d.jsonl", [ok(i, t) for i, t in texts.items()])
    assert run_encode(tmp_path, "--descriptions", "d", "--device", "cpu", "--no-cache") == 0
    assert run_encode(tmp_path, "--descriptions", "d", "--device", "cpu", "--no-cache",
                      "--processes", "2", "--feature", "vlm_pool") == 0
    one = load_feature(tmp_path / "data/toy/features", "vlm")
    pooled = load_feature(tmp_path / "data/toy/features", "vlm_pool")
    assert started == [["cpu", "cpu"]]  # only the second run started a pool, of two processes
    assert pooled.tokens == one.tokens == list(texts)
    np.testing.assert_allclose(pooled.matrix, one.matrix, atol=1e-5)
    capsys.readouterr()
    assert run_encode(tmp_path, "--modality", "image", "--processes", "2") == 2
    assert "--processes 2: a number >= 1, for text encoding only" in capsys.readouterr().err


# ---------------------------------------------------------------- images

def write_images(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (60, 40), (200, 30, 30)).save(folder / "red.png")
    Image.new("RGBA", (40, 60), (10, 10, 200, 128)).save(folder / "blue.png")
    Image.new("RGB", (50, 50), (20, 160, 20)).save(folder / "green.jpg")
    (folder / "text.jpg").write_text("not an image")
    full = (folder / "green.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(full[: len(full) // 2])
    return {"p1": "img/red.png", "p2": "img/blue.png", "p3": "img/green.jpg",
            "p4": "img/text.jpg", "p5": "img/cut.jpg", "p6": "img/absent.jpg", "p7": "",
            "p8": "img/red.png"}


def write_image_table(folder: Path, refs: dict[str, str]) -> None:
    lines = ["item_id:token\timage:token"] + [f"{k}\t{v}" for k, v in refs.items()]
    (folder / "toy.item").write_text("\n".join(lines) + "\n")


def test_image_features_failures_counted_cache_and_alignment(tmp_path, capsys):
    from recbole_vlm4rec.formats.images import load_image
    from recbole_vlm4rec.encoding.image import create_image_encoder

    folder = tmp_path / "data/toy"
    refs = write_images(folder / "img")
    order = list(refs)
    random.Random(1).shuffle(order)
    write_image_table(folder, {k: refs[k] for k in order})
    assert run_encode(tmp_path, "--modality", "image") == 0
    feature = load_feature(folder / "features", "visual")
    assert sorted(feature.tokens) == ["p1", "p2", "p3", "p8"]
    assert feature.matrix.shape == (4, 1280)
    assert feature.meta["skipped_by_reason"] == {"not_an_image": 1, "truncated": 1, "missing": 1,
                                                 "no_image": 1}
    encoder = create_image_encoder()
    for token in ("p2", "p3"):
        direct = encoder.encode([load_image(folder / refs[token]).image], show_progress=False)
        assert np.allclose(feature.matrix[feature.tokens.index(token)], direct[0], atol=1e-5)
    rows = {t: feature.matrix[i] for i, t in enumerate(feature.tokens)}
    assert np.array_equal(rows["p1"], rows["p8"])  # same bytes, same vector
    assert "no vector for 4 items" in capsys.readouterr().out

    Image.new("RGB", (60, 40), (30, 30, 200)).save(folder / "img/red.png")  # p1 and p8 change
    assert run_encode(tmp_path, "--modality", "image", "--feature", "visual2") == 0
    again = load_feature(folder / "features", "visual2")
    assert again.meta["n_cache_hits"] == 2  # p2, p3 reused; the changed image encoded once
    assert again.meta["n_encoded"] == 1
    assert "encoded now: 1, from cache: 2; 1 items reused" in capsys.readouterr().out


class CountingImageEncoder:
    """Stand-in image encoder: the mean colour as a 3-d vector; counts the images it encodes."""

    batch_size = 2

    def __init__(self) -> None:
        self.encoded = 0

    def fingerprint(self) -> str:
        return "mean-colour"

    def describe(self) -> str:
        return "mean-colour"

    def encode_batch(self, images) -> np.ndarray:
        self.encoded += len(images)
        return np.array([np.asarray(i.convert("RGB"), np.float32).mean(axis=(0, 1)) + 1
                         for i in images])


def test_image_rerun_counts_everything_from_cache_with_duplicates_across_chunks(tmp_path):
    from recbole_vlm4rec.encoding.encode import encode_image_feature

    colours = [(200, 30, 30), (10, 10, 200), (20, 160, 20)]
    for n, colour in enumerate(colours):
        Image.new("RGB", (8, 8), colour).save(tmp_path / f"c{n}.png")
    # 11 items over 3 distinct images, chunks of 4: duplicates within and across chunks
    refs = [(f"i{n}", f"c{n % 3}.png") for n in range(11)]

    def encode(encoder):
        return encode_image_feature(refs, tmp_path, tmp_path / "features", "visual", encoder,
                                    source="test", chunk_size=4, show_progress=False)

    first_encoder, second_encoder = CountingImageEncoder(), CountingImageEncoder()
    first = encode(first_encoder)
    assert first_encoder.encoded == 3
    assert (first.n_encoded, first.n_cache_hits, first.n_shared) == (3, 0, 8)
    again = encode(second_encoder)
    assert second_encoder.encoded == 0
    assert (again.n_encoded, again.n_cache_hits, again.n_shared) == (0, 11, 0)
    assert "encoded now: 0, from cache: 11" in again.summary()


def test_transformers_clip_vision_encoder_from_a_local_folder(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    model_dir = tmp_path / "tiny-clip"
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=2, image_size=32, patch_size=8,
                              projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(model_dir)
    CLIPImageProcessorPil(size={"shortest_edge": 32},
                          crop_size={"height": 32, "width": 32}).save_pretrained(model_dir)
    folder = tmp_path / "data/toy"
    refs = write_images(folder / "img")
    write_image_table(folder, refs)
    assert run_encode(tmp_path, "--modality", "image", "--encoder", str(model_dir),
                      "--feature", "clip") == 0
    feature = load_feature(folder / "features", "clip")
    assert feature.matrix.shape == (4, 16)
    assert np.allclose(np.linalg.norm(feature.matrix, axis=1), 1.0, atol=1e-5)
    assert "clip_vision_model" in feature.meta["encoder"]
    assert vlm4rec(["encode", "toy", "--data-path", str(tmp_path / "data"), "--modality",
                    "image", "--encoder", "no-such-encoder"]) == 2


def test_encoded_feature_loads_in_the_multimodal_dataset(tiny_dataset, build_pipeline,
                                                        fake_text_encoder):
    root, name, overrides = tiny_dataset
    described = [f"i{n}" for n in range(0, 40, 2)]
    write_jsonl(root / name / "descriptions/run.jsonl",
                [ok(t, f"description of {t}") for t in reversed(described)])
    assert vlm4rec(["encode", name, "--data-path", str(root), "--descriptions", "run",
                    "--quiet"]) == 0
    overrides = {**overrides, "item_features": {"vlm": None}, "default_item_feature": "vlm"}
    _, data, *_ = build_pipeline("VLM4Rec", name, overrides)
    aligned = data.item_feature("vlm")
    in_dataset = [t for t in described if t in data.field2token_id[data.iid_field]]
    assert aligned.n_covered == len(in_dataset) and aligned.dim == 8
    token = in_dataset[0]
    expected = HashingEncoder("x").encode([f"description of {token}"])[0]
    assert np.allclose(aligned.matrix[data.field2token_id[data.iid_field][token]], expected)


def test_interrupted_text_encoding_keeps_finished_chunks(tmp_path, fake_text_encoder):
    from recbole_vlm4rec.encoding.cache import VectorCache
    from recbole_vlm4rec.encoding.encode import TextInputs, encode_texts

    class Interrupting(HashingEncoder):
        def encode(self, texts, show_progress=True):
            if len(HashingEncoder.calls) == 2:
                raise KeyboardInterrupt
            return super().encode(texts, show_progress)

    inputs = TextInputs([f"t{n}" for n in range(7)], [f"text {n}" for n in range(7)])
    with VectorCache(tmp_path / "cache.sqlite", "text:x") as cache, pytest.raises(KeyboardInterrupt):
        encode_texts(inputs, Interrupting("x"), cache, show_progress=False, chunk_size=3)
    HashingEncoder.calls.clear()
    with VectorCache(tmp_path / "cache.sqlite", "text:x") as cache:
        tokens, matrix, hits, n_encoded, skipped = encode_texts(
            inputs, HashingEncoder("x"), cache, show_progress=False, chunk_size=3)
    assert hits == 6 and n_encoded == 1 and HashingEncoder.calls == [["text 6"]]
    assert tokens == inputs.tokens and matrix.shape == (7, 8) and not skipped
