"""db_manager tools: list, register, switch and inspect the named databases of this process.

Probing never creates a database: listing a name whose server is down or whose database does
not exist reports it as such instead of failing (or auto-creating it as a side effect).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from ..config import Settings
from ..db.catalog import Catalog
from ..db.engine import Database, backend_for
from ..db.urls import mask_url, sqlite_path, type_from_url
from ..errors import Conflict, MemoryPalaceError, PermissionDenied
from ..params import P

log = logging.getLogger("memory_palace.databases")

COUNTED_TABLES = ("memories", "memory_edges", "messages")
OpenDatabase = Callable[[str | None], Database]
Name = Annotated[str, P("Database name.")]


def describe(catalog: Catalog, name: str, url: str | None = None) -> dict[str, Any]:
    """Masked URL, type, status and table counts of one named database (never raises)."""
    if url is None:
        name, url = catalog.resolve(name)
    info: dict[str, Any] = {
        "name": name,
        "url": mask_url(url),
        "is_default": name == catalog.default,
        "configured": catalog.is_configured(name),
    }
    try:
        backend = backend_for(url)
    except MemoryPalaceError as exc:
        return {
            **info,
            "type": "unknown",
            "status": "down",
            "error": exc.message,
            "table_counts": {},
        }
    try:
        probe = backend.probe(url, COUNTED_TABLES)
    except Exception as exc:  # a probe must report, not fail the listing
        log.warning("probing database %s failed: %s", name, exc)
        probe = {"status": "down", "error": type(exc).__name__, "table_counts": {}}
    return {**info, "type": backend.kind, **probe}


def list_databases(catalog: Catalog) -> dict[str, Any]:
    """List every configured or registered database with masked URL, type, status, whether
    it is the default, and table counts."""
    dbs = {n: describe(catalog, n) for n in catalog.names()}
    for name, url in catalog.discovered().items():
        if name not in dbs:  # created by an earlier run: not registered in this process
            dbs[name] = {**describe(catalog, name, url), "discovered": True}
    for info in dbs.values():
        info.pop("name", None)
    return {"databases": dbs, "default": catalog.default, "count": len(dbs)}


def _is_palace_file(url: str, path: Path) -> bool:
    """An empty file, or a SQLite database that already holds a Memory Palace."""
    if path.stat().st_size == 0:
        return True
    probe = backend_for(url).probe(url, ("palace_meta",))
    return probe["status"] == "connected" and "palace_meta" in probe["table_counts"]


def check_sqlite_place(settings: Settings, catalog: Catalog, url: str) -> None:
    """A SQLite file an agent may register: inside the data dir or beside the default
    database, and new or already a Memory Palace (never an arbitrary file turned into one)."""
    if type_from_url(url) != "sqlite":
        return
    path = sqlite_path(url).resolve()
    homes = [settings.data_dir.resolve()]
    default_url = catalog.resolve(None)[1]
    if type_from_url(default_url) == "sqlite":
        homes.append(sqlite_path(default_url).resolve().parent)
    if not any(path.is_relative_to(home) for home in homes):
        raise PermissionDenied(
            f"memory_register_database: {path} is outside {' and '.join(map(str, homes))}; "
            "agents may only place SQLite databases there. Omit url to derive one, or add the "
            "file to config.json 'databases'.",
            param="url",
        )
    if path.exists() and not _is_palace_file(url, path):
        raise Conflict(
            f"memory_register_database: {path} exists and is not a Memory Palace database; "
            "choose a new file name",
            param="url",
        )


def register_database(
    catalog: Catalog,
    open_database: OpenDatabase,
    settings: Settings,
    *,
    name: Name,
    url: Annotated[
        str | None,
        P(
            "Database URL (optional). A SQLite file must lie in the data dir or beside the "
            "default database."
        ),
    ] = None,
) -> dict[str, Any]:
    """Register a named database for this process (not persisted). Without a URL it is
    derived from the default. The schema is created and the connection checked."""
    if url is not None:
        check_sqlite_place(settings, catalog, url)
    existed = name in catalog.names()
    registered = catalog.register(name, url)
    try:
        db = open_database(name)  # creates the database and schema, or raises with the fix
        with db.read() as conn:
            conn.exec_driver_sql("SELECT 1")
    except MemoryPalaceError:
        if not existed:
            catalog.unregister(name)  # a failed registration leaves nothing behind
        raise
    info = describe(catalog, name)
    info.update({"registered": True, "derived": url is None, "persisted": False})
    log.info("registered database %s at %s", name, mask_url(registered))
    return info


def set_default_database(catalog: Catalog, *, name: Name) -> dict[str, Any]:
    """Make a named database the default for every later call that names none (this process
    only, not persisted)."""
    previous = catalog.default
    catalog.set_default(name)
    info = describe(catalog, name)
    info.update({"previous": previous, "default": name, "persisted": False})
    return info


def current_database(catalog: Catalog) -> dict[str, Any]:
    """Show the default database: name, masked URL, status and table counts."""
    return describe(catalog, catalog.default)
