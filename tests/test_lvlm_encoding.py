"""`vlm4rec encode --modality lvlm`: hidden-state vectors of tiny random VLMs of every architecture
in tests/tiny_vlms.py (batching-invariant, pooling and layer honoured, one pass also describes) and
an OpenAI-compatible /v1/embeddings endpoint (the local stub), through the command users run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grounding_fakes import bad_and_good_images, description_rows, make_project_home
from recbole_vlm4rec import cli
from recbole_vlm4rec.encoding.lvlm import OpenAILVLMEmbedder, TransformersLVLMEmbedder
from recbole_vlm4rec.formats.features import load_feature
from recbole_vlm4rec.grounding.backends.base import GroundingRequest
from recbole_vlm4rec.grounding.backends.openai_stub import (STUB_EMBEDDING_DIM, StubServer,
                                                            embeddings_reply)
from tiny_vlms import (WORDS, build_tiny_idefics3, build_tiny_llava, build_tiny_llava_next,
                       build_tiny_qwen2_5_vl, build_tiny_qwen2_vl)

N_OK = sum(reason is None for _, _, reason in bad_and_good_images().values())
BAD = {item: reason for item, (_, _, reason) in bad_and_good_images().items() if reason}
ARCHITECTURES = {"qwen2_vl": build_tiny_qwen2_vl, "qwen2_5_vl": build_tiny_qwen2_5_vl,
                 "llava": build_tiny_llava, "llava_next": build_tiny_llava_next,
                 "idefics3": build_tiny_idefics3}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def tiny_model(request, tmp_path_factory) -> Path:
    return ARCHITECTURES[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen_cli"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_project_home(tmp_path, monkeypatch)


def requests() -> list[GroundingRequest]:
    sizes = [(40, 30), (90, 20), (28, 70)]  # different image and prompt lengths: padding differs
    return [GroundingRequest(f"i{k}", Image.new("RGB", size, (60 * k, 200, 90)), "0" * 64,
                             "describe this item " * (k + 1)) for k, size in enumerate(sizes)]


def vectors(embedder: TransformersLVLMEmbedder, batch: list[GroundingRequest]) -> np.ndarray:
    outputs = embedder.embed(batch)
    assert all(output.error is None for output in outputs), outputs
    return np.stack([output.vector for output in outputs])


def test_pooled_hidden_states_do_not_depend_on_batching_and_describing(tiny_model: Path):
    batch = requests()
    by_pooling = {}
    for pooling in ("mean", "last", "image"):
        embedder = TransformersLVLMEmbedder(model=str(tiny_model), device="cpu", batch_size=3,
                                            pooling=pooling)
        embedder.preflight()
        batched = vectors(embedder, batch)
        assert batched.shape == (3, 32) and np.isfinite(batched).all()
        one_by_one = np.concatenate([vectors(embedder, [request]) for request in batch])
        np.testing.assert_allclose(batched, one_by_one, atol=1e-5)  # padding masked out
        describing = TransformersLVLMEmbedder(model=str(tiny_model), device="cpu", batch_size=3,
                                              pooling=pooling, describe=True, max_new_tokens=4)
        outputs = describing.embed(batch)
        np.testing.assert_allclose(np.stack([o.vector for o in outputs]), batched, atol=1e-5)
        assert all(len(o.text.split()) == 4 and set(o.text.split()) <= set(WORDS)
                   for o in outputs)
        by_pooling[pooling] = batched
    assert not np.allclose(by_pooling["mean"], by_pooling["last"])
    assert not np.allclose(by_pooling["mean"], by_pooling["image"])
    assert not np.allclose(by_pooling["mean"][0], by_pooling["mean"][1])  # items differ
    embeddings_layer = TransformersLVLMEmbedder(model=str(tiny_model), device="cpu", layer=0)
    assert not np.allclose(vectors(embeddings_layer, batch), by_pooling["mean"])


def test_a_layer_the_model_lacks_fails_before_any_item(tiny_qwen: Path):
    embedder = TransformersLVLMEmbedder(model=str(tiny_qwen), device="cpu", layer=5)
    with pytest.raises(ValueError, match="--layer 5: .* has 2 hidden states"):
        embedder.preflight()


def test_encode_command_writes_vectors_and_descriptions_from_one_pass(tiny_qwen: Path, home: Path,
                                                                     capsys):
    argv = ["encode", "shop", "--modality", "lvlm", "--model", str(tiny_qwen), "--prompt",
            "structured", "--context", "{title}", "--describe", "tiny-structured", "--device",
            "cpu", "--batch-size", "4", "--max-new-tokens", "5", "--quiet"]
    assert cli.main(argv) == 0
    assert f"encoded now: {N_OK}, from cache: 0" in capsys.readouterr().out
    feature = load_feature(home / "dataset/shop/features", "lvlm")
    assert feature.matrix.shape == (N_OK, 32)
    np.testing.assert_allclose(np.linalg.norm(feature.matrix, axis=1), 1.0, rtol=1e-5)
    assert set(feature.tokens).isdisjoint(BAD)
    meta = feature.meta
    assert meta["kind"] == "lvlm" and meta["pooling"] == "mean" and meta["layer"] == -1
    assert meta["prompt"] == "structured" and "hidden states" in meta["encoder"]
    assert {s["item_id"]: s["reason"] for s in meta["skipped"]} == BAD
    rows = {r["item_id"]: r for r in description_rows(
        home / "dataset/shop/descriptions/tiny-structured.jsonl")}
    assert set(rows) == set(bad_and_good_images())
    # random words are not JSON: the answers are recorded as failed, the vectors are kept
    assert {rows[i]["reason"] for i in feature.tokens} == {"invalid_json"}
    assert all(rows[i]["reason"] == reason for i, reason in BAD.items())
    assert cli.main(argv) == 0  # rerun: vectors and descriptions current, nothing embedded
    assert f"encoded now: 0, from cache: {N_OK}" in capsys.readouterr().out
    np.testing.assert_array_equal(load_feature(home / "dataset/shop/features", "lvlm").matrix,
                                  feature.matrix)


def test_encode_command_through_an_openai_embeddings_endpoint(home: Path, capsys):
    with StubServer() as server:
        argv = ["encode", "shop", "--modality", "lvlm", "--backend", "openai", "--base-url",
                server.base_url, "--model", "stub", "--prompt", "preference", "--feature",
                "lvlm_remote", "--quiet"]
        assert cli.main(argv) == 0
        assert sum(server.requests.values()) == N_OK
        feature = load_feature(home / "dataset/shop/features", "lvlm_remote")
        assert feature.matrix.shape == (N_OK, STUB_EMBEDDING_DIM)
        assert len({row.tobytes() for row in feature.matrix}) == N_OK  # one vector per image
        assert feature.meta["lvlm_backend"] == "openai"
        assert "pooling" not in feature.meta
        capsys.readouterr()
        assert cli.main(argv) == 0
        assert sum(server.requests.values()) == N_OK  # the rerun came from the cache
        assert cli.main(argv + ["--no-cache", "--feature", "again"]) == 0
    again = load_feature(home / "dataset/shop/features", "again")
    np.testing.assert_array_equal(again.matrix, feature.matrix)  # the server's vectors, as sent


def test_embeddings_endpoint_failures_are_retried_or_recorded():
    def policy(payload, seen):
        prompt = payload["messages"][0]["content"][0]["text"]
        if prompt == "flaky" and seen == 1:
            return 503, {}, {"error": {"message": "busy"}}
        if prompt == "rejected":
            return 400, {}, {"error": {"message": "image too large"}}
        if prompt == "garbled":
            return 200, {}, {"data": []}
        return embeddings_reply(payload, seen)

    image = Image.new("RGB", (8, 8), (1, 2, 3))
    batch = [GroundingRequest(item, image, "0" * 64, item) for item in ("flaky", "rejected",
                                                                       "garbled", "fine")]
    with StubServer(embeddings_policy=policy) as server:
        embedder = OpenAILVLMEmbedder(model="stub", base_url=server.base_url, backoff_base=0.01,
                                      max_retries=2, concurrency=2)
        outputs = {o.item_id: o for o in embedder.embed(batch)}
        embedder.close()
    assert outputs["flaky"].vector is not None and server.requests["flaky"] == 2
    assert outputs["rejected"].error == "http_400" and "image too large" in outputs[
        "rejected"].detail
    assert outputs["garbled"].error == "bad_response" and server.requests["garbled"] == 3  # retried
    assert outputs["fine"].vector.shape == (STUB_EMBEDDING_DIM,)


def test_lvlm_option_errors_are_one_line(home: Path, capsys):
    with StubServer() as server:
        code = cli.main(["encode", "shop", "--modality", "lvlm", "--backend", "openai",
                         "--base-url", server.base_url, "--model", "stub", "--pooling", "last"])
    assert code == 2
    assert "--pooling: not available with --backend openai" in capsys.readouterr().err
    assert cli.main(["encode", "shop", "--modality", "lvlm"]) == 2
    assert "--modality lvlm needs --model" in capsys.readouterr().err
