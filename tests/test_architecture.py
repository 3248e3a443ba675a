"""The layers of ARCHITECTURE.md: imports point down only, reports read tables and never each other, no import circles."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "theory": set(),
    "simulations.engine": {"theory"},
    "simulations.experiments": {"theory", "simulations.engine", "simulations.experiments"},
    "simulations.reports": {"theory", "simulations.reports"},
    "simulations.benchmark": {"theory", "simulations.engine", "simulations.experiments", "simulations.benchmark"},
    "simulations.commands": {"theory", "simulations.engine", "simulations.experiments", "simulations.reports",
                             "simulations.benchmark", "simulations.commands"},
}
"""Layer -> the layers its modules may import (besides itself, for engine and theory)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """The project modules a file imports (at any depth: lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in ("theory", "simulations")}


MODULES = {module_name(path): path for package in ("theory", "simulations") for path in (ROOT / package).rglob("*.py")}


def layer_of(name: str) -> str:
    """The layer a module belongs to ('simulations' itself, an empty package, is in none)."""
    layers = [layer for layer in LAYERS if name == layer or name.startswith(layer + ".")]
    return max(layers, key=len) if layers else name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    layer = layer_of(name)
    if layer not in LAYERS:
        assert not project_imports(MODULES[name]), name
        return
    allowed = LAYERS[layer] | {layer}
    for imported in project_imports(MODULES[name]):
        assert layer_of(imported) in allowed, f"{name} ({layer}) imports {imported}"


def test_claims_and_figures_do_not_import_each_other():
    for name, path in MODULES.items():
        for kind, other in (("simulations.reports.claims", "simulations.reports.plots"),
                            ("simulations.reports.plots", "simulations.reports.claims")):
            if name.startswith(kind):
                assert not any(imported.startswith(other) for imported in project_imports(path)), (name, other)


def test_no_import_circles():
    graph = {name: {imported for imported in project_imports(path) if imported in MODULES and imported != name}
             for name, path in MODULES.items()}
    # A package's __init__ importing its own submodules (a registry, re-exports) is not a circle.
    graph = {name: {m for m in targets if not m.startswith(name + ".")} for name, targets in graph.items()}
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for target in graph[node]:
            assert state.get(target) != "open", " -> ".join(trail + [node, target])
            if target not in state:
                visit(target, trail + [node])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [])
