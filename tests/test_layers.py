"""Layers import downward only: config -> db -> embeddings -> services -> palace -> surfaces."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "bridge" / "memory_palace"
SURFACES = {"bridge", "mcp_server", "cli", "listener", "migrate", "doctor", "transfer", "wake"}
FORBIDDEN = {
    "config": {"db", "services", "palace", "embeddings"} | SURFACES,
    "db": {"services", "palace", "embeddings"} | SURFACES,
    "embeddings": {"db", "services", "palace"} | SURFACES,
    "services": SURFACES,
    "tools": {"db", "services", "palace"} | SURFACES,
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level and node.module:
            base = list(path.relative_to(PKG).parts[:-1])
            parts = base[: len(base) - (node.level - 1)] + node.module.split(".")
            names.add(parts[0] if parts else node.module)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("memory_palace.")
        ):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.level and not node.module:
            names.update(a.name for a in node.names)
    return names


def test_no_upward_imports() -> None:
    bad = []
    for path in PKG.rglob("*.py"):
        layer = path.relative_to(PKG).parts[0].removesuffix(".py")
        for name in imported_modules(path) & FORBIDDEN.get(layer, set()):
            bad.append(f"{path.relative_to(PKG)} imports {name}")
    assert not bad, bad


def test_services_never_print() -> None:
    for path in (PKG / "services").rglob("*.py"):
        tree = ast.parse(path.read_text())
        calls = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
        ]
        assert not calls, f"{path.name} prints; services log to stderr through logging"
