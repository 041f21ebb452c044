"""The shipped benchmark specs and what the docs say about them: one label means one model (and
settings) in every spec, and every cell count written in the docs or a spec comment is the plan's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from recbole_vlm4rec.benchmark.cli import plan_of
from recbole_vlm4rec.benchmark.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "recbole_vlm4rec" / "configs" / "benchmarks"
# The docs screenshot's spec is not shipped but its labels appear in docs/images.
SPECS = sorted(SHIPPED.glob("*.yaml")) + sorted((ROOT / "benchmarks").glob("*.yaml"))


def label_meanings(paths: list[Path]) -> dict[str, dict[str, list[str]]]:
    """label -> {"<model> <settings as JSON>": [spec files that give it that meaning]}."""
    meanings: dict[str, dict[str, list[str]]] = {}
    for path in paths:
        for label, entry in load_spec(path).models.items():
            meaning = f"{entry['model']} {json.dumps(entry['overrides'], sort_keys=True)}"
            meanings.setdefault(label, {}).setdefault(meaning, []).append(path.name)
    return meanings


def test_one_label_means_one_model_with_one_set_of_settings_in_every_spec():
    clashes = {label: found for label, found in label_meanings(SPECS).items() if len(found) > 1}
    assert clashes == {}, "rename the labels so each names one model and settings"


def test_the_label_check_catches_a_label_used_for_two_models(tmp_path):
    (tmp_path / "a.yaml").write_text("models: {BPR: {}}\ndatasets: [d]\nseeds: [1]\n")
    (tmp_path / "b.yaml").write_text("models: {BPR: {model: BPRMF}}\ndatasets: [d]\nseeds: [1]\n")
    (tmp_path / "c.yaml").write_text("models: {BPR: {epochs: 2}}\ndatasets: [d]\nseeds: [1]\n")
    found = label_meanings(sorted(tmp_path.glob("*.yaml")))["BPR"]
    assert found == {"BPR {}": ["a.yaml"], "BPRMF {}": ["b.yaml"], 'BPR {"epochs": 2}': ["c.yaml"]}


# "<N> cells" and "<M> of them train", said of the nearest shipped spec named before them in the
# same paragraph (or, in a spec's comments, of that spec); --datasets / --seeds between the name
# and the count narrow the plan as they narrow the grid.
SPEC_NAME = re.compile(r"\b([\w-]+)\.yaml\b")
COUNT = re.compile(r"\b(\d[\d,]*) cells\b(?:, (\d[\d,]*) of them train)?")
NARROW = re.compile(r"--(datasets|seeds)[ =]([\w,.-]+)")


def paragraphs(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".yaml":  # the comment lines, joined
        text = "\n".join(line.lstrip()[1:].strip() if line.lstrip().startswith("#") else ""
                         for line in text.splitlines())
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n|\n(?=\|)", text)]


def stated_counts(path: Path) -> list[tuple[str | None, dict[str, list[str]], int, int | None]]:
    """(spec name or None, narrowing options, cells, trained cells or None) per stated count."""
    found = []
    own = path.stem if path.suffix == ".yaml" and path.parent == SHIPPED else None
    for paragraph in paragraphs(path):
        for match in COUNT.finditer(paragraph):
            before = paragraph[:match.start()]
            names = [m for m in SPEC_NAME.finditer(before) if (SHIPPED / f"{m.group(1)}.yaml").is_file()]
            spec = names[-1].group(1) if names else own
            after_name = before[names[-1].end():] if names else ""
            narrow: dict[str, list[str]] = {}
            for option, value in NARROW.findall(after_name):
                narrow[option] = value.split(",")
            trained = int(match.group(2).replace(",", "")) if match.group(2) else None
            found.append((spec, narrow, int(match.group(1).replace(",", "")), trained))
    return found


def planned(spec_name: str, narrow: dict[str, list[str]]) -> tuple[int, int]:
    spec = load_spec(SHIPPED / f"{spec_name}.yaml")
    if "datasets" in narrow:
        spec.datasets = {name: spec.datasets[name] for name in narrow["datasets"]}
    if "seeds" in narrow:
        spec.seeds = [int(seed) for seed in narrow["seeds"]]
    plan = plan_of(spec)  # every dataset counted as prepared
    return plan.cells, len(plan.trained_epochs)


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted(SHIPPED.glob("*.yaml"))]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_cell_counts_in_docs_and_spec_comments_are_the_plan(path):
    for spec, narrow, cells, trained in stated_counts(path):
        assert spec is not None, f"{path.name}: '{cells} cells' names no shipped spec before it"
        plan_cells, plan_trained = planned(spec, narrow)
        assert cells == plan_cells, f"{path.name}: {spec}.yaml {narrow} plans {plan_cells} cells"
        if trained is not None:
            assert trained == plan_trained, \
                f"{path.name}: {spec}.yaml {narrow} plans {plan_trained} trained cells"


def test_the_count_check_reads_names_options_and_spec_comments(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("`paper.yaml` plans 126 cells, 21 of them train.\n\n"
                   "`vlm4rec bench smoke.yaml --datasets ml-100k --seeds 1` runs 4 cells.\n\n"
                   "Some 12 cells of nothing.\n")
    assert stated_counts(doc) == [("paper", {}, 126, 21),
                                  ("smoke", {"datasets": ["ml-100k"], "seeds": ["1"]}, 4, None),
                                  (None, {}, 12, None)]
    assert planned("paper", {}) != (126, 21)  # the count the issue found stale
    assert planned("smoke", {"datasets": ["ml-100k"], "seeds": ["1"]}) == (4, 1)
