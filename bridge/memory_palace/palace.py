"""Palace: the composition root. Wires settings, named databases, the embedder and the tools.

Surfaces (bridge, MCP, CLI) build one Palace and call `palace.call(tool, params)`: the tool's
parameters are validated against the registry, its dependencies are passed in by name.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from . import tools as tools_module
from .config import Settings
from .db import schema
from .db.catalog import Catalog
from .db.engine import Database, dispose_engines, get_database
from .embeddings import Embedder, create_embedder
from .errors import MemoryPalaceError, PermissionDenied, TransactionAborted
from .services import access, lifecycle, vectors
from .services.access import Caller
from .tools import Registry, Tool, validate

log = logging.getLogger("memory_palace")

TOKEN_RECHECK_S = 30.0  # how long a verified token is trusted before it is looked up again


class Palace:
    def __init__(
        self,
        settings: Settings,
        embedder: Embedder | None = None,
        tools: tuple[Tool, ...] | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = Catalog(settings)
        # The registry is read when a Palace is built (default: every tool in tools.TOOLS).
        self.registry = Registry(
            tools_module.TOOLS if tools is None else tools, settings.extensions
        )
        self._embedder = embedder
        self._callers: dict[bytes, tuple[Caller, float]] = {}  # token digest -> (caller, when)
        self._lock = threading.RLock()

    @property
    def tools(self) -> tuple[Tool, ...]:
        return self.registry.tools

    @property
    def embedder(self) -> Embedder:
        """The configured embedder, created on first use (models load on first embed)."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = create_embedder(self.settings)
        return self._embedder

    def database(self, name: str | None = None) -> Database:
        """The named database (None = current default), created and migrated on first use."""
        _, url = self.catalog.resolve(name)
        db = get_database(url, self.settings.postgres, self.settings.resources)
        if not db.schema_ready:
            try:
                dim: int | None = self.embedder.dim
            except MemoryPalaceError:
                dim = None  # SQLite stores BLOBs: an embedder that is down can't block memories
            schema.migrate(db, dim)
        lifecycle.maybe_sweep(db)  # on first use, then every few minutes of use
        return db

    @property
    def max_concurrent_calls(self) -> int:
        """How many calls may run at once: a call holds at most one pooled connection, so the
        pool's most (postgres.pool_size + max_overflow) serve that many without waiting; the
        surfaces queue the rest instead of leaving them to time out in the pool."""
        pool = self.settings.postgres
        return pool.pool_size + pool.max_overflow

    def check_embedder(self, db: Database) -> None:
        """Raises Conflict when the database holds vectors from another embedder."""
        vectors.check_embedder(db, self.embedder)

    @property
    def caller(self) -> Caller:
        """This process's identity: its token's (config `token`, env MEMORY_PALACE_TOKEN), else
        the configured instance, unverified. Rechecked every TOKEN_RECHECK_S, so a revoked
        token stops working in a long-running server too."""
        token = self.settings.token
        if not token:
            if self.settings.require_token:
                raise PermissionDenied(
                    "this server requires a token (config require_token) and none is set: "
                    "set MEMORY_PALACE_TOKEN to one from `memory-palace token create "
                    "<instance>`"
                )
            return Caller(self.settings.instance_id, "admin", verified=False)
        return self.authenticate(token)

    def authenticate(self, token: str) -> Caller:
        """The caller a token stands for (checked against the default database, cached for
        TOKEN_RECHECK_S). Raises PermissionDenied, never naming the secret."""
        key = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        with self._lock:
            known = self._callers.get(key)
        if known is not None and now - known[1] < TOKEN_RECHECK_S:
            return known[0]
        caller = access.verify_token(self.database(), token)
        with self._lock:
            if len(self._callers) >= 1024:  # a flood of distinct tokens: start over
                self._callers.clear()
            self._callers[key] = (caller, now)
        return caller

    def identify(self, tool: Tool, args: dict[str, Any], caller: Caller) -> Caller:
        """The caller a call runs as: its role checked, identity parameters filled from it or
        checked against it (a verified caller cannot name another instance as itself)."""
        caller.check_role(tool.role, tool.name)
        for param in tool.identity:
            value = args.get(param)
            if value is None:
                if caller.bound:
                    args[param] = caller.instance
                continue
            if not caller.may_be(value):
                raise PermissionDenied(
                    f"{tool.name}: {param}={value!r} names another instance; you are "
                    f"{caller.describe()}. Omit {param} to act as yourself.",
                    param=param,
                )
            caller = caller.act_as(value)
        if caller.instance is None:
            instance = self.settings.instance_id or "default"
            caller = replace(caller, instance=instance)
        return caller

    def _dependencies(self, tool: Tool, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        supply: dict[str, Callable[[], Any]] = {
            "db": lambda: self.database(args.pop("database")),
            "embedder": lambda: self.embedder,
            "settings": lambda: self.settings,
            "catalog": lambda: self.catalog,
            "open_database": lambda: self.database,
            "caller": lambda: caller,
        }
        return {dep: supply[dep]() for dep in tool.deps}

    def call(
        self,
        tool_name: str,
        params: dict[str, Any] | None = None,
        *,
        caller: Caller | None = None,
        **hooks: Any,
    ) -> dict[str, Any]:
        """Validate params and run a tool as `caller` (default: this process's identity).
        Raises MemoryPalaceError subclasses.

        `hooks` are Python-only keyword arguments of the handler that are not tool parameters
        (e.g. memory_reembed's `progress` callback for the CLI's progress bar).
        """
        tool = self.registry.get(tool_name)
        args = validate(tool, params)
        named = args.get("database")
        who = self.identify(tool, args, caller or self.caller)
        deps = self._dependencies(tool, args, who)
        try:
            result = tool.handler(**deps, **args, **hooks)
        except TransactionAborted as exc:
            # A deadlock or serialization failure rolled the transaction back: every tool's
            # writes are one transaction (or idempotent), so running it again is safe.
            log.info("%s: transaction aborted (%s); retrying once", tool.name, exc.message)
            result = tool.handler(**deps, **args, **hooks)
        db = deps.get("db")
        if named is not None and db.take_created():  # a name created a database: say so
            result["database_created"] = {"name": named, "url": db.masked_url, "backend": db.kind}
        return result

    def reset_engine(self, name: str | None = None) -> None:
        """Dispose one named database's engine, or all engines (name=None)."""
        dispose_engines(None if name is None else self.catalog.resolve(name)[1])

    def close(self) -> None:
        dispose_engines()


__all__ = ["Palace"]
