"""The engine registry: one `Database` (SQLAlchemy engine, backend adapter, per-database caches)
per URL.

This module holds the only process-wide mutable state of the package (`_REGISTRY`).
`Database(url)` prepares the database first (PostgreSQL: created when missing, pgvector
enabled); every connection it hands out maps driver errors to ours (`translate_db_errors`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Connection

from ..config import type_from_url
from .backend import Backend
from .errors import translate_db_errors
from .postgres import BACKEND as POSTGRES
from .sqlite import BACKEND as SQLITE
from .urls import mask_url

BACKENDS: dict[str, Backend] = {"sqlite": SQLITE, "postgres": POSTGRES}


def backend_for(url: str) -> Backend:
    return BACKENDS[type_from_url(url)]


class Database:
    """One physical database: its engine, backend and caches. Shared by every Palace."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.backend = backend_for(url)
        self.kind = self.backend.kind
        self.masked_url = mask_url(url)
        self.cache: dict[Any, Any] = {}  # per-database caches (vector matrix, ...)
        self.lock = threading.RLock()
        self._local = threading.local()
        self.schema_ready = False
        with translate_db_errors(self):
            #: Facts found while preparing, e.g. {"pgvector_version": "0.6.2"}.
            self.facts: dict[str, Any] = self.backend.prepare(url)
            self.engine = self.backend.create_engine(url)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """An autocommit connection for reads: no BEGIN/ROLLBACK round trips. Nested read()
        calls on one thread share it, so a tool call checks out (and pre-pings) one
        connection however many helpers it goes through."""
        held = getattr(self._local, "conn", None)
        if held is not None:
            yield held
            return
        with translate_db_errors(self), self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read transaction: one consistent view. PostgreSQL server-side cursors and
        SET LOCAL settings need one; read() is autocommit."""
        with translate_db_errors(self), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction. On SQLite it starts with BEGIN IMMEDIATE, so two writers
        wait on busy_timeout instead of failing with 'database is locked' on upgrade."""
        with translate_db_errors(self), self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    def take_created(self) -> bool:
        """True once, for the first caller after this process created the database."""
        with self.lock:
            created = bool(self.facts.pop("created", False))
        return created

    def dispose(self) -> None:
        self.engine.dispose()


class EngineRegistry:
    """url -> Database, created lazily under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dbs: dict[str, Database] = {}

    def get(self, url: str) -> Database:
        with self._lock:
            db = self._dbs.get(url)
            if db is None:
                db = Database(url)
                self._dbs[url] = db
            return db

    def dispose(self, url: str | None = None) -> None:
        with self._lock:
            urls = list(self._dbs) if url is None else [url]
            for u in urls:
                db = self._dbs.pop(u, None)
                if db is not None:
                    db.dispose()


_REGISTRY = EngineRegistry()


def get_database(url: str) -> Database:
    return _REGISTRY.get(url)


def dispose_engines(url: str | None = None) -> None:
    """Dispose one database's engine (by URL), or every engine."""
    _REGISTRY.dispose(url)
