"""The engine registry: one `Database` (SQLAlchemy engine, backend adapter, per-database caches)
per URL.

This module holds the only process-wide mutable state of the package (`_REGISTRY`).
`Database(url)` prepares the database first (PostgreSQL: created when missing, pgvector
enabled); every connection it hands out maps driver errors to ours (`translate_db_errors`).

Names cost nothing for good (config `resources`): a database nobody used for `idle_timeout`
seconds is released (its pool's connections closed, its caches dropped) by the registry's reaper
thread and opened again on the next use; one pinned by a bridge's listener keeps its object but
still closes its idle pooled connections. At most `max_open_databases` are open at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Connection, make_url

from ..config import Postgres, Resources, type_from_url
from ..errors import BackendUnavailable
from .backend import Backend
from .errors import translate_db_errors
from .postgres import BACKEND as POSTGRES
from .sqlite import BACKEND as SQLITE
from .urls import mask_url

log = logging.getLogger("memory_palace.engine")

BACKENDS: dict[str, Backend] = {"sqlite": SQLITE, "postgres": POSTGRES}


def backend_for(url: str) -> Backend:
    return BACKENDS[type_from_url(url)]


class Database:
    """One physical database: its engine, backend and caches. Shared by every Palace."""

    def __init__(
        self, url: str, options: Postgres | None = None, resources: Resources | None = None
    ) -> None:
        options = options or Postgres()
        self.url = url
        #: Seconds unused after which the registry releases it (None: never).
        self.idle_timeout = resources.idle_timeout if resources else None
        self.last_used = time.monotonic()
        self.busy = 0  # read/snapshot/write blocks in progress
        self.pins = 0  # users that keep it open while idle (a bridge's listener)
        self.pool_released = False  # the idle pool was closed since the last use
        self.backend = backend_for(url)
        self.kind = self.backend.kind
        self.masked_url = mask_url(url)
        self.cache: dict[Any, Any] = {}  # per-database caches (vector matrix, ...)
        self.lock = threading.RLock()
        self._use_lock = threading.Lock()
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
        with self.using(), translate_db_errors(self), self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            self._local.conn, self._local.memo = conn, {}
            try:
                yield conn
            finally:
                self._local.conn = self._local.memo = None

    def read_memo(self) -> dict[str, Any] | None:
        """Values a helper may read once per outermost read() on this thread and reuse in
        it (None outside one); a write on this thread empties it."""
        return getattr(self._local, "memo", None)

    @contextmanager
    def using(self) -> Iterator[None]:
        """Marks the database in use (never released meanwhile) and recently used."""
        with self._use_lock:
            self.busy += 1
            self.last_used = time.monotonic()
            self.pool_released = False
        try:
            yield
        finally:
            with self._use_lock:
                self.busy -= 1
                self.last_used = time.monotonic()

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def idle_for(self, now: float) -> float:
        """Seconds since its last use; 0 while a connection is out."""
        return 0.0 if self.busy else now - self.last_used

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read transaction: one consistent view. PostgreSQL server-side cursors and
        SET LOCAL settings need one; read() is autocommit."""
        with self.using(), translate_db_errors(self), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction. On SQLite it starts with BEGIN IMMEDIATE, so two writers
        wait on busy_timeout instead of failing with 'database is locked' on upgrade."""
        with self.using(), translate_db_errors(self), self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn
        memo = self.read_memo()
        if memo:
            memo.clear()  # written within a read: what it read once is stale

    def take_created(self) -> bool:
        """True once, for the first caller after this process created the database."""
        with self.lock:
            created = bool(self.facts.pop("created", False))
        return created

    def dispose(self) -> None:
        self.engine.dispose()
        with self.lock:
            self.cache.clear()


def listen_url_for(url: str, listen_url: str | None) -> str:
    """`listen_url` pointed at `url`'s database, or `url` itself when there is none."""
    if not listen_url or type_from_url(url) != "postgres":
        return url
    name = make_url(url).database
    return make_url(listen_url).set(database=name).render_as_string(hide_password=False)


class EngineRegistry:
    """url -> Database, created lazily under a lock. The first caller's pool options win.

    A reaper thread (running while any database with an idle timeout is open) releases the
    idle ones; opening one more than `max_open_databases` is refused (after releasing the idle
    ones), with nothing opened or changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dbs: dict[str, Database] = {}
        self._reaper: threading.Thread | None = None

    def get(
        self, url: str, options: Postgres | None = None, resources: Resources | None = None
    ) -> Database:
        with self._lock:
            db = self._dbs.get(url)
            if db is not None:
                db.touch()
                return db
            if resources is not None and len(self._dbs) >= resources.max_open_databases:
                self._release_idle(time.monotonic())
                if len(self._dbs) >= resources.max_open_databases:
                    raise BackendUnavailable(
                        f"this process has {len(self._dbs)} databases open, the most config "
                        f"resources.max_open_databases ({resources.max_open_databases}) "
                        f"allows; {mask_url(url)} was not opened and nothing was changed. "
                        "Use fewer database names, wait until some have been idle for "
                        f"resources.idle_timeout ({resources.idle_timeout:g} s), or raise "
                        "resources.max_open_databases",
                        limit=resources.max_open_databases,
                        key="resources.max_open_databases",
                    )
            db = Database(url, options, resources)
            self._dbs[url] = db
            if db.idle_timeout is not None and (
                self._reaper is None or not self._reaper.is_alive()
            ):
                self._reaper = threading.Thread(
                    target=self._reap, name="mp-engine-reaper", daemon=True
                )
                self._reaper.start()
            return db

    def _release_idle(self, now: float) -> list[str]:
        """Under the lock: drop the unpinned databases idle past their timeout (and close the
        idle pools of pinned ones)."""
        released = []
        for url, db in list(self._dbs.items()):
            if db.idle_timeout is None:
                continue
            idle = db.idle_for(now)
            if idle < db.idle_timeout:
                continue
            if db.pins:
                if not db.pool_released:  # keep the object for its listener; close the pool
                    db.pool_released = True
                    db.engine.dispose()
                continue
            del self._dbs[url]
            db.dispose()
            released.append(db.masked_url)
        if released:
            log.info("released %d idle database(s): %s", len(released), ", ".join(released))
        return released

    def _reap(self) -> None:
        while True:
            with self._lock:
                timeouts = [d.idle_timeout for d in self._dbs.values() if d.idle_timeout]
                if not timeouts:
                    self._reaper = None
                    return
            time.sleep(min(max(min(timeouts) / 4, 0.05), 5.0))
            with self._lock:
                self._release_idle(time.monotonic())

    def open_count(self) -> int:
        with self._lock:
            return len(self._dbs)

    def dispose(self, url: str | None = None) -> None:
        with self._lock:
            urls = list(self._dbs) if url is None else [url]
            for u in urls:
                db = self._dbs.pop(u, None)
                if db is not None:
                    db.dispose()


_REGISTRY = EngineRegistry()


def get_database(
    url: str, options: Postgres | None = None, resources: Resources | None = None
) -> Database:
    """The Database for `url`; `options` (config `postgres`) size its pool when it is new;
    `resources` (config `resources`) set when it is released and how many may be open."""
    return _REGISTRY.get(url, options, resources)


def open_databases() -> int:
    """How many databases this process has open."""
    return _REGISTRY.open_count()


def dispose_engines(url: str | None = None) -> None:
    """Dispose one database's engine (by URL), or every engine."""
    _REGISTRY.dispose(url)
