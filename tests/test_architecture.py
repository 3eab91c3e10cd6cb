"""The import graph of fastsample/: no circles, no import from a lower layer to a higher one.

Every module is parsed (not imported) and every ``fastsample`` import is resolved to the module it loads:
absolute and relative, at module level or inside a function. The layer table below is the one in
docs/design/architecture.md#layers; a module goes to the layer of its most specific entry.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastsample"

# Lowest first. Within a layer marked independent, the entries do not import one another either.
LAYERS: list[tuple[str, bool, tuple[str, ...]]] = [
    ("integration", False, ("fastsample", "fastsample.integration", "fastsample.errors")),
    (
        "capabilities",
        True,
        (
            "fastsample.pipelines",
            "fastsample.solvers",
            "fastsample.guidance",
            "fastsample.cache",
            "fastsample.kernels",
        ),
    ),
    ("models", True, ("fastsample.zoo", "fastsample.testing")),
    ("evaluation and training", True, ("fastsample.eval", "fastsample.training")),
    ("composition", False, ("fastsample.optimize", "fastsample.recipe", "fastsample.tune")),
    (
        "applications",
        False,
        ("fastsample.cli", "fastsample.*.commands", "fastsample.eval.bench", "fastsample.eval.frontier"),
    ),
]


def module_files(package: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every ``.py`` file under ``package``."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the fastsample modules it imports (anywhere in its body)."""
    modules = module_files(package)

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(resolve(a.name) for a in node.names if a.name.split(".")[0] == "fastsample")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != "fastsample":
                    continue
                for alias in node.names:  # `from fastsample.x import y` may import the submodule y
                    full = f"{source}.{alias.name}"
                    targets.add(full if full in modules else resolve(source))
        targets.discard(name)
        targets.discard("")
        graph[name] = targets
    return graph


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, matching entry) of ``module``: the longest matching entry of :data:`LAYERS`."""
    best = None
    for index, (_, _, entries) in enumerate(LAYERS):
        for entry in entries:
            if "*" in entry:
                matched = fnmatch.fnmatchcase(module, entry) or fnmatch.fnmatchcase(module, entry + ".*")
                weight = 1000  # a pattern is more specific than any prefix
            else:
                matched = module == entry or module.startswith(entry + ".")
                weight = entry.count(".")
            if matched and (best is None or weight > best[0]):
                best = (weight, index, entry)
    if best is None:
        raise KeyError(module)
    return best[1], best[2]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for source, targets in sorted(graph.items()):
        source_layer, source_entry = layer_of(source)
        for target in sorted(targets):
            target_layer, target_entry = layer_of(target)
            if target_layer > source_layer:
                out.append(
                    f"{source} ({LAYERS[source_layer][0]}) imports {target} ({LAYERS[target_layer][0]})"
                )
            elif target_layer == source_layer and LAYERS[source_layer][1] and target_entry != source_entry:
                out.append(
                    f"{source} imports its sibling {target} ({LAYERS[source_layer][0]} are independent)"
                )
    return out


def test_every_module_has_a_layer():
    unplaced = []
    for module in module_files():
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"add these modules to LAYERS (and docs/design/architecture.md): {unplaced}"


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_no_upward_imports():
    assert layer_violations(import_graph()) == []


def test_root_package_imports_nothing_statically():
    """``fastsample/__init__.py`` only maps names to modules (imported on first use), so importing
    ``fastsample`` (for ``__version__``) from any layer adds no edge."""
    assert import_graph()["fastsample"] == set()


def test_integration_layer_imports_only_torch_diffusers_and_stdlib():
    """The bottom layer needs nothing beyond torch, diffusers and the standard library, except numpy and
    safetensors (which diffusers itself requires), used by the safe file readers of ``fastsample.errors``."""
    import sys

    allowed = {"torch", "diffusers", "numpy", "safetensors", "fastsample", "__future__"} | set(
        sys.stdlib_module_names
    )
    for name, (path, _) in module_files().items():
        if layer_of(name)[0] != 0:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{name} imports {roots - allowed}"
            if "fastsample" in roots:
                assert layer_of(getattr(node, "module", None) or node.names[0].name)[0] == 0


def test_the_layer_table_is_the_documented_one():
    text = (ROOT / "docs" / "design" / "architecture.md").read_text()
    for name, _, entries in LAYERS:
        assert re.search(rf"^\d\. \*\*{re.escape(name)}\*\*", text, re.M), name
        for entry in entries:
            assert f"`{entry}`" in text, entry


def _graph_of(files: dict[str, str], tmp_path: Path) -> dict[str, set[str]]:
    for rel, text in files.items():
        path = tmp_path / "fastsample" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(tmp_path / "fastsample")


def test_the_checks_see_relative_function_level_and_upward_imports(tmp_path):
    graph = _graph_of(
        {
            "__init__.py": "",
            "guidance/__init__.py": "",
            "guidance/hook.py": "def f():\n    from .linear_ag import g\n",
            "guidance/linear_ag.py": "from fastsample.guidance import hook\n",
            "cache/__init__.py": "",
            "cache/api.py": "def f():\n    from ..optimize import optimize\n",
            "optimize.py": "",
        },
        tmp_path,
    )
    assert graph["fastsample.guidance.hook"] == {"fastsample.guidance.linear_ag"}
    assert graph["fastsample.guidance.linear_ag"] == {"fastsample.guidance.hook"}
    assert find_cycles(graph) == [["fastsample.guidance.hook", "fastsample.guidance.linear_ag"]]
    assert layer_violations(graph) == [
        "fastsample.cache.api (capabilities) imports fastsample.optimize (composition)"
    ]


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("fastsample.integration.adapters", "integration"),
        ("fastsample.cli.bench", "applications"),
        ("fastsample.eval.bench", "applications"),
        ("fastsample.eval.frontier", "applications"),
        ("fastsample.eval.latency", "evaluation and training"),
        ("fastsample.optimize", "composition"),
    ],
)
def test_layer_of(module, layer):
    assert LAYERS[layer_of(module)[0]][0] == layer
