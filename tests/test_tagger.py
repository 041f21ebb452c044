"""The offline tagger grounding backend: colour names, labelled output, slots, model_id."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from recbole_vlm4rec.grounding.backends import GroundingRequest, create_backend
from recbole_vlm4rec.grounding.backends import tagger as tagger_module
from recbole_vlm4rec.grounding.backends.tagger import (
    TAGGER_PREFIX,
    TaggerBackend,
    dominant_colours,
    imagenet_labels,
)


def request(item_id: str, colour, slots=None, size=(120, 90)) -> GroundingRequest:
    return GroundingRequest(item_id, Image.new("RGB", size, colour), "sha-" + item_id,
                            "describe the item", structured_slots=slots)


@pytest.mark.parametrize("rgb, name", [
    ((255, 0, 0), "red"), ((0, 0, 255), "blue"), ((255, 255, 255), "white"),
    ((0, 0, 0), "black"), ((250, 245, 10), "yellow"), ((0, 150, 0), "green"),
    ((10, 10, 100), "navy"), ((130, 130, 130), "grey"),
])
def test_solid_colours_get_their_name(rgb, name):
    assert dominant_colours(Image.new("RGB", (50, 50), rgb)) == [(name, 1.0)]


def test_two_colour_image_lists_both_by_share():
    image = Image.new("RGB", (100, 100), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 100, 70))  # 70% red, 30% white
    colours = dominant_colours(image)
    assert [name for name, _ in colours] == ["red", "white"]
    assert colours[0][1] == pytest.approx(0.7, abs=0.02)


def test_labels_file_has_the_1000_imagenet_classes():
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[0] == "tench" and labels[1] == "goldfish" and labels[999] == "toilet paper"


def test_tagger_describes_solid_images_as_labelled_tagger_output():
    backend = create_backend("tagger", top_k=2)
    outputs = backend.describe([
        request("r", (255, 0, 0)),
        request("b", (0, 0, 255)),
        request("s", (255, 0, 0), slots=("category", "Colour", "material", "occasion")),
    ])
    assert [o.item_id for o in outputs] == ["r", "b", "s"]
    assert all(o.ok for o in outputs)
    assert outputs[0].text.startswith(TAGGER_PREFIX) and "not an LVLM" in outputs[0].text
    assert outputs[0].text.endswith("; mostly red.")
    assert outputs[1].text.endswith("; mostly blue.")
    slots = json.loads(outputs[2].text)
    assert list(slots) == ["category", "Colour", "material", "occasion"]
    assert slots["Colour"] == "red"
    assert slots["category"] and slots["category"].split(", ")[0] in imagenet_labels()
    assert slots["material"] == "" and slots["occasion"] == ""
    assert backend.describe([]) == []


def test_model_id_changes_with_options_labels_and_palette(tmp_path, monkeypatch):
    base = TaggerBackend().model_id()
    assert base.startswith("tagger:efficientnet-lite0@")
    assert TaggerBackend().model_id() == base
    assert TaggerBackend(top_k=5).model_id() != base
    assert TaggerBackend(n_colours=1).model_id() != base

    labels = tmp_path / "labels.txt"
    labels.write_text(tagger_module.LABELS_FILE.read_text().replace("goldfish", "gold fish"))
    monkeypatch.setattr(tagger_module, "LABELS_FILE", labels)
    assert TaggerBackend().model_id() != base
    monkeypatch.undo()

    monkeypatch.setattr(tagger_module, "PALETTE", tagger_module.PALETTE[:-1])
    assert TaggerBackend().model_id() != base


def test_tagger_answers_to_the_shipped_structured_prompt_are_accepted():
    """The tagger fills 2 of the 7 default slots; the prompt's min_filled (0.5) alone would
    reject every item as degenerate, so the backend lowers it and the pipeline passes it on."""
    from recbole_vlm4rec.grounding.prompts import OutputRejected, load_prompt

    prompt = load_prompt("structured")
    backend = create_backend("tagger", top_k=1)
    [output] = backend.describe([request("s", (0, 0, 255), slots=tuple(prompt.slots))])
    with pytest.raises(OutputRejected):
        prompt.parse(output.text)
    text, fields = prompt.parse(output.text, backend.structured_min_filled)
    assert fields["colour"] == "blue" and "blue" in text.lower()
