"""Schema and migrations for both backends, chosen per database (never at import time).

Why a small explicit version table instead of Alembic: the schema has two dialect-specific
shapes (FTS5 + BLOB vs tsvector + pgvector) that autogenerate cannot express, the package must
migrate itself at start-up without an alembic.ini, and each step is a few lines of SQL.
`palace_meta.schema_version` holds the number of the last applied step; steps are idempotent
and run inside one transaction under a lock (BEGIN IMMEDIATE / pg_advisory_xact_lock).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import Conflict
from .engine import Database

log = logging.getLogger("memory_palace.db")

SCHEMA_VERSION = 1
MIGRATION_LOCK_KEY = 0x6D706C63  # "mplc": advisory lock id for schema changes

SQLITE_V1 = [
    """CREATE TABLE IF NOT EXISTS memories (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        updated_at TEXT,
        last_accessed_at TEXT,
        access_count INTEGER NOT NULL DEFAULT 0,
        instance_id TEXT,
        projects TEXT NOT NULL DEFAULT '["life"]',
        memory_type TEXT,
        subject TEXT,
        content TEXT NOT NULL,
        content_hash TEXT,
        keywords TEXT,
        tags TEXT,
        foundational INTEGER NOT NULL DEFAULT 0,
        source_type TEXT,
        source_context TEXT,
        source_session_id TEXT,
        embedding BLOB,
        embedding_model TEXT,
        embedding_dim INTEGER,
        expires_at TEXT,
        is_archived INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS ix_memories_instance ON memories(instance_id)",
    "CREATE INDEX IF NOT EXISTS ix_memories_type ON memories(memory_type)",
    "CREATE INDEX IF NOT EXISTS ix_memories_subject ON memories(subject)",
    "CREATE INDEX IF NOT EXISTS ix_memories_created ON memories(created_at)",
    "CREATE INDEX IF NOT EXISTS ix_memories_hash ON memories(content_hash)",
    "CREATE INDEX IF NOT EXISTS ix_memories_archived ON memories(is_archived, foundational)",
    # Keyword search: an external-content FTS5 table kept in sync by triggers.
    """CREATE VIRTUAL TABLE IF NOT EXISTS memories_fts USING fts5(
        subject, content, keywords, content='memories', content_rowid='id',
        tokenize='porter unicode61')""",
    """CREATE TRIGGER IF NOT EXISTS memories_fts_ai AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts(rowid, subject, content, keywords)
        VALUES (new.id, new.subject, new.content, new.keywords);
    END""",
    """CREATE TRIGGER IF NOT EXISTS memories_fts_ad AFTER DELETE ON memories BEGIN
        INSERT INTO memories_fts(memories_fts, rowid, subject, content, keywords)
        VALUES ('delete', old.id, old.subject, old.content, old.keywords);
    END""",
    """CREATE TRIGGER IF NOT EXISTS memories_fts_au AFTER UPDATE OF subject, content, keywords
        ON memories BEGIN
        INSERT INTO memories_fts(memories_fts, rowid, subject, content, keywords)
        VALUES ('delete', old.id, old.subject, old.content, old.keywords);
        INSERT INTO memories_fts(rowid, subject, content, keywords)
        VALUES (new.id, new.subject, new.content, new.keywords);
    END""",
    # Change log read by the in-process vector cache of every process (see services/vector_index).
    """CREATE TABLE IF NOT EXISTS memory_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, memory_id INTEGER NOT NULL)""",
    """CREATE TRIGGER IF NOT EXISTS memory_changes_ai AFTER INSERT ON memories BEGIN
        INSERT INTO memory_changes(memory_id) VALUES (new.id);
    END""",
    """CREATE TRIGGER IF NOT EXISTS memory_changes_au AFTER UPDATE OF
        embedding, embedding_model, is_archived, projects, memory_type, instance_id, foundational
        ON memories BEGIN
        INSERT INTO memory_changes(memory_id) VALUES (new.id);
    END""",
    """CREATE TRIGGER IF NOT EXISTS memory_changes_ad AFTER DELETE ON memories BEGIN
        INSERT INTO memory_changes(memory_id) VALUES (old.id);
    END""",
    """CREATE TABLE IF NOT EXISTS memory_edges (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        source_id INTEGER NOT NULL REFERENCES memories(id) ON DELETE CASCADE,
        target_id INTEGER NOT NULL REFERENCES memories(id) ON DELETE CASCADE,
        relation_type TEXT NOT NULL,
        strength REAL NOT NULL DEFAULT 1.0 CHECK (strength >= 0 AND strength <= 1),
        bidirectional INTEGER NOT NULL DEFAULT 0,
        metadata TEXT,
        created_by TEXT,
        auto_linked INTEGER NOT NULL DEFAULT 0,
        UNIQUE (source_id, target_id, relation_type),
        CHECK (source_id <> target_id)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_edges_source ON memory_edges(source_id, relation_type)",
    "CREATE INDEX IF NOT EXISTS ix_edges_target ON memory_edges(target_id, auto_linked)",
    "CREATE INDEX IF NOT EXISTS ix_edges_type ON memory_edges(relation_type)",
    """CREATE TABLE IF NOT EXISTS messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        from_instance TEXT NOT NULL,
        to_instance TEXT NOT NULL,
        message_type TEXT NOT NULL DEFAULT 'message',
        subject TEXT,
        content TEXT NOT NULL,
        channel TEXT,
        priority INTEGER NOT NULL DEFAULT 0 CHECK (priority >= 0 AND priority <= 10),
        expires_at TEXT,
        delivery_status TEXT NOT NULL DEFAULT 'pending',
        delivered_at TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS ix_messages_to ON messages(to_instance, id)",
    "CREATE INDEX IF NOT EXISTS ix_messages_channel ON messages(channel, id)",
    """CREATE TABLE IF NOT EXISTS message_reads (
        message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        instance_id TEXT NOT NULL,
        read_at TEXT NOT NULL,
        PRIMARY KEY (message_id, instance_id)
    )""",
    """CREATE TABLE IF NOT EXISTS subscriptions (
        instance_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (instance_id, channel)
    )""",
]


