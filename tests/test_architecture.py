"""The package layout: stages import only the formats layer and stages before them.

Order: formats -> data -> grounding -> encoding -> models -> run -> benchmark / serving. Every
import counts, module-level or inside a function (a lazy import runs backwards just the same).

Inside a stage, imports form no cycle: two modules that import each other (even lazily, or only
for type hints) are one module split in the wrong place; the shared piece belongs in a third
module both import. Modules loaded by name at run time (``importlib.import_module`` in the model
and backend registries) are not imports here.
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
    "compat_distributed": 0.4,  # compat installs its patches of RecBole's torch.distributed path
    "method_patch": 0.3,  # how compat and compat_distributed put a method in RecBole's place
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


def module_name(path: Path, package: Path) -> str:
    """``<package>/run/cli.py`` -> ``recbole_vlm4rec.run.cli``; a package's ``__init__`` is the
    package itself."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, package: Path | None = None) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in a file, at any depth. ``from a.b import c`` also
    yields ``a.b.c`` (``c`` may be a module); relative imports are resolved when ``package`` is
    given."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:
                if package is None:
                    continue
                here = module_name(path, package).split(".")
                if path.name != "__init__.py":
                    here = here[:-1]
                here = here[:len(here) - (node.level - 1)]
                base = ".".join(here + ([node.module] if node.module else []))
            if not base:
                continue
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name != "*"]
    return found


def backward_imports(package: Path) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        stage = stage_of(".".join(path.relative_to(package.parent).with_suffix("").parts))
        if stage in TOP_LEVEL:
            continue
        if stage not in STAGE_RANK:
            problems.append(f"{path}: module outside every stage ({stage}); add it to a stage")
            continue
        reported = set()  # `from a.b import c` yields a.b and a.b.c: one problem per import
        for line, imported in imports_of(path, package):
            target = stage_of(imported)
            if target is None or target == stage or (line, target) in reported:
                continue
            reported.add((line, target))
            if target not in STAGE_RANK:
                problems.append(f"{path}:{line}: imports {imported} (not a stage)")
            elif STAGE_RANK[target] >= STAGE_RANK[stage]:
                problems.append(f"{path}:{line}: {stage} imports {imported} ({target} is not "
                                "before it in formats -> data -> grounding -> encoding -> models "
                                "-> run -> benchmark / serving)")
    return problems


def import_graph(package: Path) -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """Module -> the package's modules it imports, and the line of each first such import."""
    paths = {module_name(path, package): path for path in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {module: set() for module in paths}
    lines: dict[tuple[str, str], int] = {}
    for module, path in paths.items():
        for line, imported in imports_of(path, package):
            if imported in paths and imported != module:
                graph[module].add(imported)
                lines.setdefault((module, imported), line)
    return graph, lines


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the groups of modules that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return groups


def import_cycles(package: Path) -> list[str]:
    """One line per group of modules that import each other in a cycle, with the imports
    (``module:line -> module``) that close it."""
    graph, lines = import_graph(package)
    problems = []
    for group in sorted(_strongly_connected(graph)):
        members = set(group)
        edges = [f"{a}:{lines[(a, b)]} -> {b}" for a in group for b in sorted(graph[a])
                 if b in members]
        problems.append(f"import cycle among {', '.join(group)}: {'; '.join(edges)}")
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


def test_no_import_cycle_inside_a_stage():
    # Backward imports are refused above, so any cycle left lies inside one stage.
    assert import_cycles(PACKAGE) == []


def test_the_cycle_check_catches_lazy_type_only_and_relative_imports(tmp_path):
    package = tmp_path / "recbole_vlm4rec"
    (package / "benchmark").mkdir(parents=True)
    (package / "benchmark" / "__init__.py").write_text("")
    (package / "benchmark" / "report.py").write_text(
        "def write():\n    from recbole_vlm4rec.benchmark import plots\n    return plots\n")
    (package / "benchmark" / "plots.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from .report import Report\n")  # relative, and for type hints only
    (package / "benchmark" / "stats.py").write_text("import recbole_vlm4rec.benchmark.plots\n")
    problems = import_cycles(package)
    assert problems == ["import cycle among recbole_vlm4rec.benchmark.plots, "
                        "recbole_vlm4rec.benchmark.report: recbole_vlm4rec.benchmark.plots:3 -> "
                        "recbole_vlm4rec.benchmark.report; recbole_vlm4rec.benchmark.report:2 -> "
                        "recbole_vlm4rec.benchmark.plots"]
    (package / "benchmark" / "plots.py").write_text("import numpy\n")
    assert import_cycles(package) == []


@pytest.mark.parametrize("stage", sorted(STAGE_RANK))
def test_every_stage_exists(stage):
    assert (PACKAGE / stage).is_dir() or (PACKAGE / f"{stage}.py").is_file()
