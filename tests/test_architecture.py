"""The lab's layers (docs/architecture.md), read from the source: every import, lazy ones inside functions too.

Arrows point one way: gradprobe ← common ← models ← pipelines ← studies ← experiments; analysis reads
what runs wrote (gradprobe's keys and artifact names, common's utilities), never models or training;
the oracles check the pipeline from outside. No module imports another that (directly or not) imports
it back. A new top-level folder must be placed in LAYERS before it can hold code.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each folder and the folders it may import (besides itself).
LAYERS: dict[str, frozenset[str]] = {
    "gradprobe": frozenset(),  # the installable package: nothing of the lab
    "common": frozenset(),  # what every entry point shares: parser, errors, pre-flight, liveness, links
    "models": frozenset({"gradprobe", "common"}),
    "pipelines": frozenset({"gradprobe", "common", "models"}),
    "analysis": frozenset({"gradprobe", "common"}),  # reads what runs wrote
    "studies": frozenset({"gradprobe", "common", "models", "pipelines", "analysis"}),
    "experiments": frozenset({"gradprobe", "common", "models", "pipelines", "analysis", "studies"}),
    "oracles": frozenset({"gradprobe", "common", "models", "pipelines"}),
}
OUTSIDE = ("tests", "benchmarks")  # they use the lab; the lab never imports them
# Upward arrows that another change removes (the probe's layer discovery no longer needs the lab's
# models): delete an entry when its import is gone; a new upward arrow is never added here.
KNOWN_UPWARD: set[tuple[str, str]] = set()  # imports against the layers awaiting a fix: none


def module_name(path: Path, root: Path) -> str:
    """The dotted module name of a .py file under root (a package's __init__ is the package)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    """Every module name the source imports, wherever the import statement stands (functions included)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(filter(None, [*anchor, base]))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield arg.value


def _is_dynamic_import(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("import_module", "__import__")


def import_graph(root: Path, folders: Iterable[str]) -> dict[str, set[str]]:
    """Module → the modules of `root` it imports (names that are not modules of root, e.g. torch, are left out)."""
    files = {module_name(p, root): p for folder in folders for p in sorted((root / folder).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = _imported_names(tree, module, path.name == "__init__.py")
        # A module's own enclosing packages are initialised before it by Python itself, whatever it imports: an
        # edge to them (`from gradprobe import keys` inside gradprobe/) is no dependency the code chose.
        graph[module] = {n for n in names if n in files and n != module and not module.startswith(n + ".")}
    return graph


def folder(module: str) -> str:
    """The top-level folder of a module."""
    return module.partition(".")[0]


def upward_arrows(graph: dict[str, set[str]], layers: dict[str, frozenset[str]]) -> set[tuple[str, str]]:
    """(importer, imported) pairs that cross folders against `layers` (a folder missing from layers allows nothing)."""
    return {
        (module, target)
        for module, targets in graph.items()
        for target in targets
        if folder(target) != folder(module) and folder(target) not in layers.get(folder(module), frozenset())
    }


def find_cycle(graph: dict[str, Iterable[str]]) -> list[str] | None:
    """One import cycle of the graph, or None."""
    try:
        tuple(graph_sorter(graph).static_order())
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def graph_sorter(graph: dict[str, Iterable[str]]) -> graphlib.TopologicalSorter:
    """A topological sorter over the graph (a node's imports come first)."""
    return graphlib.TopologicalSorter({node: set(targets) for node, targets in graph.items()})


def lab_folders(root: Path) -> list[str]:
    """Top-level packages of the repository (folders with an __init__.py), less the tests and benchmarks."""
    return sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file() and p.name not in OUTSIDE)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT, [*LAYERS, *OUTSIDE])


def test_every_folder_with_code_has_a_layer() -> None:
    assert lab_folders(ROOT) == sorted(LAYERS)


def test_the_layers_are_an_order() -> None:
    assert find_cycle(LAYERS) is None
    assert all(below in LAYERS for allowed in LAYERS.values() for below in allowed)


def test_no_module_imports_against_the_layers(graph: dict[str, set[str]]) -> None:
    lab = {m: t for m, t in graph.items() if folder(m) in LAYERS}
    upward = upward_arrows(lab, LAYERS)
    assert upward - KNOWN_UPWARD == set(), "imports against docs/architecture.md's layers"
    assert KNOWN_UPWARD - upward == set(), "an import listed in KNOWN_UPWARD is gone: delete its entry"


def test_the_lab_never_imports_the_tests_or_benchmarks(graph: dict[str, set[str]]) -> None:
    assert {(m, t) for m, ts in graph.items() if folder(m) in LAYERS for t in ts if folder(t) in OUTSIDE} == set()


def test_no_import_cycle_between_modules(graph: dict[str, set[str]]) -> None:
    assert find_cycle(graph) is None


def test_the_folder_graph_has_no_cycle(graph: dict[str, set[str]]) -> None:
    folders: dict[str, set[str]] = {}
    for module, targets in graph.items():
        if folder(module) in LAYERS:
            folders.setdefault(folder(module), set()).update(folder(t) for t in targets if folder(t) != folder(module))
    allowed_or_known = {(folder(m), folder(t)) for m, t in KNOWN_UPWARD}
    assert find_cycle({f: {t for t in ts if (f, t) not in allowed_or_known} for f, ts in folders.items()}) is None


# -- the checker itself catches what it is for ---------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_the_checker_sees_lazy_relative_and_dynamic_imports_upwards(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "low/__init__.py": "",
            "low/a.py": "def f():\n    from high import b  # lazy, inside a function\n",
            "low/c.py": "from .a import f\nimport importlib\nimportlib.import_module('high.d')\n",
            "high/__init__.py": "",
            "high/b.py": "import low.a\n",
            "high/d.py": "import os\n",
        },
    )
    graph = import_graph(tmp_path, ["low", "high"])
    assert graph["low.a"] == {"high", "high.b"} and graph["low.c"] == {"low.a", "high.d"}
    layers = {"low": frozenset(), "high": frozenset({"low"})}
    assert upward_arrows(graph, layers) == {("low.a", "high"), ("low.a", "high.b"), ("low.c", "high.d")}
    assert set(find_cycle(graph)) == {"low.a", "high.b"}


def test_the_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {"low/__init__.py": "", "low/a.py": "X = 1\n", "high/__init__.py": "", "high/b.py": "from low.a import X\n"},
    )
    graph = import_graph(tmp_path, ["low", "high"])
    assert upward_arrows(graph, {"low": frozenset(), "high": frozenset({"low"})}) == set()
    assert find_cycle(graph) is None
