"""The package's shape, as docs/architecture.md describes it: layers, no import circles, short functions.

These tests read the source (``ast``), so they check every import, including the ones inside functions
that keep start-up fast.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "nioreg"

# Lowest first. A module may import from its own layer or a lower one. docs/architecture.md explains each.
LAYERS: list[set[str]] = [
    {"(root)", "defaults", "io", "progress", "lazy", "runtime"},
    {"spatial", "data", "measures"},
    {"losses", "models"},
    {"methods"},
    {"pipeline", "prealign", "baselines"},
    {"chest"},
    {"train", "evaluate"},
    {"demo"},
    {"console", "cli"},
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The architectural unit of a module: its top-level package, or ``cli`` for a package's command module.

    A package's ``command.py`` is that package's face on the command line, so it belongs to the cli layer.
    """
    parts = module.split(".")
    if parts[-1] == "command":
        return "cli"
    return parts[1] if len(parts) > 1 else "(root)"


def imports_of(path: Path) -> set[str]:
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
            found.update(n for n in names if n.split(".")[0] == "nioreg")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "nioreg")
    return found


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        source = unit(module_name(path))
        for target in imports_of(path):
            if unit(target) != source:
                graph[source].add(unit(target))
    return graph


def test_every_unit_has_a_layer():
    units = {unit(module_name(p)) for p in SRC.rglob("*.py")}
    assert units <= set(LAYER_OF), f"add {sorted(units - set(LAYER_OF))} to LAYERS and docs/architecture.md"


def test_imports_only_point_down():
    upward = sorted(f"{a} -> {b}" for a, targets in unit_graph().items() for b in targets
                    if LAYER_OF.get(b, -1) > LAYER_OF.get(a, -1))
    assert not upward, f"imports from a lower layer to a higher one: {upward}"


def test_no_import_circles():
    graph = unit_graph()
    seen: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            pytest.fail(f"import circle: {' -> '.join(path[path.index(node):] + [node])}")
        if node in seen:
            return
        for target in sorted(graph.get(node, ())):
            visit(target, path + [node])
        seen.add(node)

    for start in sorted(graph):
        visit(start, [])


def test_no_function_is_longer_than_the_limit():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_one_method_spec_parser():
    parsers = [f"{path.relative_to(SRC)}:{node.lineno} {node.name}"
               for path in SRC.rglob("*.py") for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") in ("parse_method_spec", "parse_spec")]
    assert len(parsers) == 1, f"method specs must have exactly one parser, found {parsers}"


def test_the_command_line_starts_without_torch():
    code = "import sys, nioreg.cli; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "importing nioreg.cli loaded torch"
