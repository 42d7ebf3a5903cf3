"""The tests' own layout (issue 16 point 5): shared helpers live in tests/support, so a
test module never imports another test module, and each helper is defined once."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.helpers import ROOT

TESTS = ROOT / "tests"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every ``import``/``from`` in ``path`` that is inside tests."""
    package = ".".join(path.relative_to(ROOT).parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from . import test_x`` imports a module by its name
            found += [(node.lineno, f"{source}.{alias.name}") for alias in node.names]
            found.append((node.lineno, source))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "tests"]


def test_no_test_module_imports_another_test_module_or_a_conftest():
    offending = []
    for path in sorted(TESTS.rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        for line, name in imported_modules(path):
            last = name.split(".")[-1]
            if last.startswith("test_") or last == "conftest":
                offending.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not offending, "move what is shared into tests/support:\n" + "\n".join(offending)


def test_each_support_helper_is_defined_once_across_the_tests():
    """Not redefined by a test module or a conftest (the load harness in tests/load is a
    program of its own, with its own fast client: not counted)."""
    definitions: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("*.py")):
        tests_own = path.name.startswith("test_") or path.name == "conftest.py" or "support" in path.parts
        if "node_modules" in path.parts or not tests_own:
            continue
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                definitions.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    # the clients, services and processes every test may use (the narrower harnesses,
    # support/virtual.py's connect or support/websocket.py's connected, name common words)
    shared = ("tests/support/clients.py", "tests/support/helpers.py", "tests/support/services.py",
              "tests/support/processes.py", "tests/support/cluster.py")
    support = {name for name, where in definitions.items() if any(w in shared for w in where)}
    twice = {name: where for name, where in definitions.items() if name in support and len(where) > 1}
    assert not twice, f"defined in tests/support and again elsewhere: {twice}"


def test_free_port_is_defined_once_the_load_harness_included():
    defined = [str(path.relative_to(ROOT)) for path in sorted(TESTS.rglob("*.py")) if "node_modules" not in path.parts
               and any(isinstance(node, ast.FunctionDef) and node.name == "free_port"
                       for node in ast.parse(path.read_text(), str(path)).body)]
    assert defined == ["tests/support/services.py"]
