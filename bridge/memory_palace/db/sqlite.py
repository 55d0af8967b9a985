"""The SQLite adapter: JSON-text arrays, float32 BLOB vectors and BM25 keyword postings searched
in process (`sqlite_index.py`, fed by a change log), polling instead of NOTIFY."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import orjson
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

from ..errors import BackendUnavailable, ConfigError, InvalidParams, PermissionDenied
from .backend import Backend, Hits, KeywordHits
from .filters import Filters, where
from .search_text import terms
from .sqlite_index import keyword_index, sqlite_index
from .tables import NOW
from .urls import sqlite_path
from .values import as_utc

if TYPE_CHECKING:
    from ..config import Recall
    from .engine import Database

BUSY_TIMEOUT_MS = 30_000
POOL = {"pool_size": 5, "max_overflow": 10}

# Columns the in-process indexes hold: a change to any of them is logged for them.
INDEXED_COLUMNS = (
    "embedding, embedding_model, is_archived, projects, memory_type, instance_id, "
    "foundational, visibility, expires_at, subject, content, keywords"
)
# Keyword search before schema 3: an FTS5 table and its triggers (the postings replaced them).
FTS5_OBJECTS = (
    "DROP TRIGGER IF EXISTS memories_fts_ai",
    "DROP TRIGGER IF EXISTS memories_fts_ad",
    "DROP TRIGGER IF EXISTS memories_fts_au",
    "DROP TABLE IF EXISTS memories_fts",
)

# A change log that the in-process indexes (vectors, keyword postings) of every process read to
# see other processes' writes.
SEARCH_DDL = [
    """CREATE TABLE IF NOT EXISTS memory_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, memory_id INTEGER NOT NULL)""",
    """CREATE TRIGGER IF NOT EXISTS memory_changes_ai AFTER INSERT ON memories BEGIN
        INSERT INTO memory_changes(memory_id) VALUES (new.id);
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS memory_changes_au AFTER UPDATE OF {INDEXED_COLUMNS}
        ON memories BEGIN
        INSERT INTO memory_changes(memory_id) VALUES (new.id);
    END""",
    """CREATE TRIGGER IF NOT EXISTS memory_changes_ad AFTER DELETE ON memories BEGIN
        INSERT INTO memory_changes(memory_id) VALUES (old.id);
    END""",
]


# SQLite primary result codes (sqlite3.h) and what each means for the caller.
_UNAVAILABLE = {
    5: "the database is locked by another process (busy)",
    6: "a table is locked",
    10: "a disk I/O error",
    11: "the database file is corrupt",
    13: "the disk is full",
    14: "the database file cannot be opened",
    26: "the file is not a database",
}
SQLITE_READONLY = 8
_PERMISSION = {
    3: "access permission denied",
    SQLITE_READONLY: "the database is read-only",
    23: "authorization denied",
}
_INVALID = {
    18: "a string or BLOB is too big",
    20: "a value has the wrong type",
    25: "a parameter is out of range",
}


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
    # SQLite's LIKE and lower() fold ASCII only; this folds like PostgreSQL's ILIKE does.
    dbapi_conn.create_function(
        "mp_fold", 1, lambda s: s.casefold() if isinstance(s, str) else s, deterministic=True
    )
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _drop_read_only(ctx: Any) -> None:
    """A connection opened while the file could not be written stays read-only: one that hits
    SQLITE_READONLY is closed instead of pooled, so a later call opens the file again and
    writes once its permissions are back (no restart)."""
    exc = ctx.original_exception
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # primary code of an extended one
    if isinstance(exc, sqlite3.Error) and code == SQLITE_READONLY:
        ctx.is_disconnect = True
        ctx.invalidate_pool_on_disconnect = False  # only this connection


def _on_begin(conn: Connection) -> None:
    options = conn.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT":
        return
    mode = options.get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


class ChangeProbe:
    """`PRAGMA data_version` on a connection of its own that never writes: it changes when any
    other connection, in this process or another, commits to the file. One thread uses it."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._seen: int | None = None

    def changed(self) -> bool:
        try:
            if self._conn is None:
                uri = f"{self._path.resolve().as_uri()}?mode=rw"  # never creates it
                self._conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
            version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:  # cannot tell (file gone, locked): look, and reopen next time
            self.close()
            return True
        changed, self._seen = version != self._seen, version
        return changed

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        self._seen = None


