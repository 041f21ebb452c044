"""The package layout: stages import only the formats layer and stages before them.

Order: formats -> data -> grounding -> encoding -> models -> run -> benchmark / serving. Every
import counts, module-level or inside a function (a lazy import runs backwards just the same).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import recbole_vlm4rec

PACKAGE = Path(recbole_vlm4rec.__file__).resolve().parent
STAGE_RANK = {
    "formats": 0, "speedups": 0,
    "compat": 0.5,  # installs the speed-ups and formats' tie-safe top-k into RecBole
    "data": 1, "grounding": 2, "encoding": 3, "models": 4, "run": 5,
    "benchmark": 6, "serving": 6,
}
TOP_LEVEL = {"cli", "__init__"}  # the command dispatcher lists every stage's commands


def stage_of(module: str) -> str | None:
    """``recbole_vlm4rec.<stage>...`` -> stage; None for modules outside the package."""
    parts = module.split(".")
    if parts[0] != "recbole_vlm4rec" or len(parts) < 2:
        return None
    return parts[1]


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "recbole_vlm4rec":  # from recbole_vlm4rec import compat
                found += [(node.lineno, f"recbole_vlm4rec.{a.name}") for a in node.names]
    return found


def backward_imports(package: Path) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        stage = stage_of(module)
        if stage in TOP_LEVEL:
            continue
        if stage not in STAGE_RANK:
            problems.append(f"{path}: module outside every stage ({stage}); add it to a stage")
            continue
        for line, imported in imports_of(path):
            target = stage_of(imported)
            if target is None or target == stage:
                continue
            if target not in STAGE_RANK:
                problems.append(f"{path}:{line}: imports {imported} (not a stage)")
            elif STAGE_RANK[target] >= STAGE_RANK[stage]:
                problems.append(f"{path}:{line}: {stage} imports {imported} ({target} is not "
                                "before it in formats -> data -> grounding -> encoding -> models "
                                "-> run -> benchmark / serving)")
    return problems


def test_no_import_runs_backwards_along_the_pipeline():
    assert backward_imports(PACKAGE) == []


def test_the_check_catches_a_lazy_backward_import(tmp_path):
    package = tmp_path / "recbole_vlm4rec"
    (package / "data").mkdir(parents=True)
    (package / "run").mkdir()
    (package / "data" / "thing.py").write_text(
        "def f():\n    from recbole_vlm4rec.run.runner import run\n    return run\n")
    (package / "run" / "ok.py").write_text("from recbole_vlm4rec.data import thing\n")
    problems = backward_imports(package)
    assert len(problems) == 1 and "thing.py:2: data imports recbole_vlm4rec.run.runner" in problems[0]


@pytest.mark.parametrize("stage", sorted(STAGE_RANK))
def test_every_stage_exists(stage):
    assert (PACKAGE / stage).is_dir() or (PACKAGE / f"{stage}.py").is_file()
