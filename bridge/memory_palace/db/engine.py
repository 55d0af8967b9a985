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

from sqlalchemy.engine import Connection, make_url

from ..config import Postgres, type_from_url
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

    def __init__(self, url: str, options: Postgres | None = None) -> None:
        options = options or Postgres()
        self.url = url
        self.backend = backend_for(url)
        self.kind = self.backend.kind
        self.masked_url = mask_url(url)
        self.cache: dict[Any, Any] = {}  # per-database caches (vector matrix, ...)
        self.lock = threading.RLock()
        self._local = threading.local()
        self.schema_ready = False
        #: Where LISTEN connects: `url`, or postgres.listen_url (past PgBouncer) on this database.
        #: Creating the database goes there too: PgBouncer remembers a failed login to a
        #: database that did not exist yet and refuses it for server_login_retry (15 s).
        self.listen_url = listen_url_for(url, options.listen_url)
        with translate_db_errors(self):
            #: Facts found while preparing, e.g. {"pgvector_version": "0.6.2"}.
            self.facts: dict[str, Any] = self.backend.prepare(self.listen_url)
            self.engine = self.backend.create_engine(url, options)

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


def listen_url_for(url: str, listen_url: str | None) -> str:
    """`listen_url` pointed at `url`'s database, or `url` itself when there is none."""
    if not listen_url or type_from_url(url) != "postgres":
        return url
    name = make_url(url).database
    return make_url(listen_url).set(database=name).render_as_string(hide_password=False)


class EngineRegistry:
    """url -> Database, created lazily under a lock. The first caller's pool options win."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dbs: dict[str, Database] = {}

    def get(self, url: str, options: Postgres | None = None) -> Database:
        with self._lock:
            db = self._dbs.get(url)
            if db is None:
                db = Database(url, options)
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


def get_database(url: str, options: Postgres | None = None) -> Database:
    """The Database for `url`; `options` (config `postgres`) size its pool when it is new."""
    return _REGISTRY.get(url, options)


def dispose_engines(url: str | None = None) -> None:
    """Dispose one database's engine (by URL), or every engine."""
    _REGISTRY.dispose(url)
