"""Imports point one way (ARCHITECTURE.md, Layout): no cycle between modules, and the dependency
rule between packages.

The graph is read from the source with ``ast``, not by importing it, and counts every import
statement wherever it stands: at the top, inside a function (an import placed there to dodge a
cycle is still a cycle), and under ``if TYPE_CHECKING:`` (an annotation that needs the other
module is a dependency on it, even if Python never runs the import). A package's ``__init__``
being executed before its submodules is Python's mechanics, not an arrow: a module imports its
parent package only when it names it (``from tvq_assets import tracking``).
"""

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tvq_assets", "tvq_resources", "tvq_checks")
# tvq_assets.quant is the pure engine: numbers in, numbers out.
ENGINE_FORBIDDEN = ("dagster", "mlflow", "ray", "pandera")
ENGINE_MAY_IMPORT = {"tvq_resources.records"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Every module of the packages by dotted name."""
    return {
        module_name(path, root): path
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
    }


def imported_names(path: Path, name: str, is_package: bool) -> set[tuple[str, str]]:
    """What a module imports, as (module, name) pairs with relative imports resolved:
    ``import A.b`` is ("A.b", ""), ``from A import b`` is ("A", "b") (``b`` a module or a name)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update((alias.name, "") for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.update((base, alias.name) for alias in node.names)
    return found


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports, and the outside top-level packages it imports
    (as their top-level name, e.g. ``dagster``)."""
    known = modules(root, packages)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for module, member in imported_names(path, name, path.name == "__init__.py"):
            if f"{module}.{member}" in known:  # ``from A import b`` of a module b
                targets.add(f"{module}.{member}")
            elif module in known:
                targets.add(module)
            elif module.split(".")[0] in packages:
                raise AssertionError(f"{name} imports {module}, which is not a module")
            else:
                targets.add(module.split(".")[0])
        targets.discard(name)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module, as one cycle through it
    (Tarjan's algorithm; each cycle is named module -> ... -> the same module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_through(graph, group) for group in groups]


def _cycle_through(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """One closed path inside a strongly connected group, from its first module back to it."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for target in sorted(graph[node] & group):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                frontier.append(target)
    raise AssertionError(f"no cycle through {sorted(group)}")


def arrows(graph: dict[str, set[str]], source: str, target: str) -> list[str]:
    """The imports from modules under ``source`` of modules or packages under ``target``."""
    return sorted(
        f"{module} imports {imported}"
        for module, imported_set in graph.items()
        if _under(module, source)
        for imported in imported_set
        if _under(imported, target) and not _under(imported, source)
    )


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(f"{package}.")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_project_modules_import_one_another_without_a_cycle(graph):
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_engine_imports_no_orchestration_tracking_or_validation_library(graph):
    problems = [
        a for library in ENGINE_FORBIDDEN for a in arrows(graph, "tvq_assets.quant", library)
    ]
    assert not problems, problems


def test_the_engine_imports_nothing_of_the_project_outside_itself_but_the_record_registry(graph):
    """The engine's dataclasses register themselves as lake record types where they are defined
    (``tvq_resources.records``, a standard-library-only registry); nothing else of the project."""
    problems = [
        a
        for package in PACKAGES
        for a in arrows(graph, "tvq_assets.quant", package)
        if a.split(" imports ")[1] not in ENGINE_MAY_IMPORT
    ]
    assert not problems, problems
    for module in ENGINE_MAY_IMPORT:
        outside = {m for m in graph[module] if m.split(".")[0] not in sys.stdlib_module_names}
        assert not outside, (
            f"{module} is imported by the engine, so it imports only the standard library, "
            f"not {sorted(outside)}"
        )


def test_the_contracts_import_no_dagster(graph):
    contracts = [m for m in graph if m.startswith("tvq_checks.") and m.endswith("contracts")]
    assert contracts, "tvq_checks has contract modules (*contracts.py)"
    problems = [a for module in contracts for a in arrows(graph, module, "dagster")]
    assert not problems, problems


def test_the_resources_import_neither_the_graph_nor_the_checks(graph):
    problems = arrows(graph, "tvq_resources", "tvq_assets") + arrows(
        graph, "tvq_resources", "tvq_checks"
    )
    assert not problems, problems


def test_only_the_composition_root_and_the_operator_tools_import_the_definitions(graph):
    """The definitions bind everything; the commands at the top (cli, launch, soak) use them.
    Anything else importing the definitions would point back up at the root."""
    top = {"tvq_assets.definitions", "tvq_assets.cli", "tvq_assets.launch", "tvq_assets.soak"}
    problems = [a for a in arrows(graph, "tvq_assets", "tvq_assets.definitions")]
    problems = [a for a in problems if a.split(" imports ")[0] not in top]
    assert not problems, problems


def test_tracking_imports_no_asset_module_of_the_graph(graph):
    """The tracked IO manager serves the assets; an asset module is never its dependency (the
    assets' order and their describers reach tracking from the definitions)."""
    asset_modules = {
        "tvq_assets.data",
        "tvq_assets.alpha",
        "tvq_assets.allocation",
        "tvq_assets.meta",
    }
    problems = [a for module in asset_modules for a in arrows(graph, "tvq_assets.tracking", module)]
    assert not problems, problems


def test_the_cycle_finder_names_a_cycle_made_by_an_import_inside_a_function(tmp_path):
    package = tmp_path / "demo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from demo.b import thing\n")
    (package / "b.py").write_text("def thing():\n    from demo import a\n    return a\n")
    (package / "c.py").write_text("from . import a\n")
    graph = import_graph(tmp_path, ("demo",))
    assert graph["demo.c"] == {"demo.a"}
    assert cycles(graph) == [["demo.a", "demo.b", "demo.a"]]
