"""The house rules: no import cycles between lungct modules, and imports only go down the wings."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "lungct"

LAYERS = {
    "lungct": 0,
    "lungct.errors": 0,
    "lungct.fileio": 0,
    "lungct.config": 1,
    "lungct.runs": 1,
    "lungct.data": 2,
    "lungct.model": 3,
    "lungct.evaluation": 4,
    "lungct.explain": 5,
    "lungct.report": 6,
    "lungct.pacs": 7,
    "lungct.serve": 8,
    "lungct.pipeline": 9,
    "lungct.federated": 10,
    "lungct.cli": 11,
    "lungct.__main__": 12,
}
"""Rank of each wing: a module may import its own wing or a wing of lower rank, never a higher one."""


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def wing(module: str) -> str:
    """'lungct.data.audit' -> 'lungct.data'; top-level modules are their own wing."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def imports_of(path: Path) -> set[str]:
    """Every lungct module this file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lungct"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if (PKG.parent / (sub.replace(".", "/") + ".py")).exists() else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("lungct")}
    return out


@functools.cache
def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in PKG.rglob("*.py")}
    return {m: {i for i in imports_of(p) if i in mods and i != m} for m, p in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``g`` as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    g = graph()
    assert len(g) > 30, "module discovery broke"
    cycle = find_cycle(g)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_wing_has_a_rank() -> None:
    unknown = {wing(m) for m in graph()} - set(LAYERS)
    assert not unknown, f"add these wings to LAYERS (and to CONTRIBUTING.md): {unknown}"


@pytest.mark.parametrize("module", sorted(graph()))
def test_imports_only_go_down(module: str) -> None:
    own = LAYERS[wing(module)]
    upward = [i for i in graph()[module] if wing(i) != wing(module) and LAYERS[wing(i)] >= own and own > 0]
    upward += [i for i in graph()[module] if own == 0 and wing(i) != wing(module) and LAYERS[wing(i)] > 0]
    assert not upward, f"{module} (rank {own}) imports higher or sibling wings: {upward}"
