"""Palace: the composition root. Wires settings, named databases, the embedder and services.

Surfaces (bridge, MCP, CLI) build one Palace and call `palace.call(tool, params)`.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from .config import Settings
from .db import schema
from .db.catalog import Catalog
from .db.engine import Database, dispose_engines, get_database
from .embeddings import Embedder, create_embedder
from .errors import Conflict, InvalidParams, MemoryPalaceError
from .tools import BY_NAME, Tool, enabled_tools, validate

log = logging.getLogger("memory_palace")

# tool name -> (service module, function). Each function is fn(palace, db, **params);
# db-manager functions take the palace only (they name databases themselves).
HANDLERS: dict[str, tuple[str, str]] = {
    "memory_set": ("memories", "remember"),
    "memory_get": ("memories", "get"),
    "memory_recent": ("memories", "recent"),
    "memory_archive": ("memories", "archive"),
    "memory_link": ("memories", "link"),
    "memory_unlink": ("memories", "unlink"),
    "memory_stats": ("memories", "stats"),
    "memory_recall": ("recall", "recall"),
    "memory_audit": ("maintenance", "audit"),
    "memory_reembed": ("maintenance", "reembed"),
    "message": ("messages", "handle"),
    "memory_list_databases": ("databases", "list_databases"),
    "memory_register_database": ("databases", "register_database"),
    "memory_set_default_database": ("databases", "set_default_database"),
    "memory_current_database": ("databases", "current_database"),
}
NO_DATABASE_PARAM = {
    "memory_list_databases",
    "memory_register_database",
    "memory_set_default_database",
    "memory_current_database",
}


def _handler(tool: str) -> Callable[..., dict[str, Any]]:
    module, func = HANDLERS[tool]
    return getattr(importlib.import_module(f"memory_palace.services.{module}"), func)


class Palace:
    def __init__(self, settings: Settings, embedder: Embedder | None = None) -> None:
        self.settings = settings
        self.catalog = Catalog(settings)
        self._embedder = embedder
        self._lock = threading.Lock()
        self.tools: list[Tool] = enabled_tools(settings.extensions)
        self._tool_names = {t.name for t in self.tools}

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = create_embedder(self.settings)
        return self._embedder

    @property
    def instance_id(self) -> str:
        return self.settings.instance_id or "default"

    def database(self, name: str | None = None) -> Database:
        """The named database (None = current default), created and migrated on first use."""
        _, url = self.catalog.resolve(name)
        db = get_database(url)
        if not db.schema_ready:
            try:
                dim: int | None = self.embedder.dim
            except MemoryPalaceError:
                if db.is_postgres:  # the vector column needs its size; say why it is unknown
                    raise
                dim = None  # SQLite stores BLOBs: an embedder that is down can't block memories
            schema.migrate(db, dim)
        return db

    def check_embedder(self, db: Database) -> None:
        """Refuse to mix embedders: stored vectors must come from the configured one.

        Raises Conflict naming the fix (memory_reembed) on a dimension or model mismatch.
        """
        key = ("embedder_ok", self.embedder.id)
        if db.cache.get(key):
            return
        schema.check_dimension(db, self.embedder.dim)
        others = schema.foreign_embedders(db, self.embedder.id)
        if others:
            listed = ", ".join(f"{m} ({n} memories)" for m, n in others)
            raise Conflict(
                f"database {db.masked_url} holds vectors from another embedder: {listed}; "
                f"the configured one is {self.embedder.id}. Run `memory-palace reembed "
                "--all --execute` (tool memory_reembed with all_memories=true, dry_run=false), "
                "or configure the embedder those vectors came from."
            )
        db.cache[key] = True

    def call(self, tool_name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Validate params and run a tool. Raises MemoryPalaceError subclasses."""
        tool = BY_NAME.get(tool_name)
        if tool is None or tool_name not in self._tool_names:
            hint = (
                ' (enable it with config "extensions": ["mcp_server.extensions.db_manager"])'
                if tool and tool.extension
                else ""
            )
            raise InvalidParams(f"unknown tool {tool_name!r}{hint}")
        args = validate(tool, params)
        fn = _handler(tool_name)
        if tool_name in NO_DATABASE_PARAM:
            return fn(self, **args)
        db = self.database(args.pop("database"))
        return fn(self, db, **args)

    def reset_engine(self, name: str | None = None) -> None:
        """Dispose one named database's engine, or all engines (name=None)."""
        if name is None:
            dispose_engines()
        else:
            dispose_engines(self.catalog.resolve(name)[1])

    def close(self) -> None:
        dispose_engines()


__all__ = ["MemoryPalaceError", "Palace"]
