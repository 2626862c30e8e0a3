"""Imports inside src/helpers point down the layers and never form a cycle (docs/architecture.md draws them).
An import under `if TYPE_CHECKING:` counts too: annotations are no reason to point back up.

entry points -> stages -> drivers -> engine -> base. A module may import modules of its own
layer or below; no import, at module level or inside a function, may close a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "helpers"

LAYERS = {
    "base": ["paths", "config", "sections", "runs", "data", "schema", "textfile", "readers", "chat", "models", "metrics", "metric_modules",
             "artifacts", "plots", "precision", "measures", "textrules", "bookkeeping", "words", "textops", "verdicts"],
    "engine": ["inference", "adapters", "packed_attention", "trainer", "training", "budget", "tasks", "tasks.chat",
               "tasks.classification"],
    "drivers": ["search", "search_study", "search_report", "crossval", "ensemble"],
    "stages": ["explore", "clean", "augment", "tune", "evaluation", "evaluation_chat", "evaluation_classification",
               "report"],
    "entry": ["pipeline", "stagerun", "sweep", "sweep_report", "reuse", "export", "modelfile", "predict", "serving", "chatbot", "webchat",
              "servebench", "bench", "bench_paths", "bench_classify", "bench_ceiling", "bench_attention"],
}
ORDER = list(LAYERS)


def module_name(path: Path, root: Path) -> str:
    """helpers-relative dotted name of a source file (tasks/__init__.py -> tasks)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path, package: str = "helpers") -> set[str]:
    """The package's modules a file imports, anywhere in it (function-level imports count too)."""
    here = module_name(path, root).split(".")
    is_package = path.name == "__init__.py"
    known = {module_name(p, root) for p in root.rglob("*.py")}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from ..config import y
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base + (node.module.split(".") if node.module else []))
            elif node.module and (node.module == package or node.module.startswith(package + ".")):
                prefix = node.module[len(package) + 1:]
            else:
                continue
            for alias in node.names:
                sub = f"{prefix}.{alias.name}".strip(".")
                found.add(sub if sub in known else prefix)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(package + "."):
                    found.add(alias.name[len(package) + 1:])
    return {m for m in found if m in known and m != module_name(path, root)}


def graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    return {module_name(p, root): imports_of(p, root) for p in sorted(root.rglob("*.py"))
            if module_name(p, root)}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle found by a depth-first search, each as the list of modules around it."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def upward(edges: dict[str, set[str]], layers: dict[str, list[str]]) -> list[str]:
    """Imports from a lower layer into a higher one, as 'a (layer) imports b (layer)'."""
    level = {m: i for i, name in enumerate(layers) for m in layers[name]}
    names = {m: name for name in layers for m in layers[name]}
    return [f"{a} ({names[a]}) imports {b} ({names[b]})" for a, targets in edges.items() for b in sorted(targets)
            if level[b] > level[a]]


def test_every_module_has_a_layer():
    placed = {m for ms in LAYERS.values() for m in ms}
    modules = set(graph(SRC))
    assert modules - placed == set(), "give each new module a layer here and in docs/architecture.md"
    assert placed - modules == set(), "a layer lists a module that no longer exists"


def test_no_import_cycles():
    assert cycles(graph(SRC)) == []


def test_imports_point_down():
    assert upward(graph(SRC), LAYERS) == []


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """A package where base imports a stage inside a function, and two stages import each other."""
    pkg = tmp_path / "helpers"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text("def f():\n    from . import stage\n")
    (pkg / "stage.py").write_text("from . import base, other\n")
    (pkg / "other.py").write_text("from helpers.stage import thing\n")
    (pkg / "sub" / "__init__.py").write_text("from .. import base\nfrom ..base import f\n")
    return pkg


def test_the_checks_catch_a_cycle_and_an_upward_import(toy: Path):
    edges = graph(toy)
    assert edges == {"base": {"stage"}, "stage": {"base", "other"}, "other": {"stage"}, "sub": {"base"}}
    found = {tuple(c) for c in cycles(edges)}
    assert ("base", "stage", "base") in found and ("stage", "other", "stage") in found
    layers = {"base": ["base", "sub"], "stages": ["stage", "other"]}
    assert upward(edges, layers) == ["base (base) imports stage (stages)"]
