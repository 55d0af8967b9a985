"""Engines, auto-creation, pgvector checks, mixed backends and migrations, on real databases."""

from __future__ import annotations

import uuid

import pytest
from memory_palace import Palace, PermissionDenied
from memory_palace.db import schema
from memory_palace.db.postgres import ensure_database, pg_connect
from memory_palace.db.urls import pg_database_name
from sqlalchemy import text

from tests.fixtures.db import pg_url_for


def tables(db) -> set[str]:
    with db.read() as conn:
        if db.kind == "postgres":
            rows = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname='public'"))
        else:
            rows = conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))
        return {r[0] for r in rows}


def test_schema_created_on_first_use(palace: Palace) -> None:
    db = palace.database()
    assert {
        "memories",
        "memory_edges",
        "messages",
        "message_reads",
        "subscriptions",
        "palace_meta",
    } <= tables(db)
    assert schema.schema_version(db) == schema.SCHEMA_VERSION


def test_migrations_run_twice_are_idempotent(palace: Palace) -> None:
    db = palace.database()
    db.schema_ready = False
    assert schema.migrate(db, 384) == 0
    with db.write() as conn:  # simulate an older database: version row lost, tables present
        conn.execute(text("DELETE FROM palace_meta WHERE key='schema_version'"))
    db.schema_ready = False
    assert schema.migrate(db, 384) == schema.SCHEMA_VERSION  # every step again, harmlessly
    db.schema_ready = False
    assert schema.migrate(db, 384) == 0
    assert schema.schema_version(db) == schema.SCHEMA_VERSION


def test_sqlite_schema_2_loses_fts5_and_logs_text_changes(make_palace, sqlite_url: str) -> None:
    """A database from before schema 3 (FTS5 keyword search, text edits not logged) upgrades:
    FTS5 is dropped and an edit of the text reaches the in-process keyword index."""
    palace = make_palace(sqlite_url)
    db = palace.database()
    mid = palace.call("memory_set", {"content": "an otter in the reeds", "auto_link": False})["id"]
    with db.write() as conn:  # what schema 2 had
        conn.exec_driver_sql(
            "CREATE VIRTUAL TABLE memories_fts USING fts5(subject, content, keywords, "
            "content='memories', content_rowid='id')"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER memories_fts_ai AFTER INSERT ON memories BEGIN "
            "INSERT INTO memories_fts(rowid, content) VALUES (new.id, new.content); END"
        )
        conn.exec_driver_sql("DROP TRIGGER memory_changes_au")
        conn.exec_driver_sql(
            "CREATE TRIGGER memory_changes_au AFTER UPDATE OF embedding ON memories BEGIN "
            "INSERT INTO memory_changes(memory_id) VALUES (new.id); END"
        )
        conn.execute(text("UPDATE palace_meta SET value = '2' WHERE key = 'schema_version'"))
    db.schema_ready = False  # as a process opening it for the first time
    assert palace.call("memory_recall", {"query": "otter"})["count"] == 1
    assert "memories_fts" not in tables(db)
    assert schema.schema_version(db) == schema.SCHEMA_VERSION
    palace.call("memory_update", {"memory_id": mid, "keywords": ["kw9"], "reason": "tag"})
    assert [m["id"] for m in palace.call("memory_recall", {"query": "kw9"})["memories"]] == [mid]


def test_sqlite_pragmas(make_palace, sqlite_url: str) -> None:
    db = make_palace(sqlite_url).database()
    with db.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000


@pytest.mark.postgres
def test_postgres_pool_and_indexes(make_palace, pg_url: str) -> None:
    db = make_palace(pg_url).database()
    pool = db.engine.pool
    assert pool.size() == 5 and pool._max_overflow == 10 and db.engine.pool._pre_ping
    with db.read() as conn:
        idx = {
            r[0]: r[1]
            for r in conn.execute(
                text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename='memories'")
            )
        }
        coltype = conn.execute(
            text(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid='memories'::regclass AND attname='embedding'"
            )
        ).scalar()
    assert "hnsw" in idx["idx_memories_embedding_hnsw"]
    assert "vector_cosine_ops" in idx["idx_memories_embedding_hnsw"]
    assert "gin" in idx["ix_memories_projects"] and "gin" in idx["ix_memories_tsv"]
    assert coltype == "vector(384)"


@pytest.mark.postgres
def test_auto_creates_missing_database(pg_server_url: str, pg_url: str, make_palace) -> None:
    admin = pg_connect(pg_server_url)

    def exists(dbname: str) -> bool:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname=%s", (dbname,))
            return cur.fetchone() is not None

    try:
        name = pg_database_name(pg_url)
        assert not exists(name)
        palace = make_palace(pg_url)
        palace.database()
        assert exists(name)
        # a named database is derived from the default and created too
        life = f"life{uuid.uuid4().hex[:6]}"
        assert not exists(f"memory_palace_{life}")
        db = palace.database(life)
        assert pg_database_name(db.url) == f"memory_palace_{life}"
        assert exists(f"memory_palace_{life}") and "memories" in tables(db)
    finally:
        admin.close()


