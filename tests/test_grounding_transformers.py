"""The transformers backend on tiny random models of real architectures, loaded from folders saved
like hub checkpoints, through the same command users run. Random weights say random words, so the
tests check that the pipeline runs, batches correctly and records/validates outputs, not content."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from grounding_fakes import bad_and_good_images, description_rows, make_project_home
from recbole_vlm4rec import cli
from recbole_vlm4rec.grounding.backends.base import BackendUnavailableError, GroundingRequest
from recbole_vlm4rec.grounding.backends.transformers_vlm import TransformersBackend
from tiny_vlms import (
    WORDS,
    build_tiny_idefics3,
    build_tiny_llava,
    build_tiny_llava_next,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen2_vl,
)

N_OK = sum(reason is None for _, _, reason in bad_and_good_images().values())
ARCHITECTURES = {
    "qwen2_vl": build_tiny_qwen2_vl, "qwen2_5_vl": build_tiny_qwen2_5_vl, "llava": build_tiny_llava,
    "llava_next": build_tiny_llava_next, "idefics3": build_tiny_idefics3,
}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def tiny_model(request, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp(request.param)
    return ARCHITECTURES[request.param](folder)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_project_home(tmp_path, monkeypatch)


def requests_of_mixed_sizes() -> list[GroundingRequest]:
    sizes = [(40, 30), (90, 20), (28, 70)]
    return [GroundingRequest(f"i{k}", Image.new("RGB", size, (60 * k, 200, 90)), "0" * 64,
                             "describe this item " * (k + 1)) for k, size in enumerate(sizes)]


def test_batched_generation_matches_one_by_one(tiny_model: Path):
    backend = TransformersBackend(model=str(tiny_model), batch_size=3, max_new_tokens=5, device="cpu")
    requests = requests_of_mixed_sizes()  # different prompt lengths: left padding must not change answers
    batched = backend.describe(requests)
    single = [backend.describe([request])[0] for request in requests]
    assert [o.text for o in batched] == [o.text for o in single]
    for output in batched:
        assert output.ok and len(output.text.split()) == 5 and set(output.text.split()) <= set(WORDS)
    assert str(tiny_model) in backend.model_id() and "max_new_tokens=5" in backend.model_id()
    backend.close()


def test_ground_command_with_a_local_model_folder(tiny_model: Path, home: Path, capsys):
    prompt = home / "short.yaml"  # random words are short: accept 3-word answers
    prompt.write_text("name: short\nversion: 1\nformat: text\nuser: describe the item\nmin_words: 3\n")
    argv = ["ground", "shop", "--backend", "transformers", "--model", str(tiny_model), "--prompt", str(prompt),
            "--batch-size", "4", "--max-new-tokens", "6", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 0
    rows = {r["item_id"]: r for r in description_rows(home / "dataset/shop/descriptions/transformers-short.jsonl")}
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert len(rows) == len(bad_and_good_images()) and len(ok) == N_OK
    assert all(len(r["text"].split()) == 6 and r["model"].startswith(str(tiny_model)) for r in ok)
    assert rows["i07"]["reason"] == "truncated" and rows["i03"]["detail"] == "converted CMYK to RGB"
    capsys.readouterr()
    assert cli.main(argv) == 0  # rerun: everything from the cache, the model is not even loaded
    assert f"0 described now, {N_OK} cache hits" in capsys.readouterr().out


def test_structured_prompt_output_is_validated(tiny_model: Path, home: Path):
    argv = ["ground", "shop", "--backend", "transformers", "--model", str(tiny_model), "--prompt", "structured",
            "--limit", "3", "--max-new-tokens", "4", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 0
    rows = description_rows(home / "dataset/shop/descriptions/transformers-structured.jsonl")
    assert [(r["status"], r["reason"]) for r in rows] == [("failed", "invalid_json")] * 3  # words, not JSON


def test_unloadable_model_fails_once_with_a_clear_message(tmp_path: Path, home: Path, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(BackendUnavailableError, match="cannot load vision-language model"):
        TransformersBackend(model=str(tmp_path / "broken")).preflight()
    argv = ["ground", "shop", "--backend", "transformers", "--model", str(tmp_path / "nowhere"), "--no-progress"]
    assert cli.main(argv) == 1
    assert "cannot load vision-language model" in capsys.readouterr().err
