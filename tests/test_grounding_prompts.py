"""Prompt files: loading, domains, versions, and validation of free-text and JSON answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recbole_vlm4rec.grounding.prompts import (
    OutputRejected,
    PromptError,
    available_prompts,
    check_free_text,
    load_prompt,
    parse_structured,
)

SLOTS = {"category": "kind", "style": "style", "material": "material", "audience": "who"}


def test_shipped_prompts_load_and_render():
    assert {"preference", "structured"} <= set(available_prompts())
    free = load_prompt("preference")
    assert free.format == "text" and free.structured_slots is None
    assert "style" in free.render() and "Catalogue information" not in free.render()
    assert free.render("Red  dress\n by X").endswith("Catalogue information about the item: Red dress by X")
    movies = load_prompt("structured", "movies")
    assert movies.structured_slots == ("genre", "mood", "visual_style", "setting", "audience")
    schema = movies.render().split("{", 1)[1].rsplit("}", 1)[0]
    assert set(json.loads("{" + schema + "}")) == set(movies.slots)
    assert load_prompt("structured", "no-such-domain").slots == load_prompt("structured").slots


def test_domain_folder_overrides_and_digest_tracks_every_edit(tmp_path: Path):
    base = "name: p\nversion: 1\nformat: text\nuser: describe it\n"
    (tmp_path / "p.yaml").write_text(base)
    (tmp_path / "toys").mkdir()
    (tmp_path / "toys" / "p.yaml").write_text(base.replace("describe it", "describe the toy"))
    assert load_prompt("p", directory=tmp_path).render() == "describe it"
    assert load_prompt("p", "toys", directory=tmp_path).render() == "describe the toy"
    before = load_prompt("p", directory=tmp_path)
    (tmp_path / "p.yaml").write_text(base + "min_words: 3\n")  # same version, different file
    after = load_prompt("p", directory=tmp_path)
    assert before.version == after.version and before.prompt_key("x") != after.prompt_key("x")
    assert load_prompt("p", "toys", directory=tmp_path).digest != load_prompt("p", "x", directory=tmp_path).digest


@pytest.mark.parametrize("content, message", [
    ("name: p\nversion: 1\n", "missing required field 'user'"),
    ("name: p\nversion: 1\nuser: x\nformat: xml\n", "'format' is 'xml'"),
    ("name: p\nversion: 1\nuser: x\nformat: json\nslots: {default: {a: b}}\n", "{schema}"),
    ("name: p\nversion: 1\nuser: '{schema}'\nformat: json\nslots: {toys: {a: b}}\n", "no slots for domain"),
    ("- a list\n", "expected a mapping"),
])
def test_bad_prompt_files_name_the_file_and_field(tmp_path: Path, content: str, message: str):
    (tmp_path / "p.yaml").write_text(content)
    with pytest.raises(PromptError, match=None) as error:
        load_prompt("p", directory=tmp_path)
    assert message in str(error.value) and "p.yaml" in str(error.value)


def test_unknown_prompt_lists_the_known_ones(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("name: a\nversion: 1\nuser: x\n")
    with pytest.raises(PromptError, match="prompts in .*: a"):
        load_prompt("b", directory=tmp_path)


def test_free_text_checks():
    assert check_free_text("  A soft  cotton\nshirt for summer days. ", 3) == "A soft cotton shirt for summer days."
    for raw, reason in [(None, "empty_output"), ("   ", "empty_output"), ("ok then", "degenerate_output"),
                        ("the " * 30, "degenerate_output")]:
        with pytest.raises(OutputRejected) as error:
            check_free_text(raw, 5)
        assert error.value.reason == reason


def test_structured_answer_is_validated_and_rendered():
    answer = ('Sure! ```json\n{"Category": "sneakers", "style": ["sporty", "minimal"], '
              '"material": "leather", "audience": "unknown", "extra": 1}\n```')
    text, fields = parse_structured(answer, SLOTS)
    assert fields == {"category": "sneakers", "style": ["sporty", "minimal"], "material": "leather",
                      "audience": "unknown"}
    assert text == "Category: sneakers. Style: sporty, minimal. Material: leather."


@pytest.mark.parametrize("answer, reason", [
    ("", "empty_output"),
    ("a sporty sneaker", "invalid_json"),
    ('{"category": "shoe", "style": ', "invalid_json"),
    ('["category"]', "invalid_json"),
    ('{"category": "shoe", "style": "x"}', "schema_mismatch"),
    ('{"category": {"a": 1}, "style": "x", "material": "y", "audience": "z"}', "schema_mismatch"),
    ('{"category": "shoe", "style": "unknown", "material": "", "audience": "n/a"}', "degenerate_output"),
])
def test_structured_answer_failures(answer: str, reason: str):
    with pytest.raises(OutputRejected) as error:
        parse_structured(answer, SLOTS)
    assert error.value.reason == reason
