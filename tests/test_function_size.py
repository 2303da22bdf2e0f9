"""No function of the package is longer than 60 lines or has more than 15 branches (issue 23).

Counting rule, on the `ast` of every module under `depth_anything_fast/`: a function's length is
the lines from its `def` (decorators not counted) to its last line, docstring included; its
branches are the nodes of its own body, nested functions and classes left to their own count,
that are one of `if` (and `elif`, and a conditional expression), `for`, `async for`, `while`,
`try`, `except` handler, `with`, `async with`, a boolean operator (`and` / `or`: one per operator
node, whatever the number of operands), `match` case, and each `if` clause of a comprehension.
The synthetic renderer (`recipe/synthetic.py`), a procedural scene description, is exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "depth_anything_fast"
MAX_LINES = 60
MAX_BRANCHES = 15
EXEMPT = {"recipe/synthetic.py"}
_BRANCHES = (ast.If, ast.IfExp, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.ExceptHandler,
             ast.With, ast.AsyncWith, ast.BoolOp, ast.match_case)
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def branches(function: ast.AST) -> int:
    """Branch nodes of `function`'s own body (see the module docstring)."""
    count = 0
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        if isinstance(node, (*_FUNCTIONS, ast.Lambda, ast.ClassDef)):
            continue  # counted on their own (a lambda's body is one expression)
        if isinstance(node, _BRANCHES):
            count += 1
        elif isinstance(node, ast.comprehension):
            count += len(node.ifs)
        stack.extend(ast.iter_child_nodes(node))
    return count


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [node for node in ast.walk(tree) if isinstance(node, _FUNCTIONS)]


def _too_big(path: Path) -> list[str]:
    out = []
    for f in _functions(ast.parse(path.read_text(), str(path))):
        lines = f.end_lineno - f.lineno + 1
        n = branches(f)
        if lines > MAX_LINES or n > MAX_BRANCHES:
            rel = path.relative_to(ROOT).as_posix()
            out.append(f"{rel}:{f.lineno} {f.name}: {lines} lines, {n} branches")
    return out


def test_no_function_over_the_limits():
    files = [p for p in sorted(ROOT.rglob("*.py")) if p.relative_to(ROOT).as_posix() not in EXEMPT]
    assert len(files) > 50
    found = [line for path in files for line in _too_big(path)]
    assert not found, (
        f"functions over {MAX_LINES} lines or {MAX_BRANCHES} branches:\n" + "\n".join(found))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f(x):\n    return x", 0),
        ("def f(x):\n    if x and y or z:\n        pass\n    elif x:\n        pass", 4),
        ("def f(x):\n    for a in b:\n        while c:\n            pass", 2),
        ("def f(x):\n    try:\n        pass\n    except A:\n        pass\n    except B:\n"
         "        pass", 3),
        ("def f(x):\n    with a:\n        return [y for y in x if y if z]", 3),
        ("def f(x):\n    return a if b else c", 1),
        ("def f(x):\n    def g():\n        if a:\n            pass\n    return g", 0),
        ("def f(x):\n    match x:\n        case 1:\n            pass\n        case _:\n"
         "            pass", 2),
    ],
)
def test_branch_counting_rule(source: str, expected: int):
    function = _functions(ast.parse(source))[0]  # the outer one
    assert branches(function) == expected
