"""Schema creation and migration for both backends, derived from `tables.py`.

Why not Alembic: the schema has backend-specific parts (FTS5 + BLOB vs tsvector + pgvector) that
autogenerate cannot express, and the package must migrate itself at start-up without an
alembic.ini. Additive changes need no step: a column added to `tables.py` is added to existing
databases. `palace_meta` records the schema version (for non-additive steps) and a fingerprint
of the generated DDL, so an up-to-date database costs one read at start. Changes run in one
transaction under a lock (BEGIN IMMEDIATE / pg_advisory_xact_lock).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import Conflict
from .backend import Backend
from .engine import Database
from .tables import META, TABLES

log = logging.getLogger("memory_palace.db")

SCHEMA_VERSION = 3
MIGRATION_LOCK_KEY = 0x6D706C63  # "mplc": advisory lock id for schema changes

Step = Callable[[Connection, Database], None]


def _backend_step(version: int) -> Step:
    return lambda conn, db: db.backend.upgrade(conn, version)


# Non-additive changes, by the version they bring the schema to. Never edit an applied one.
STEPS: list[tuple[int, Step]] = [
    (2, _backend_step(2)),  # SQLite: log visibility and expiry changes for the vector index
    (3, _backend_step(3)),  # SQLite: keyword postings in process replace FTS5; log text changes
]


def backend_ddl(backend: Backend, dim: int | None) -> list[str]:
    """Every statement that creates the current schema (idempotent: IF NOT EXISTS)."""
    stmts: list[str] = []
    for table in TABLES:
        stmts += backend.create_table(table, dim)
    return stmts + backend.search_ddl(dim)


def first_use_ddl(backend: Backend, dim: int | None) -> list[str]:
    """What `migrate` runs on a database without the current schema, in its order (doctor
    runs these in a transaction it rolls back, as the configured role)."""
    return [*backend.create_table(META, dim), *backend_ddl(backend, dim)]


def ddl(db: Database, dim: int | None) -> list[str]:
    return backend_ddl(db.backend, dim)


def backend_fingerprint(backend: Backend) -> str:
    return hashlib.sha256("\n".join(backend_ddl(backend, 1)).encode()).hexdigest()[:16]


def fingerprint(db: Database) -> str:
    return backend_fingerprint(db.backend)


def get_meta(conn: Connection, key: str) -> str | None:
    row = conn.execute(text("SELECT value FROM palace_meta WHERE key = :k"), {"k": key}).first()
    return row[0] if row else None


def set_meta(conn: Connection, key: str, value: str) -> None:
    conn.execute(
        text(
            "INSERT INTO palace_meta(key, value) VALUES (:k, :v) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        ),
        {"k": key, "v": value},
    )


def _meta_exists(db: Database, conn: Connection) -> bool:
    return bool(db.backend.existing_columns(conn, META.name))


def schema_version(db: Database) -> int:
    with db.read() as conn:
        if not _meta_exists(db, conn):
            return 0
        return int(get_meta(conn, "schema_version") or 0)


def _up_to_date(conn: Connection, db: Database) -> bool:
    return (
        get_meta(conn, "schema_fingerprint") == fingerprint(db)
        and int(get_meta(conn, "schema_version") or 0) == SCHEMA_VERSION
    )


def _current(db: Database) -> bool:
    with db.read() as conn:
        return _meta_exists(db, conn) and _up_to_date(conn, db)


def _add_missing_columns(conn: Connection, db: Database, dim: int | None) -> int:
    added = 0
    for table in TABLES:
        have = db.backend.existing_columns(conn, table.name)
        for col in table.columns:
            if col.name not in have:
                conn.exec_driver_sql(db.backend.add_column(table, col, dim))
                added += 1
    return added


def migrate(db: Database, dim: int | None) -> int:
    """Bring the schema up to date. Idempotent and safe to run concurrently.

    `dim` sizes the PostgreSQL vector column when the table is first created (required there;
    None is allowed on SQLite, whose BLOBs have no fixed size). Returns the changes applied.
    """
    if db.schema_ready:
        return 0
    with db.lock:
        if db.schema_ready:
            return 0
        if _current(db):
            db.schema_ready = True
            return 0
        with db.write() as conn:
            db.backend.lock(conn, MIGRATION_LOCK_KEY)
            if _meta_exists(db, conn) and _up_to_date(conn, db):
                # Another process migrated while this one waited for the lock. Running the
                # DDL again would take table locks (ALTER TABLE, CREATE INDEX) that deadlock
                # with its writers.
                db.schema_ready = True
                return 0
            for stmt in db.backend.create_table(META, dim):
                conn.exec_driver_sql(stmt)
            version = int(get_meta(conn, "schema_version") or 0)
            for stmt in ddl(db, dim):
                conn.exec_driver_sql(stmt)
            applied = _add_missing_columns(conn, db, dim)
            for target, step in STEPS:
                if target > version:
                    step(conn, db)
                    applied += 1
            if version != SCHEMA_VERSION:
                set_meta(conn, "schema_version", str(SCHEMA_VERSION))
                applied += 1
            set_meta(conn, "schema_fingerprint", fingerprint(db))
            if dim is not None and get_meta(conn, "vector_dim") is None:
                set_meta(conn, "vector_dim", str(dim))
        if applied:
            log.info(
                "migrated %s to schema version %d (%d changes)",
                db.masked_url,
                SCHEMA_VERSION,
                applied,
            )
        db.schema_ready = True
        return applied


def vector_dim(db: Database) -> int | None:
    """The vector dimension this database was created for (PostgreSQL column size)."""
    with db.read() as conn:
        value = get_meta(conn, "vector_dim")
    return int(value) if value else None


def resize_vectors(db: Database, dim: int) -> None:
    """Change the stored vector dimension. Clears every embedding (re-embed afterwards)."""
    with db.write() as conn:
        db.backend.resize_vectors(conn, dim)
        conn.execute(
            text(
                "UPDATE memories SET embedding = NULL, embedding_model = NULL, "
                "embedding_dim = NULL WHERE embedding IS NOT NULL"
            )
        )
        set_meta(conn, "vector_dim", str(dim))


def foreign_embedders(db: Database, embedder_id: str) -> list[tuple[str, int]]:
    """Embedders other than `embedder_id` that produced stored vectors, with row counts."""
    with db.read() as conn:
        rows = conn.execute(
            text(
                "SELECT embedding_model, count(*) FROM memories WHERE embedding IS NOT NULL "
                "AND (embedding_model IS NULL OR embedding_model <> :m) GROUP BY embedding_model"
            ),
            {"m": embedder_id},
        ).all()
    return [(r[0] or "unknown", int(r[1])) for r in rows]


def check_dimension(db: Database, dim: int) -> None:
    stored = vector_dim(db)
    if stored is not None and stored != dim:
        raise Conflict(
            f"database {db.masked_url} stores {stored}-d vectors but the configured embedder "
            f"makes {dim}-d ones. Run `memory-palace reembed --all --execute` (tool "
            "memory_reembed with all_memories=true, dry_run=false) to re-embed every memory with "
            "the new embedder, or configure the embedder the database was built with."
        )
