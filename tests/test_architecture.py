"""The package's floors (docs/architecture.md): imports point down, never up, and no two
packages form a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import ce_bench

ROOT = Path(ce_bench.__file__).parent

# Each top-level module or package of ce_bench and its floor; a module may import its own floor
# and the floors below.
FLOORS = {
    0: {"runtime", "embedded", "kv_cache", "sites", "artifacts", "versions", "stats", "scoring",
        "pairing", "emotions", "classification", "private_facts", "degeneration", "registration",
        "run_config", "tables", "console",
        "_autoregister"},
    1: {"interventions", "locate", "lifelong", "sae_training", "judge", "analysis", "inject"},
    2: {"models"},
    3: {"evaluation"},
    4: {"reports", "board"},
    5: {"cli", "demo"},
}  # fmt: skip
FLOOR_OF = {name: floor for floor, names in FLOORS.items() for name in names}


def _imports() -> dict[str, set[str]]:
    """{importing top-level part: {imported top-level parts}} over every module of ce_bench."""
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        part = path.relative_to(ROOT).parts[0].removesuffix(".py")
        if part == "__init__":
            continue  # the package facade: re-exports, imported lazily
        found = edges.setdefault(part, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "ce_bench" and len(parts) > 1 and parts[1] != part:
                    found.add(parts[1])
    return edges


def test_every_module_of_ce_bench_has_a_floor() -> None:
    assert set(_imports()) - {"tasks"} <= set(FLOOR_OF)


def test_imports_point_down_never_up() -> None:
    upward = sorted(
        f"{a} (floor {FLOOR_OF[a]}) -> {b} (floor {FLOOR_OF[b]})"
        for a, targets in _imports().items()
        for b in targets
        if a in FLOOR_OF and b in FLOOR_OF and FLOOR_OF[b] > FLOOR_OF[a]
    )
    assert upward == []


def test_no_cycle_among_the_parts_of_ce_bench() -> None:
    edges = _imports()
    cycles: list[list[str]] = []

    def visit(part: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(part, ())):
            if nxt in path:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(part)

    done: set[str] = set()
    for part in sorted(edges):
        visit(part, [part])
    assert cycles == []