@pytest.fixture
def limited_role(pg_server_url: str):
    """A login role without CREATEDB and without superuser, created in the test."""
    role = f"mp_user_{uuid.uuid4().hex[:8]}"
    admin = pg_connect(pg_server_url)
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'pw' NOCREATEDB NOSUPERUSER")
    yield role
    admin.close()


def role_url(server_url: str, role: str, dbname: str) -> str:
    from sqlalchemy.engine import make_url

    return (
        make_url(server_url)
        .set(username=role, password="pw", database=dbname)
        .render_as_string(hide_password=False)
    )


@pytest.mark.postgres
def test_no_createdb_gives_clear_error(pg_server_url: str, limited_role: str, make_palace) -> None:
    url = role_url(pg_server_url, limited_role, f"mp_nocreate_{uuid.uuid4().hex[:8]}")
    palace = make_palace(url)
    with pytest.raises(PermissionDenied) as err:
        palace.database()
    assert f"ALTER USER {limited_role} CREATEDB;" in str(err.value)
    # the process goes on: a SQLite named database still works from the same palace
    palace.catalog.register("side", "sqlite:///" + str(palace.settings.data_dir / "side.db"))
    assert "memories" in tables(palace.database("side"))


@pytest.mark.postgres
def test_pgvector_missing_and_not_creatable(
    pg_server_url: str, limited_role: str, make_palace
) -> None:
    dbname = f"mp_noext_{uuid.uuid4().hex[:8]}"
    admin = pg_connect(pg_server_url)
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{dbname}" OWNER "{limited_role}"')
    admin.close()
    palace = make_palace(role_url(pg_server_url, limited_role, dbname))
    with pytest.raises(PermissionDenied) as err:
        palace.database()
    assert "CREATE EXTENSION vector" in str(err.value) and dbname in str(err.value)
    # once a superuser enabled it, the limited role goes on
    su = pg_connect(pg_url_for(pg_server_url, dbname))
    with su.cursor() as cur:
        cur.execute("CREATE EXTENSION vector")
    su.close()
    assert "memories" in tables(palace.database())


@pytest.mark.postgres
def test_ensure_database_is_idempotent(pg_url: str) -> None:
    assert ensure_database(pg_url) is True
    assert ensure_database(pg_url) is False


@pytest.mark.postgres
def test_mixed_backends_pg_default_sqlite_named(make_palace, pg_url: str, tmp_path) -> None:
    side = f"sqlite:///{tmp_path / 'side.db'}"
    palace = make_palace(
        databases={
            "default": {"type": "postgres", "url": pg_url},
            "side": {"type": "sqlite", "url": side},
        }
    )
    assert palace.database().kind == "postgres" and palace.database("side").kind == "sqlite"
    assert "memory_changes" in tables(palace.database("side"))


@pytest.mark.postgres
def test_mixed_backends_sqlite_default_pg_named(make_palace, pg_url: str, sqlite_url: str) -> None:
    palace = make_palace(
        databases={
            "default": {"type": "sqlite", "url": sqlite_url},
            "team": {"type": "postgres", "url": pg_url},
        }
    )
    team = palace.database("team")
    with team.read() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM pg_extension WHERE extname='vector'")).scalar()
            == 1
        )
    assert palace.database().kind == "sqlite"


def test_sqlite_named_database_is_derived_file(make_palace, sqlite_url: str, tmp_path) -> None:
    palace = make_palace(sqlite_url)
    db = palace.database("life")
    assert db.url.endswith("memories_life.db")
    assert (tmp_path / "memories_life.db").exists()


def test_set_default_routes_calls(make_palace, sqlite_url: str) -> None:
    palace = make_palace(sqlite_url)
    palace.catalog.register("work")
    palace.catalog.set_default("work")
    assert palace.database().url.endswith("memories_work.db")
    assert palace.catalog.default == "work"


def test_reset_engine_one_and_all(make_palace, sqlite_url: str) -> None:
    palace = make_palace(sqlite_url)
    a = palace.database()
    b = palace.database("life")
    palace.reset_engine("life")
    assert palace.database() is a
    assert palace.database("life") is not b
    palace.reset_engine()
    assert palace.database() is not a


def test_dimension_mismatch_is_refused(make_palace, sqlite_url: str) -> None:
    from memory_palace import Conflict
    from memory_palace.embeddings import HashingEmbedder

    make_palace(sqlite_url).database()
    other = make_palace(sqlite_url, embedder=HashingEmbedder(256))
    with pytest.raises(Conflict, match="memory_reembed"):
        other.check_embedder(other.database())
