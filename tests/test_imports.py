"""The import structure DESIGN.md promises, read from the source (not by importing it):

* ``triage/`` imports none of ``training``, ``export``, ``serving``: not by statement (module level or
  inside a function), not by string (``importlib.import_module("training...")``, ``__import__``);
* no import cycle among the project's modules, counting the imports inside functions and the string
  imports too (only ``if TYPE_CHECKING:`` blocks are left out: they never run).

The graph is built with :mod:`ast` and checked with :mod:`graphlib` (stdlib), so the test needs nothing
installed and sees every import a module can execute.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("triage", "training", "export", "serving")
UPPER = ("training", "export", "serving")  # what triage/ must never import
DYNAMIC = {"import_module", "__import__", "find_spec"}  # importlib calls that take a module name


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node that can run: the body of ``if TYPE_CHECKING:`` is skipped (its ``else`` is kept)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_names(path: Path, name: str) -> Iterator[tuple[int, str]]:
    """(line, dotted module name) of every import in the file: statements anywhere, relative ones
    resolved, ``from a import b`` as ``a.b`` (a submodule or not), and constant strings passed to
    ``importlib.import_module`` / ``__import__`` / ``find_spec``."""
    is_package = path.name == "__init__.py"
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if called in DYNAMIC and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield node.lineno, arg.value


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports: the longest existing module of each dotted name, and the
    packages above it (importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first) except
    the importer's own."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 2)}
        targets = set()
        for _, dotted in imported_names(path, name):
            parts = dotted.split(".")
            prefixes = [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
            found = [p for p in prefixes if p in modules]
            targets |= {p for p in found if p not in own}
        graph[name] = targets
    return graph


def test_the_runtime_imports_no_upper_package() -> None:
    offences = []
    for name, path in project_modules().items():
        if name.split(".")[0] != "triage":
            continue
        for line, dotted in imported_names(path, name):
            if dotted.split(".")[0] in UPPER:
                offences.append(f"{path.relative_to(ROOT)}:{line} imports {dotted}")
    assert not offences, "\n".join(offences)


def test_no_import_cycle_among_the_project_modules() -> None:
    sorter = graphlib.TopologicalSorter(import_graph())
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        pytest.fail("import cycle: " + " -> ".join(exc.args[1]))


def test_the_scanner_sees_what_it_must(tmp_path: Path) -> None:
    """The checks above are only as good as the scanner: function-level, relative, string and
    TYPE_CHECKING-guarded imports on a file written here."""
    source = (
        "from __future__ import annotations\n"
        "import importlib\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import serving.store\n"
        "def f():\n"
        "    from training import run\n"
        "    from ..io import dicom\n"
        "    return importlib.import_module('export.pipeline')\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(source, encoding="utf-8")
    names = {dotted for _, dotted in imported_names(path, "triage.cascade.mod")}
    assert {"training.run", "triage.io.dicom", "export.pipeline"} <= names
    assert "serving.store" not in names
    sorter = graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}})
    with pytest.raises(graphlib.CycleError):
        sorter.prepare()
