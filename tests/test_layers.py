"""Layers import downward only:

    config, errors, params  ->  db  ->  embeddings  ->  services  ->  tools  ->  palace
    palace  ->  surfaces

Services also never touch a driver (sqlite3, psycopg2): backend specifics live in db/ adapters.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "bridge" / "memory_palace"
SURFACES = {"bridge", "mcp_server", "cli", "listener", "migrate", "doctor", "transfer", "wake"}
ABOVE = {
    "config": {"db", "embeddings", "services", "tools", "palace"} | SURFACES,
    "errors": {"config", "db", "embeddings", "services", "tools", "palace"} | SURFACES,
    "params": {"config", "db", "embeddings", "services", "tools", "palace"} | SURFACES,
    "db": {"embeddings", "services", "tools", "palace"} | SURFACES,
    "embeddings": {"db", "services", "tools", "palace"} | SURFACES,
    "services": {"tools", "palace"} | SURFACES,
    "tools": {"palace"} | SURFACES,
    "palace": SURFACES,
}
DRIVERS = {"sqlite3", "psycopg2"}
NO_DRIVERS = {"services", "tools", "palace"}


def imports(path: Path, root: Path) -> tuple[set[str], set[str]]:
    """(package modules, top-level external modules) that a file imports."""
    ours: set[str] = set()
    external: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == root.name:
                    ours.add(alias.name.split(".")[1])
                else:
                    external.add(top)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(path.relative_to(root).parts[:-1])
                parts = base[: len(base) - (node.level - 1)] + (node.module or "").split(".")
                parts = [p for p in parts if p]
                if parts:
                    ours.add(parts[0])
                else:
                    ours.update(a.name for a in node.names)
            elif node.module == root.name:
                ours.update(a.name for a in node.names)
            elif node.module:
                top, _, rest = node.module.partition(".")
                if top == root.name:
                    ours.add(rest.split(".")[0])
                else:
                    external.add(top)
    return ours, external


def violations(root: Path) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        layer = path.relative_to(root).parts[0].removesuffix(".py")
        ours, external = imports(path, root)
        for name in sorted(ours & ABOVE.get(layer, set())):
            bad.append(f"{path.relative_to(root)} imports {name} (a higher layer)")
        if layer in NO_DRIVERS:
            for name in sorted(external & DRIVERS):
                bad.append(f"{path.relative_to(root)} imports the driver {name}")
    return bad


def test_no_upward_imports() -> None:
    assert violations(PKG) == []


def test_the_check_catches_violations(tmp_path: Path) -> None:
    root = tmp_path / "memory_palace"
    (root / "services").mkdir(parents=True)
    (root / "db").mkdir()
    (root / "services" / "bad.py").write_text(
        "import sqlite3\nfrom ..palace import Palace\nfrom memory_palace import bridge\n"
    )
    (root / "db" / "worse.py").write_text("from ..services import memories\n")
    (root / "services" / "fine.py").write_text("from ..db.engine import Database\n")
    assert violations(root) == [
        "db/worse.py imports services (a higher layer)",
        "services/bad.py imports bridge (a higher layer)",
        "services/bad.py imports palace (a higher layer)",
        "services/bad.py imports the driver sqlite3",
    ]


def test_services_never_print() -> None:
    for path in (PKG / "services").rglob("*.py"):
        tree = ast.parse(path.read_text())
        calls = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
        ]
        assert not calls, f"{path.name} prints; services log to stderr through logging"
