"""The engine registry: one `Database` (SQLAlchemy engine + per-database caches) per URL.

This module holds the only process-wide mutable state of the package (`_REGISTRY`).
PostgreSQL databases that do not exist are created on first use; pgvector is checked once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
from psycopg2 import errorcodes, sql
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.pool import QueuePool

from ..config import type_from_url
from ..errors import BackendUnavailable
from .urls import mask_url, pg_database_name, sqlalchemy_url, sqlite_path

log = logging.getLogger("memory_palace.db")

PG_POOL = {"pool_size": 5, "max_overflow": 10, "pool_pre_ping": True}
SQLITE_BUSY_TIMEOUT_MS = 30_000
PGVECTOR_INSTALL = (
    "install pgvector on the server (Debian/Ubuntu: sudo apt install postgresql-16-pgvector; "
    "macOS: brew install pgvector), then run CREATE EXTENSION vector; as a superuser"
)


class Database:
    """One physical database: its engine, kind and caches. Shared by every Palace in the process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.kind = type_from_url(url)
        self.masked_url = mask_url(url)
        self.cache: dict[str, Any] = {}  # per-database caches (vector matrix, ...)
        self.lock = threading.RLock()
        self._local = threading.local()
        self.schema_ready = False
        self.pgvector_version: str | None = None
        if self.kind == "postgres":
            ensure_pg_database(url)
            self.pgvector_version = ensure_pgvector(url)
            self.engine = create_engine(sqlalchemy_url(url), poolclass=QueuePool, **PG_POOL)
        else:
            path = sqlite_path(url)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendUnavailable(f"cannot create the directory for {path}: {exc}") from exc
            self.engine = create_engine(
                sqlalchemy_url(url),
                poolclass=QueuePool,
                pool_size=5,
                max_overflow=10,
                connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            )
            event.listen(self.engine, "connect", _sqlite_on_connect)
            event.listen(self.engine, "begin", _sqlite_on_begin)

    @property
    def is_postgres(self) -> bool:
        return self.kind == "postgres"

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """An autocommit connection for reads: no BEGIN/ROLLBACK round trips. Nested read()
        calls on the same thread share it, so one tool call pays one pool checkout (and one
        pre-ping) however many helpers it goes through."""
        held = getattr(self._local, "conn", None)
        if held is not None:
            yield held
            return
        with self.engine.connect() as conn:
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
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction. On SQLite it starts with BEGIN IMMEDIATE, so two writers
        wait on busy_timeout instead of failing with 'database is locked' on upgrade."""
        with self.engine.connect() as conn:
            if not self.is_postgres:
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _sqlite_on_begin)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    options = conn.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT":
        return
    mode = options.get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def _pg_connect(url: str, dbname: str | None = None) -> Any:
    u = sqlalchemy_url(url)
    kw: dict[str, Any] = {
        "host": u.host,
        "port": u.port,
        "user": u.username,
        "password": u.password,
        "dbname": dbname or u.database,
    }
    kw.update({k: (v[-1] if isinstance(v, tuple) else v) for k, v in u.query.items()})
    return psycopg2.connect(
        connect_timeout=10, **{k: v for k, v in kw.items() if v not in (None, "")}
    )


def pg_connect(url: str, *, autocommit: bool = True) -> Any:
    """A raw psycopg2 connection (for LISTEN, COPY and admin work), with clear errors."""
    try:
        conn = _pg_connect(url)
    except psycopg2.OperationalError as exc:
        raise BackendUnavailable(_pg_connect_error(url, exc)) from exc
    conn.autocommit = autocommit
    return conn


def _pg_connect_error(url: str, exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    return (
        f"cannot connect to PostgreSQL at {mask_url(url)}: {text}. "
        "Check that the server runs (pg_isready) and that the URL, user and password are right."
    )


def ensure_pg_database(url: str) -> bool:
    """Create the database named in `url` if it does not exist. True when it was created.

    Raises BackendUnavailable with `ALTER USER <user> CREATEDB;` when the role may not create it.
    """
    try:
        _pg_connect(url).close()
        return False
    except psycopg2.OperationalError as exc:
        if "does not exist" not in str(exc) or "database" not in str(exc):
            raise BackendUnavailable(_pg_connect_error(url, exc)) from exc
    dbname = pg_database_name(url)
    user = sqlalchemy_url(url).username or "<your_user>"
    try:
        admin = _pg_connect(url, "postgres")
    except psycopg2.OperationalError as exc:
        raise BackendUnavailable(
            f"database {dbname!r} does not exist and the maintenance database 'postgres' is not "
            f"reachable to create it ({str(exc).strip()}). Create it yourself: createdb {dbname}"
        ) from exc
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if cur.fetchone():
                return False
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            except psycopg2.Error as exc:
                if exc.pgcode == errorcodes.DUPLICATE_DATABASE:
                    return False  # another process created it first
                if exc.pgcode == errorcodes.INSUFFICIENT_PRIVILEGE:
                    raise BackendUnavailable(
                        f"database {dbname!r} does not exist and role {user!r} may not create it "
                        f"(no CREATEDB privilege). Fix: as a superuser run ALTER USER {user} CREATEDB; "
                        f"or create it yourself: createdb -O {user} {dbname}",
                        database=dbname,
                    ) from exc
                raise BackendUnavailable(f"cannot create database {dbname!r}: {exc}") from exc
        log.info("created PostgreSQL database %s", dbname)
        return True
    finally:
        admin.close()


def ensure_pgvector(url: str) -> str:
    """Make sure the vector extension is enabled; return its version."""
    conn = pg_connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cur.fetchone()
            if row:
                return row[0]
            try:
                cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg2.Error as exc:
                cur.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
                available = cur.fetchone() is not None
                dbname = pg_database_name(url)
                if not available:
                    raise BackendUnavailable(
                        f"pgvector is not installed on the PostgreSQL server of {dbname!r}: "
                        + PGVECTOR_INSTALL
                    ) from exc
                raise BackendUnavailable(
                    f"pgvector is installed but not enabled in database {dbname!r}, and this role "
                    f"may not enable it ({exc.pgerror or exc}). Fix: as a superuser run "
                    f'psql {dbname} -c "CREATE EXTENSION vector;"'
                ) from exc
            cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            return cur.fetchone()[0]
    finally:
        conn.close()


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

    def peek(self, url: str) -> Database | None:
        return self._dbs.get(url)

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
