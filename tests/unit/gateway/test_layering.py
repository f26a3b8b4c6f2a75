"""DESIGN §11 layering, checked on the source: layers point one way and no import cycle remains."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
GATEWAY = ROOT / "gateway"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (TYPE_CHECKING imports included: a cycle there is still one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module(path): path for path in GATEWAY.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_services_import_neither_the_api_nor_the_app_keys_nor_aiohttp() -> None:
    for path in (GATEWAY / "services").glob("*.py"):
        bad = {
            m
            for m in _imports(path)
            if m.split(".")[0] == "aiohttp" or m.startswith(("gateway.api", "gateway.keys"))
        }
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_domain_and_store_do_not_import_services_or_api() -> None:
    for layer in ("domain", "store"):
        for path in (GATEWAY / layer).glob("*.py"):
            bad = {
                m for m in _imports(path) if m.startswith(("gateway.services", "gateway.api", "gateway.keys"))
            }
            assert not bad, f"{layer}/{path.name} imports {sorted(bad)}"


def test_no_import_cycle_in_gateway() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
