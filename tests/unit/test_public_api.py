"""The architecture, kept honest by tests (as trio's test_public_api does):

- ``broker`` (and ``broker.client``) export exactly what an embedding program may use:
  every public name is in ``__all__`` once, and everything ``__all__`` names exists;
- no module of the project imports a private name from outside its own package;
- the layer contract in pyproject.toml holds (import-linter, as ``make test`` runs it);
- the import graph of broker and actors has no cycle, TYPE_CHECKING imports included.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import grimp
import pytest

import broker
import broker.client
from tests.support.helpers import ROOT

# What the README and broker/__init__.py promise embedders. A change here is an API change.
PUBLIC = {
    # run a broker
    "serve", "BrokerHandle",
    # configure it
    "Config", "load_config", "ConfigError",
    # the Python client
    "open_client", "BrokerClient", "ReconnectPolicy", "ClientClosed",
    # what BrokerHandle.publish / .chat raise, and the code a ProtocolError carries
    "ProtocolError", "ErrorCode", "StoreError", "SeqConflict", "RoomUnavailable", "BackplaneUnavailable",
    "GroupError",
}
CLIENT_PUBLIC = {"open_client", "BrokerClient", "ReconnectPolicy", "ClientClosed"}
PACKAGES = ("broker", "actors")


def public_names(module: types.ModuleType) -> set[str]:
    """The names a ``from module import *`` reader would take for API: not private, not
    a submodule (importing ``broker.app`` sets ``broker.app`` as an attribute)."""
    return {name for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
            and name not in ("annotations",)}  # ``from __future__ import annotations``


@pytest.mark.parametrize("module", [broker, broker.client], ids=lambda m: m.__name__)
def test_every_public_name_is_in_all_once_and_all_names_only_what_exists(module):
    exported = list(module.__all__)
    duplicates = sorted({name for name in exported if exported.count(name) > 1})
    assert not duplicates, f"{module.__name__}.__all__ names these twice: {duplicates}"
    undefined = sorted(name for name in exported if not hasattr(module, name))
    assert not undefined, f"{module.__name__}.__all__ names what the module does not define: {undefined}"
    missing = sorted(public_names(module) - set(exported))
    assert not missing, f"public in {module.__name__} but missing from __all__ (add it, or import it as _name): {missing}"


def test_the_public_api_is_what_embedders_are_promised():
    assert set(broker.__all__) == PUBLIC
    assert set(broker.client.__all__) == CLIENT_PUBLIC
    for name in CLIENT_PUBLIC:  # one object under both names, not two classes
        assert getattr(broker, name) is getattr(broker.client, name)
    for name in PUBLIC:  # only the project's own objects, never a re-exported dependency
        assert getattr(broker, name).__module__.startswith("broker."), name


def module_name(path: Path) -> tuple[str, str]:
    """(module, package it belongs to) for a source file under ROOT."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def private_imports(source_text: str, module: str, package: str) -> list[str]:
    """The imports in ``module`` (of ``package``) of a private name, or from a private
    module, that lives outside the module's own package."""
    found = []
    for node in ast.walk(ast.parse(source_text, module)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [(source, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [(alias.name, "") for alias in node.names]
        else:
            continue
        for source, name in targets:
            if source.split(".")[0] not in PACKAGES:
                continue  # the standard library's or a dependency's business
            own = source == package or source.startswith(package + ".")
            private = [part for part in [*source.split("."), name] if is_private(part)]
            if private and not own:
                found.append(f"{module}:{node.lineno} imports {'.'.join(filter(None, (source, name)))}")
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def project_sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def test_the_private_import_scan_sees_what_it_must():
    """The scan itself, on a file made for it: a private name from another package is
    found; one from the module's own package, and the standard library's, are not."""
    source = ("from broker.hub.rooms import _hidden\nfrom ..hub import _other as o\nimport broker.web._internal\n"
              "from .sqlite import _mine\nfrom . import _sibling\nfrom os import _exit\nfrom broker import __all__\n")
    assert private_imports(source, "broker.store.probe", "broker.store") == [
        "broker.store.probe:1 imports broker.hub.rooms._hidden",
        "broker.store.probe:2 imports broker.hub._other",
        "broker.store.probe:3 imports broker.web._internal",
    ]


def test_no_module_imports_a_private_name_from_outside_its_package():
    sources = project_sources()
    assert len(sources) > 50  # the scan reached the tree
    found = [line for path in sources for line in private_imports(path.read_text(), *module_name(path))]
    assert not found, "private names imported across packages:\n" + "\n".join(found)


def test_the_layer_contract_holds():
    """What `make test` runs (the contract in pyproject.toml), so pytest alone catches a
    wrong-way import too; the output names the offending import."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (iterative: no
    recursion limit), each sorted; a module importing itself counts too."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph.find_modules_directly_imported_by(successor)))))
                    break
                if successor in on_stack:
                    low[module] = min(low[module], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1 or module in graph.find_modules_directly_imported_by(module):
                        components.append(sorted(component))
    return components


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for importer, imported in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "e")]:
        graph.add_import(importer=importer, imported=imported)
    assert sorted(strongly_connected(graph)) == [["a", "b", "c"], ["e"]]


# Cycles that exist on main and are known, each with who must break it. The test fails on
# any other cycle, and on a known one that is gone (then delete its line): the list can
# only shrink.
KNOWN_CYCLES: list[list[str]] = []


def test_the_import_graph_has_no_cycle_type_checking_imports_included():
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False, exclude_type_checking_imports=False)
    assert "broker.app" in graph.modules and "actors" in graph.modules
    cycles = strongly_connected(graph)
    new = [cycle for cycle in cycles if cycle not in KNOWN_CYCLES]
    assert not new, "import cycles:\n" + "\n".join(explain(graph, cycle) for cycle in new)
    gone = [cycle for cycle in KNOWN_CYCLES if cycle not in cycles]
    assert not gone, f"no longer a cycle: delete it from KNOWN_CYCLES: {gone}"


def explain(graph: grimp.ImportGraph, cycle: list[str]) -> str:
    """One way round the cycle, import by import (the component can hold more)."""
    if len(cycle) == 1:
        return f"{cycle[0]} imports itself"
    there = graph.find_shortest_chain(importer=cycle[0], imported=cycle[1]) or ()
    back = graph.find_shortest_chain(importer=cycle[1], imported=cycle[0]) or ()
    return f"{len(cycle)} modules {cycle}; e.g. " + " -> ".join([*there, *back[1:]])
