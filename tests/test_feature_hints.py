"""Each "make it" hint (`vlm4rec features`, prepare's "next:" lines, a run's missing-file error)
is a command that makes a feature of the declared kind: parsed with the real CLI parser and
followed as the CLI would (ground's output tag, encode's modality and output feature name).

Issue 22: `lvlm` and `slots` were told `--modality image --feature lvlm`, which would store
EfficientNet vectors under that name.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import random_interactions, write_inter
from recbole_vlm4rec import cli
from recbole_vlm4rec.data.feature_status import how_to_make

# What `vlm4rec encode` makes, by source (its --help: default feature per source).
ENCODE_DEFAULT = {"descriptions": "vlm", "template": "text", "image": "visual", "lvlm": "lvlm",
                  "slots": "slots"}
# The kind of feature each conventional name holds.
KIND_OF = {"text": "template", "visual": "image", "vlm": "descriptions", "lvlm": "lvlm",
           "slots": "slots"}


def follow(hint: str, structured_tags: set[str] = frozenset()) -> list[tuple[str, str]]:
    """Parse every `vlm4rec ...` command of ``hint`` and follow them in order: returns
    ``(kind, feature name)`` per encode command; fails on a command the CLI would refuse, or an
    encode that reads a descriptions tag that neither exists nor an earlier ground writes."""
    parser = cli.build_parser()
    made, tags = [], {tag: tag in structured_tags for tag in structured_tags}
    commands = re.findall(r"`(vlm4rec [^`]*)`", hint)
    assert commands, hint
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        if args.command == "ground":
            tag = args.tag or "-".join(filter(None, [args.backend, args.prompt, args.domain]))
            tags[tag] = args.prompt == "structured"
            continue
        assert args.command == "encode", command
        if args.modality in ("lvlm", "slots", "image"):
            kind = args.modality
        else:
            kind = "descriptions" if args.descriptions else "template"
            assert args.descriptions or args.template, command
        if kind == "lvlm":
            assert args.model, command  # --modality lvlm refuses to run without a model
        if kind in ("descriptions", "slots") and args.descriptions != "TAG":
            assert args.descriptions in tags, (command, tags)
            if kind == "slots":  # slots are read from the `fields` of a structured prompt
                assert tags[args.descriptions], (command, tags)
        made.append((kind, args.feature or ENCODE_DEFAULT[kind]))
    return made


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Dataset 'tiny': titles and local images for every item; text, visual, vlm, lvlm, slots
    and an unconventional 'clip' declared, none made."""
    monkeypatch.setenv("VLM4REC_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "dataset" / "tiny"
    write_inter(folder, "tiny", random_interactions(10, 12, 4))
    (folder / "img").mkdir()
    lines = ["item_id:token\ttitle:token_seq\timage:token"]
    for n in range(12):
        (folder / f"img/i{n}.jpg").write_bytes(b"\xff\xd8\xff not decoded by these tests")
        lines.append(f"i{n}\tTitle {n}\timg/i{n}.jpg")
    (folder / "tiny.item").write_text("\n".join(lines) + "\n")
    (folder / "tiny.yaml").write_text(yaml.safe_dump({"item_features": {
        name: None for name in ("text", "visual", "vlm", "lvlm", "slots", "clip")}}))
    return tmp_path


def missing_lines(capsys) -> dict[str, str]:
    assert cli.main(["features", "tiny"]) == 1  # features are missing
    out = capsys.readouterr().out
    return {line.split()[0]: line for line in out.splitlines()[1:]
            if line.startswith("  ") and "missing" in line}


def test_each_hint_makes_a_feature_of_its_kind(home, capsys):
    lines = missing_lines(capsys)
    assert set(lines) == {"text", "visual", "vlm", "lvlm", "slots", "clip"}
    for name, kind in KIND_OF.items():
        made = follow(lines[name])
        assert made[-1] == (kind, name), (name, lines[name])
    assert "--modality image" not in lines["lvlm"] + lines["slots"]
    # an unconventional name: every alternative offered writes that name
    alternatives = follow(lines["clip"])
    assert {feature for _, feature in alternatives} == {"clip"}
    assert {kind for kind, _ in alternatives} == {"descriptions", "template", "image", "lvlm"}


def test_hints_follow_the_descriptions_already_there(home, capsys):
    """A structured descriptions file: slots are encoded from it, no new grounding; a plain
    one: vlm from it, and slots still need a structured grounding."""
    descriptions = home / "dataset/tiny/descriptions"
    descriptions.mkdir()
    (descriptions / "mine.jsonl").write_text(json.dumps(
        {"item_id": "i1", "status": "ok", "text": "a red bib", "fields": None}) + "\n")
    lines = missing_lines(capsys)
    assert follow(lines["vlm"], {"mine"})[-1] == ("descriptions", "vlm")
    assert "vlm4rec ground tiny --backend tagger --prompt structured" in lines["slots"]
    assert follow(lines["slots"])[-1] == ("slots", "slots")
    (descriptions / "qwen-structured.jsonl").write_text(json.dumps(
        {"item_id": "i1", "status": "ok", "text": "{}", "fields": {"colour": "red"}}) + "\n")
    slots = missing_lines(capsys)["slots"]
    assert "ground" not in slots
    assert follow(slots, {"qwen-structured"}) == [("slots", "slots")]


def test_without_local_images_lvlm_and_slots_say_what_is_missing(home):
    folder = home / "dataset/tiny"
    (folder / "tiny.item").write_text("item_id:token\ttitle:token_seq\ni0\tA\n")
    for name in ("lvlm", "slots", "vlm", "visual"):
        hint = how_to_make("tiny", name, {}, folder / "tiny.item", folder)
        assert hint.startswith("needs item images") and "--modality image" not in hint
    hint = how_to_make("tiny", "text", {}, folder / "none.item", folder)  # no item text at all
    assert follow(hint)[-1] == ("template", "text")


def test_prepare_next_lines_for_lvlm_and_slots_make_them(tmp_path, capsys):
    """ml-100k-posters' shipped yaml declares lvlm and slots: prepare's "next:" lines for them
    are commands that make them."""
    posters = tmp_path / "posters"
    (posters / "images").mkdir(parents=True)
    (posters / "images" / "1.jpg").write_bytes(b"\xff\xd8")
    (posters / "ml100k_items_with_posters.tsv").write_text(
        "item_id\tposter_path\n1\timages/1.jpg\n")
    assert cli.main(["prepare", "ml-100k-posters", "--posters", str(posters), "--root",
                     str(tmp_path / "datasets")]) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()
             if line.startswith("next: ") and "(missing)" in line}
    assert {"lvlm", "slots"} <= set(lines)
    for name in ("lvlm", "slots", "vlm", "visual"):
        assert follow(lines[name])[-1] == (KIND_OF[name], name), lines[name]
