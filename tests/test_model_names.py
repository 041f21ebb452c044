"""No model is named in code outside models/: the rest of the pipeline asks the registry.

A name in code (an identifier, or a string literal that is exactly a model's name) outside
``models/`` is a decision about one model taken somewhere else, which is what the model contract
(models/contract.py) exists to prevent. Prose in docstrings and help texts may mention models.
compat.py and speedups.py are exempt: they patch RecBole's own classes, by name.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

from recbole_vlm4rec.models import all_model_info

PACKAGE = Path(__file__).resolve().parents[1] / "recbole_vlm4rec"
EXEMPT = {"compat.py", "speedups.py"}


def docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def model_names_in(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) for each identifier or exact string literal naming a model."""
    skip = docstring_lines(ast.parse(source))
    found = []
    previous = None
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        after_dot, previous = previous == ".", token.string
        if token.start[0] in skip or after_dot:  # random.Random is an attribute, not a model
            continue
        text = token.string
        if token.type == tokenize.STRING:
            try:
                text = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                continue
            if not isinstance(text, str):
                continue
        elif token.type != tokenize.NAME:
            continue
        if text in names:
            found.append((token.start[0], text))
    return found


def test_the_scan_finds_a_model_name():
    source = ('x = "LightGCN"\ndef f():\n    """VLM4Rec prose is fine."""\n    return VLM4Rec\n'
              'y = random.Random(0)\n')
    assert model_names_in(source, {"LightGCN", "VLM4Rec", "Random"}) == [(1, "LightGCN"),
                                                                          (4, "VLM4Rec")]


def test_no_model_name_in_code_outside_models():
    names = set(all_model_info())
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "models" or path.name in EXEMPT:
            continue
        for line, name in model_names_in(path.read_text(encoding="utf-8"), names):
            offenders.append(f"recbole_vlm4rec/{relative}:{line}: {name}")
    assert offenders == [], "\n".join(offenders)