def postgres_v1(dim: int) -> list[str]:
    return [
        # array_to_string is only STABLE, so a generated column needs an IMMUTABLE wrapper.
        """CREATE OR REPLACE FUNCTION memory_palace_tsv(subject text, content text, keywords text[])
        RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT setweight(to_tsvector('english', coalesce(subject, '')), 'A')
                || to_tsvector('english', coalesce(content, ''))
                || setweight(to_tsvector('english',
                       coalesce(array_to_string(keywords, ' '), '')), 'B')
        $$""",
        f"""CREATE TABLE IF NOT EXISTS memories (
            id BIGSERIAL PRIMARY KEY,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            updated_at TIMESTAMPTZ,
            last_accessed_at TIMESTAMPTZ,
            access_count INTEGER NOT NULL DEFAULT 0,
            instance_id TEXT,
            projects TEXT[] NOT NULL DEFAULT ARRAY['life'],
            memory_type TEXT,
            subject TEXT,
            content TEXT NOT NULL,
            content_hash TEXT,
            keywords TEXT[],
            tags TEXT[],
            foundational BOOLEAN NOT NULL DEFAULT false,
            source_type TEXT,
            source_context TEXT,
            source_session_id TEXT,
            embedding vector({int(dim)}),
            embedding_model TEXT,
            embedding_dim INTEGER,
            expires_at TIMESTAMPTZ,
            is_archived BOOLEAN NOT NULL DEFAULT false,
            tsv tsvector GENERATED ALWAYS AS (memory_palace_tsv(subject, content, keywords)) STORED
        ) WITH (fillfactor = 70)""",  # room for HOT updates: access counts skip index upkeep
        "CREATE INDEX IF NOT EXISTS ix_memories_instance ON memories(instance_id)",
        "CREATE INDEX IF NOT EXISTS ix_memories_type ON memories(memory_type)",
        "CREATE INDEX IF NOT EXISTS ix_memories_subject ON memories(subject)",
        "CREATE INDEX IF NOT EXISTS ix_memories_created ON memories(created_at)",
        "CREATE INDEX IF NOT EXISTS ix_memories_hash ON memories(content_hash)",
        "CREATE INDEX IF NOT EXISTS ix_memories_archived ON memories(is_archived, foundational)",
        "CREATE INDEX IF NOT EXISTS ix_memories_projects ON memories USING gin (projects)",
        "CREATE INDEX IF NOT EXISTS ix_memories_tsv ON memories USING gin (tsv)",
        """CREATE INDEX IF NOT EXISTS idx_memories_embedding_hnsw ON memories
            USING hnsw (embedding vector_cosine_ops)""",
        """CREATE TABLE IF NOT EXISTS memory_edges (
            id BIGSERIAL PRIMARY KEY,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            source_id BIGINT NOT NULL REFERENCES memories(id) ON DELETE CASCADE,
            target_id BIGINT NOT NULL REFERENCES memories(id) ON DELETE CASCADE,
            relation_type TEXT NOT NULL,
            strength DOUBLE PRECISION NOT NULL DEFAULT 1.0 CHECK (strength >= 0 AND strength <= 1),
            bidirectional BOOLEAN NOT NULL DEFAULT false,
            metadata JSONB,
            created_by TEXT,
            auto_linked BOOLEAN NOT NULL DEFAULT false,
            UNIQUE (source_id, target_id, relation_type),
            CHECK (source_id <> target_id)
        )""",
        "CREATE INDEX IF NOT EXISTS ix_edges_source ON memory_edges(source_id, relation_type)",
        "CREATE INDEX IF NOT EXISTS ix_edges_target ON memory_edges(target_id, auto_linked)",
        "CREATE INDEX IF NOT EXISTS ix_edges_type ON memory_edges(relation_type)",
        """CREATE TABLE IF NOT EXISTS messages (
            id BIGSERIAL PRIMARY KEY,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            from_instance TEXT NOT NULL,
            to_instance TEXT NOT NULL,
            message_type TEXT NOT NULL DEFAULT 'message',
            subject TEXT,
            content TEXT NOT NULL,
            channel TEXT,
            priority INTEGER NOT NULL DEFAULT 0 CHECK (priority >= 0 AND priority <= 10),
            expires_at TIMESTAMPTZ,
            delivery_status TEXT NOT NULL DEFAULT 'pending',
            delivered_at TIMESTAMPTZ
        )""",
        "CREATE INDEX IF NOT EXISTS ix_messages_to ON messages(to_instance, id)",
        "CREATE INDEX IF NOT EXISTS ix_messages_channel ON messages(channel, id)",
        """CREATE TABLE IF NOT EXISTS message_reads (
            message_id BIGINT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            instance_id TEXT NOT NULL,
            read_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (message_id, instance_id)
        )""",
        """CREATE TABLE IF NOT EXISTS subscriptions (
            instance_id TEXT NOT NULL,
            channel TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (instance_id, channel)
        )""",
    ]


