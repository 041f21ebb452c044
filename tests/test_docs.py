"""Committed docs hold only what a reader can rerun from the repository: no machine paths, no link
to a file or anchor that is not there, no script that is not in the checkout."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "recbole_vlm4rec"
# Paths of one machine: the workspace, temp folders, root's and users' home folders.
MACHINE_PATH = re.compile(r"(?<![\w.-])(/work/|/tmp/|/root\b|/home/[\w.-]+|/Users/[\w.-]+"
                          r"|[A-Za-z]:\\Users\\)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# A script named in the text (`step_bench.py`, `benchmarks/x.py`) or a path under a folder of the
# checkout (`docs/images/x.png`) must exist in it; other names are outputs (card.json, ...).
SCRIPT = re.compile(r"(?<![\w/.<>-])((?:[\w.-]+/)*[\w-]+\.py)\b")
CHECKOUT_PATH = re.compile(r"(?<![\w/.<>-])((?:benchmarks|tests|docs)/[\w./-]*[\w-]\.\w+)\b")
# Files of other projects that docs name on purpose (MMRec's entry point in the parity commands).
OTHER_PROJECTS = {"main.py"}


def committed_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist)
        return sorted(p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts)
    return [ROOT / name for name in listed]


FILES = committed_files()
DOCS = [p for p in FILES if p.suffix == ".md" and (p.parent == ROOT or "docs" in
                                                    p.relative_to(ROOT).parts[:1])]
# Report output published into the docs (report.md, CSVs, provenance.json), the specs, and the
# scripts' docstrings are read by people too.
TEXTS = DOCS + [p for p in FILES if p.suffix in (".csv", ".json", ".yaml", ".py")
                and p.relative_to(ROOT).parts[0] in ("docs", "benchmarks", "configs")]
TEXTS += [p for p in FILES if p.suffix == ".yaml" and "configs" in p.relative_to(ROOT).parts]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces
    to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        if match := re.match(r"#{1,6}\s+(.*?)\s*#*$", line):
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found |= set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", line))
    return found


def machine_paths(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if MACHINE_PATH.search(line)]


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists() or root not in [linked, *linked.parents]:
            problems.append(f"{target}: no such file in the repository")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{target}: {linked.name} has no heading with anchor #{anchor}")
    return problems


def missing_files(path: Path, root: Path = ROOT, files: list[Path] | None = None) -> list[str]:
    """Files the text names (``benchmarks/x.py``, ``bprmf.py``) that the checkout lacks."""
    files = FILES if files is None else files
    names = {p.name for p in files}
    relative = {str(p.relative_to(root)) for p in files}
    problems = []
    text = path.read_text(encoding="utf-8")
    for name in SCRIPT.findall(text) + CHECKOUT_PATH.findall(text):
        if name in OTHER_PROJECTS:
            continue
        if "/" in name:
            candidates = [name, f"recbole_vlm4rec/{name}",
                          str((path.parent / name).resolve().relative_to(root))
                          if root in (path.parent / name).resolve().parents else name]
            if not any(c in relative or (root / c).is_dir() for c in candidates) \
                    and not name.split("/")[-1] in names:
                problems.append(name)
        elif name not in names:
            problems.append(name)
    return sorted(set(problems))


README_SECTION = re.compile(r"README(?:\.md)?,\s*\"([^\"]+)\"")  # README, "Section name"


def stale_section_names(text: str, readme: Path = ROOT / "README.md") -> list[str]:
    """Sections of the README cited by name (``README, "Results"``) that it does not have."""
    headings = {slug(h) for h in re.findall(r"^#{1,6}\s+(.*?)\s*$", readme.read_text(), re.M)}
    return [name for name in README_SECTION.findall(" ".join(text.split()))
            if slug(name) not in headings]


@pytest.mark.parametrize("path", sorted(set(TEXTS)), ids=lambda p: str(p.relative_to(ROOT)))
def test_readme_sections_cited_by_name_exist(path):
    assert stale_section_names(path.read_text(encoding="utf-8", errors="replace")) == []


@pytest.mark.parametrize("path", sorted(set(TEXTS)), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_machine_path_in_committed_docs_specs_and_report_output(path):
    assert machine_paths(path.read_text(encoding="utf-8", errors="replace")) == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_points_to_a_file_and_anchor_in_the_repository(path):
    assert broken_links(path) == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_the_docs_name_is_in_the_repository(path):
    assert missing_files(path) == []


def test_the_checks_catch_paths_links_anchors_and_missing_scripts(tmp_path):
    assert machine_paths("run /work/scratch/x/step_bench.py\nok dataset/x\n"
                         "home /home/alice/data\nC:\\Users\\bob\\x\n/tmp/out\n~/models ok") == [
        "run /work/scratch/x/step_bench.py", "home /home/alice/data", "C:\\Users\\bob\\x",
        "/tmp/out"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Title\n\n## The pipeline, end to end\n")
    doc = tmp_path / "docs" / "a.md"
    doc.write_text("[ok](../README.md#the-pipeline-end-to-end) [old](../README.md#the-pipeline)\n"
                   "[gone](gone.md) [here](#a-b) [web](https://example.org)\n\n## A `b`\n\n"
                   "`python step_bench.py` and `benchmarks/bench_models.py`\n")
    assert broken_links(doc, tmp_path) == [
        "../README.md#the-pipeline: README.md has no heading with anchor #the-pipeline",
        "gone.md: no such file in the repository"]
    files = [tmp_path / "README.md", doc, tmp_path / "benchmarks" / "bench_models.py"]
    assert missing_files(doc, tmp_path, files) == ["step_bench.py"]
    cited = '# (README, "The pipeline, end to end")\nREADME, "The\npipeline, end to end" too'
    assert stale_section_names(cited, tmp_path / "README.md") == []
    assert stale_section_names('README, "The pipeline"', tmp_path / "README.md") == [
        "The pipeline"]
