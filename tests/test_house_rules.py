"""The sizes that keep job/'s rooms livable (the README's Layout section names them).

No function is over 50 lines or takes more than 6 parameters (self and cls not
counted), and no module is over 500 lines. When one grows past that it is usually
two ideas; split it rather than raise a limit here.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

JOB = Path(__file__).resolve().parent.parent / "job"

MAX_FUNCTION_LINES = 50
"""From the ``def`` line to the last line of the body, docstring included."""

MAX_PARAMETERS = 6
"""Positional, keyword-only, *args and **kwargs alike; self and cls are not counted."""

MAX_MODULE_LINES = 500


@dataclass(frozen=True)
class Function:
    """One ``def`` in job/, located and measured."""

    where: str
    """'job/x.py:Class.name:line', what a failing test prints."""
    num_lines: int
    num_parameters: int


def functions(path: Path, *, root: Path = JOB.parent) -> list[Function]:
    """Every function and method in ``path``, nested ones included, named from ``root``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Function] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                found.append(Function(
                    where=f"{path.relative_to(root)}:{name}:{child.lineno}",
                    num_lines=child.end_lineno - child.lineno + 1,
                    num_parameters=_count_parameters(child.args)))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def _count_parameters(args: ast.arguments) -> int:
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return len([n for n in names if n not in ("self", "cls")])


def _modules() -> list[Path]:
    return sorted(JOB.rglob("*.py"))


def test_the_scanner_measures_a_method_and_sees_every_module(tmp_path):
    path = tmp_path / "job" / "sample.py"
    path.parent.mkdir()
    path.write_text("class A:\n"
                    "    def m(self, a, /, b, *c, d, **e):\n"
                    "        def inner(x):\n"
                    "            return x\n"
                    "        return inner(1)\n")
    assert [(f.where, f.num_lines, f.num_parameters) for f in functions(path, root=tmp_path)] == [
        ("job/sample.py:A.m:2", 4, 5), ("job/sample.py:A.m.inner:3", 2, 1)]
    assert {JOB / "cli.py", JOB / "submit" / "runs.py"} <= set(_modules())


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(JOB.parent)))
def test_no_module_is_over_500_lines(path):
    num_lines = len(path.read_text().splitlines())
    assert num_lines <= MAX_MODULE_LINES, (
        f"{path.relative_to(JOB.parent)} has {num_lines} lines (at most {MAX_MODULE_LINES});"
        " it is usually two ideas: split it by concern.")


def test_no_function_is_over_50_lines():
    long = [f"{f.where} has {f.num_lines} lines"
            for path in _modules() for f in functions(path)
            if f.num_lines > MAX_FUNCTION_LINES]
    assert not long, f"over {MAX_FUNCTION_LINES} lines: " + "; ".join(long)


def test_no_function_takes_more_than_6_parameters():
    wide = [f"{f.where} takes {f.num_parameters}"
            for path in _modules() for f in functions(path)
            if f.num_parameters > MAX_PARAMETERS]
    assert not wide, f"over {MAX_PARAMETERS} parameters: " + "; ".join(wide)
