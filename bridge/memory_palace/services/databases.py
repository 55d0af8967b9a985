"""db_manager tools: list, register, switch and inspect the named databases of this process.

Probing never creates a database: listing a name whose server is down or whose database does
not exist reports it as such instead of failing (or auto-creating it as a side effect).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from ..config import type_from_url
from ..db.engine import pg_connect
from ..db.urls import mask_url, sqlite_path
from ..errors import BackendUnavailable, MemoryPalaceError

if TYPE_CHECKING:
    from ..palace import Palace

log = logging.getLogger("memory_palace.databases")

COUNTED_TABLES = ("memories", "memory_edges", "messages")


def _probe_postgres(url: str) -> dict[str, Any]:
    try:
        conn = pg_connect(url)
    except BackendUnavailable as exc:
        missing = "does not exist" in exc.message
        return {
            "status": "missing" if missing else "down",
            "error": exc.message,
            "table_counts": {},
        }
    try:
        counts: dict[str, int] = {}
        with conn.cursor() as cur:
            for table in COUNTED_TABLES:
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
                if cur.fetchone()[0]:
                    # Table names come from the constant tuple above, never from input.
                    cur.execute(f"SELECT count(*) FROM {table}")
                    counts[table] = int(cur.fetchone()[0])
        return {"status": "connected", "table_counts": counts}
    finally:
        conn.close()


def _probe_sqlite(url: str) -> dict[str, Any]:
    try:
        path = sqlite_path(url)
    except MemoryPalaceError as exc:
        return {"status": "down", "error": exc.message, "table_counts": {}}
    if not path.exists():
        return {
            "status": "missing",
            "error": f"{path} does not exist yet; it is created on first use",
            "table_counts": {},
        }
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        return {"status": "down", "error": f"cannot open {path}: {exc}", "table_counts": {}}
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        counts = {
            t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
            for t in COUNTED_TABLES
            if t in names
        }
        return {"status": "connected", "table_counts": counts}
    except sqlite3.Error as exc:
        return {"status": "down", "error": f"cannot read {path}: {exc}", "table_counts": {}}
    finally:
        conn.close()


def describe(palace: Palace, name: str) -> dict[str, Any]:
    """Masked URL, type, status and table counts of one named database (never raises)."""
    name, url = palace.catalog.resolve(name)
    try:
        kind = type_from_url(url)
    except MemoryPalaceError as exc:
        return {
            "name": name,
            "url": mask_url(url),
            "type": "unknown",
            "status": "down",
            "error": exc.message,
            "is_default": name == palace.catalog.default,
            "table_counts": {},
        }
    try:
        probe = _probe_postgres(url) if kind == "postgres" else _probe_sqlite(url)
    except Exception as exc:
        log.warning("probing database %s failed: %s", name, exc)
        probe = {"status": "down", "error": str(exc), "table_counts": {}}
    return {
        "name": name,
        "url": mask_url(url),
        "type": kind,
        "is_default": name == palace.catalog.default,
        "configured": palace.catalog.is_configured(name),
        **probe,
    }


def list_databases(palace: Palace) -> dict[str, Any]:
    """Every configured or registered database; down ones are reported, not raised."""
    dbs = {n: describe(palace, n) for n in palace.catalog.names()}
    for info in dbs.values():
        info.pop("name", None)
    return {"databases": dbs, "default": palace.catalog.default, "count": len(dbs)}


def register_database(palace: Palace, name: str, url: str | None = None) -> dict[str, Any]:
    """Register `name` for this process (derived from the default without a URL), create its
    schema and check the connection. Raises BackendUnavailable when it cannot be reached."""
    registered = palace.catalog.register(name, url)
    db = palace.database(name)  # creates the database and schema, or raises with the fix
    with db.read() as conn:
        conn.exec_driver_sql("SELECT 1")
    info = describe(palace, name)
    info.update({"registered": True, "derived": url is None, "persisted": False})
    log.info("registered database %s at %s", name, mask_url(registered))
    return info


def set_default_database(palace: Palace, name: str) -> dict[str, Any]:
    """Route every later call without `database` to `name` (this process only)."""
    previous = palace.catalog.default
    palace.catalog.set_default(name)
    info = describe(palace, name)
    info.update({"previous": previous, "default": name, "persisted": False})
    return info


def current_database(palace: Palace) -> dict[str, Any]:
    return describe(palace, palace.catalog.default)