class SqliteBackend(Backend):
    kind = "sqlite"
    listen_mode = "poll"
    TYPES: ClassVar[dict[str, str]] = {
        "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "ref": "INTEGER",
        "int": "INTEGER",
        "float": "REAL",
        "bool": "INTEGER",
        "text": "TEXT",
        "time": "TEXT",
        "strings": "TEXT",
        "json": "TEXT",
        "vector": "BLOB",
    }

    # -- DDL --------------------------------------------------------------------------------
    def literal(self, kind: str, value: Any) -> str:
        if value is NOW:
            return "(strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))"
        if kind == "bool":
            return "1" if value else "0"
        if kind == "strings":
            return "'" + orjson.dumps(list(value)).decode().replace("'", "''") + "'"
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        return repr(value)

    def index_ddl(self, table: Any, index: Any) -> str | None:
        if any(table.column(c).kind == "strings" for c in index.columns):
            return None  # JSON text: a b-tree over it helps no json_each() filter
        return super().index_ddl(table, index)

    def search_ddl(self, dim: int | None) -> list[str]:
        return list(SEARCH_DDL)

    def upgrade(self, conn: Connection, version: int) -> None:
        # 2: the vector index also holds visibility and expiry; 3: the keyword index holds
        # subject, content and keywords, and replaces FTS5. Log changes to what they hold.
        if version in (2, 3):
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS memory_changes_au")
            conn.exec_driver_sql(next(s for s in SEARCH_DDL if "memory_changes_au" in s))
        if version == 3:
            for stmt in FTS5_OBJECTS:
                conn.exec_driver_sql(stmt)

    def existing_columns(self, conn: Connection, table: str) -> set[str]:
        return {r[1] for r in conn.exec_driver_sql(f"PRAGMA table_info({table})")}

    # -- forgetting for good: deleted text must not linger in free pages or the WAL (nor in
    # the in-process keyword index: sqlite_index purges a deleted memory's postings).
    def scrub_begin(self, conn: Connection) -> None:
        conn.exec_driver_sql("PRAGMA secure_delete = ON")  # zero freed cells and pages

    def scrub_end(self, conn: Connection) -> None:
        conn.exec_driver_sql("PRAGMA secure_delete = OFF")

    def scrub_after(self, db: Database) -> None:
        with db.read() as conn:  # old page images stay in the WAL until a checkpoint
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- values -----------------------------------------------------------------------------
    def encode_time(self, value: datetime) -> str:
        return as_utc(value).isoformat()

    def encode_strings(self, value: list[str]) -> str:
        return orjson.dumps(list(value)).decode()

    def encode_vector(self, value: np.ndarray) -> bytes:
        return np.asarray(value, dtype="<f4").tobytes()

    # -- SQL fragments ----------------------------------------------------------------------
    def strings_any(
        self, column: str, values: list[str], params: dict[str, Any], prefix: str
    ) -> str:
        if not values:
            return "0 = 1"
        names = []
        for i, value in enumerate(values):
            params[f"{prefix}{i}"] = value
            names.append(f":{prefix}{i}")
        return (
            f"EXISTS (SELECT 1 FROM json_each({column}) "
            f"WHERE json_each.value IN ({', '.join(names)}))"
        )

    def strings_overlap(self, a: str, b: str) -> str:
        return f"EXISTS (SELECT 1 FROM json_each({a}) x, json_each({b}) y WHERE x.value = y.value)"

    def strings_elements(self, table: str, column: str, alias: str) -> tuple[str, str]:
        return f"json_each({table}.{column}) AS {alias}", f"{alias}.value"

    def strings_remove(self, column: str, param: str) -> str:
        return f"(SELECT json_group_array(value) FROM json_each({column}) WHERE value <> :{param})"

    def contains_folded(self, column: str, param: str) -> str:
        return f"mp_fold({column}) LIKE mp_fold(:{param}) ESCAPE '\\'"

    def type_pattern(self, column: str, pattern: str, params: dict[str, Any], name: str) -> str:
        # GLOB, unlike SQLite's LIKE, is case-sensitive like PostgreSQL's LIKE; '?' and '['
        # are made literal so only '*' is a wildcard.
        special = {"?": "[?]", "[": "[[]"}
        params[name] = "*".join(
            "".join(special.get(c, c) for c in part) for part in pattern.split("*")
        )
        return f"{column} GLOB :{name}"

    # -- search -----------------------------------------------------------------------------
    @staticmethod
    def _allowed(db: Database, f: Filters) -> set[int] | None:
        """The indexes hold no subjects nor event times: pre-select ids for those filters."""
        if not (f.subject or f.since is not None or f.until is not None):
            return None
        cond, params = where(db, f)
        with db.read() as conn:
            return {
                int(r[0])
                for r in conn.execute(text(f"SELECT id FROM memories WHERE {cond}"), params)
            }

    def keyword_scores(
        self, db: Database, query: str, f: Filters, cfg: Recall, whole: Sequence[Sequence[str]]
    ) -> KeywordHits:
        bm25 = (cfg.bm25.k1, cfg.bm25.b)
        index = keyword_index(db, cfg.fields)
        return index.search(
            terms(query), f, self._allowed(db, f), bm25, cfg.keyword_candidates, whole
        )

    def vector_search(
        self,
        db: Database,
        model: str,
        dim: int,
        q: np.ndarray,
        k: int,
        f: Filters,
        need: int | None = None,
    ) -> Hits:  # exact: always k
        return sqlite_index(db, model, dim).search(q, k, f, self._allowed(db, f))

    def vector_mean(
        self, db: Database, model: str, dim: int, f: Filters, sample: int
    ) -> tuple[np.ndarray, int] | None:
        return sqlite_index(db, model, dim).mean(f, self._allowed(db, f), sample)

    def similarities(
        self, db: Database, model: str, dim: int, q: np.ndarray, ids: list[int]
    ) -> dict[int, float]:
        return sqlite_index(db, model, dim).similarities(q, ids) if ids else {}

    def similar_pairs(
        self, db: Database, model: str, dim: int, threshold: float, f: Filters, limit: int
    ) -> list[tuple[int, int, float]]:
        pairs = sqlite_index(db, model, dim).pairwise_max(threshold, f)
        return sorted(pairs, key=lambda p: -p[2])[:limit]

    def resize_vectors(self, conn: Connection, dim: int) -> None:
        pass  # BLOBs have no declared size

    # -- administration ---------------------------------------------------------------------
    def prepare(self, url: str) -> dict[str, Any]:
        path = sqlite_path(url)
        existed = path.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot create the directory for {path}: {exc.strerror or exc}; check the "
                "path and its permissions"
            ) from exc
        return {"created": not existed}

    def create_engine(self, url: str, options: Any = None) -> Engine:
        engine = create_engine(
            f"sqlite:///{sqlite_path(url)}",
            poolclass=QueuePool,
            **POOL,
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
        )
        event.listen(engine, "connect", _on_connect)
        event.listen(engine, "begin", _on_begin)
        event.listen(engine, "handle_error", _drop_read_only)
        return engine

    def change_probe(self, url: str) -> ChangeProbe:
        return ChangeProbe(sqlite_path(url))

    def probe(self, url: str, tables: tuple[str, ...]) -> dict[str, Any]:
        try:
            path = sqlite_path(url)
        except ConfigError as exc:
            return {"status": "down", "error": exc.message, "table_counts": {}}
        if not path.exists():
            return {
                "status": "missing",
                "table_counts": {},
                "error": f"{path} does not exist yet; it is created on first use",
            }
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error as exc:
            return {"status": "down", "error": f"cannot open {path}: {exc}", "table_counts": {}}
        try:
            names = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            # Table names come from the caller's constant tuple, never from input.
            counts = {
                t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                for t in tables
                if t in names
            }
            return {"status": "connected", "table_counts": counts}
        except sqlite3.Error as exc:
            return {"status": "down", "error": f"cannot read {path}: {exc}", "table_counts": {}}
        finally:
            conn.close()

    def discover(self, default_url: str) -> list[str]:
        base = sqlite_path(default_url)
        try:
            found = sorted(base.parent.glob(f"{base.stem}_*{base.suffix or '.db'}"))
        except OSError:
            return []
        return [f"sqlite:///{p}" for p in found if p.is_file()]

    def translate(self, exc: BaseException, db: Database | None) -> Exception | None:
        where_ = f" ({sqlite_path(db.url)})" if db is not None else ""
        if isinstance(exc, OverflowError):
            return InvalidParams(f"a number is out of range: {exc}; integers must fit in 64 bits")
        if not isinstance(exc, sqlite3.Error):
            return None
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        detail = str(exc)
        if code in _PERMISSION:
            return PermissionDenied(
                f"SQLite{where_}: {_PERMISSION[code]} ({detail}); make the file and its "
                "directory writable by this user"
            )
        if code in _INVALID:
            return InvalidParams(f"SQLite{where_}: {_INVALID[code]} ({detail})")
        if code in _UNAVAILABLE or isinstance(exc, sqlite3.OperationalError):
            what = _UNAVAILABLE.get(code, detail)
            return BackendUnavailable(
                f"SQLite{where_}: {what} ({detail}); check the file, its directory and the free "
                "disk space; the call can be retried"
            )
        return None


BACKEND = SqliteBackend()