Step = Callable[[Connection, Database, int], None]


def _v1(conn: Connection, db: Database, dim: int) -> None:
    for stmt in postgres_v1(dim) if db.is_postgres else SQLITE_V1:
        conn.exec_driver_sql(stmt)


# Append new steps here; never edit an applied one.
MIGRATIONS: list[tuple[int, Step]] = [(1, _v1)]
assert MIGRATIONS[-1][0] == SCHEMA_VERSION


def _meta_table(conn: Connection) -> None:
    conn.exec_driver_sql(
        "CREATE TABLE IF NOT EXISTS palace_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
    )


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


def schema_version(db: Database) -> int:
    with db.read() as conn:
        if db.is_postgres:
            exists = conn.execute(text("SELECT to_regclass('palace_meta')")).scalar() is not None
        else:
            exists = conn.execute(
                text("SELECT 1 FROM sqlite_master WHERE type='table' AND name='palace_meta'")
            ).first()
        if not exists:
            return 0
        return int(get_meta(conn, "schema_version") or 0)


def migrate(db: Database, dim: int | None) -> int:
    """Bring the schema up to SCHEMA_VERSION. Idempotent and safe to run concurrently.

    `dim` sizes the PostgreSQL vector column when the table is first created (required there;
    None is allowed on SQLite, whose BLOBs have no fixed size).
    Returns the number of steps applied.
    """
    if db.schema_ready:
        return 0
    with db.lock:
        if db.schema_ready:
            return 0
        applied = 0
        with db.write() as conn:
            if db.is_postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            _meta_table(conn)
            current = int(get_meta(conn, "schema_version") or 0)
            for version, step in MIGRATIONS:
                if version > current:
                    step(conn, db, dim)
                    set_meta(conn, "schema_version", str(version))
                    applied += 1
            if dim is not None and get_meta(conn, "vector_dim") is None:
                set_meta(conn, "vector_dim", str(dim))
        if applied:
            log.info(
                "migrated %s to schema version %d (%d steps)",
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
        if db.is_postgres:
            conn.exec_driver_sql("DROP INDEX IF EXISTS idx_memories_embedding_hnsw")
            conn.exec_driver_sql(
                f"ALTER TABLE memories ALTER COLUMN embedding TYPE vector({int(dim)}) USING NULL"
            )
            conn.exec_driver_sql(
                "CREATE INDEX IF NOT EXISTS idx_memories_embedding_hnsw ON memories "
                "USING hnsw (embedding vector_cosine_ops)"
            )
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
            f"makes {dim}-d ones. Run `memory-palace reembed --all --execute` (tool memory_reembed "
            "with all_memories=true, dry_run=false) to re-embed every memory with the new "
            "embedder, or configure the embedder the database was built with."
        )
