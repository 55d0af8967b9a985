"""doctor against the real PostgreSQL: healthy, no pgvector extension, role without CREATEDB;
and SQLite files."""

from __future__ import annotations

import io
import sqlite3
import uuid

import orjson
import psycopg2
import pytest
from memory_palace import doctor, load_settings
from memory_palace.db import schema
from memory_palace.db.engine import get_database
from psycopg2 import sql
from sqlalchemy.engine import make_url

from tests.fixtures.db import pg_url_for


def settings_for(tmp_path, url: str, **extra):
    d = tmp_path / f"cfg{uuid.uuid4().hex[:6]}"
    d.mkdir()
    (d / "config.json").write_bytes(orjson.dumps({"database": {"url": url}, **extra}))
    return load_settings(d, env={})


def run(settings, **kw) -> tuple[int, str]:
    out = io.StringIO()
    return doctor.run(settings, out=out, **kw), out.getvalue()


def admin(server_url: str, statement: sql.Composable | str) -> None:
    conn = psycopg2.connect(server_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(statement)
    conn.close()


@pytest.mark.postgres
def test_healthy_postgres(tmp_path, pg_url):
    schema.migrate(get_database(pg_url), 384)
    code, out = run(settings_for(tmp_path, pg_url))
    assert code == 0, out
    for name in (
        "server reachable",
        "pgvector installed",
        "pgvector enabled",
        "role may",
        "max_connections",
        "HNSW index",
        "LISTEN/NOTIFY round trip",
        "schema version",
    ):
        assert f"✓ {name}" in out, out
    assert "✗" not in out and "all checks passed" in out


@pytest.mark.postgres
def test_missing_extension_and_index(tmp_path, pg_server_url):
    dbname = f"mp_noext_{uuid.uuid4().hex[:8]}"
    admin(pg_server_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = pg_url_for(pg_server_url, dbname)
    code, out = run(settings_for(tmp_path, url))
    assert code == 1
    assert f"✗ pgvector enabled in {dbname}" in out
    assert "fix: psql " + dbname + ' -c "CREATE EXTENSION IF NOT EXISTS vector;"' in out
    assert "✓ LISTEN/NOTIFY round trip" in out
    # a schema without its HNSW index is reported with the seed's fix
    schema.migrate(get_database(url), 8)
    conn = psycopg2.connect(url)
    conn.autocommit = True
    conn.cursor().execute("DROP INDEX idx_memories_embedding_hnsw")
    conn.close()
    code, out = run(settings_for(tmp_path, url))
    assert code == 1 and "✗ HNSW index" in out
    assert "fix: CREATE INDEX ON memories USING hnsw (embedding vector_cosine_ops);" in out


@pytest.mark.postgres
def test_role_without_createdb(tmp_path, pg_server_url, pg_url):
    schema.migrate(get_database(pg_url), 384)
    role = f"mp_role_{uuid.uuid4().hex[:8]}"
    admin(
        pg_server_url,
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw' NOCREATEDB").format(sql.Identifier(role)),
    )
    url = make_url(pg_url).set(username=role, password="pw").render_as_string(hide_password=False)
    code, out = run(settings_for(tmp_path, url))
    assert code == 1 and "✗ table privileges" in out and f"TO {role};" in out
    owner = psycopg2.connect(pg_url)
    owner.autocommit = True
    for what in ("TABLES", "SEQUENCES"):
        owner.cursor().execute(
            sql.SQL("GRANT ALL ON ALL {} IN SCHEMA public TO {}").format(
                sql.SQL(what), sql.Identifier(role)
            )
        )
    owner.close()
    code, out = run(settings_for(tmp_path, url))
    assert "✓ schema version" in out and "table privileges" not in out
    assert code == 1
    assert "✗ role may create databases (CREATEDB)" in out
    assert f"fix: ALTER USER {role} CREATEDB;" in out
    assert "✓ server reachable" in out


@pytest.mark.postgres
def test_max_connections_too_low_for_the_processes(tmp_path, pg_url):
    schema.migrate(get_database(pg_url), 384)
    code, out = run(settings_for(tmp_path, pg_url), expected_processes=1000)
    assert code == 1 and "✗ max_connections covers the pools" in out
    assert "(5 + 10 + 1 LISTEN) x 1 database(s) x 1000 process(es)" in out
    assert "SHOW max_connections" in out


def test_unreachable_server(tmp_path):
    code, out = run(settings_for(tmp_path, "postgresql://u:pw@127.0.0.1:1/memory_palace"))
    assert code == 1 and "✗ server reachable" in out and "fix: pg_isready" in out
    assert "pw@" not in out


def test_sqlite_checks(tmp_path, sqlite_url):
    settings = settings_for(tmp_path, sqlite_url)
    code, out = run(settings)
    assert code == 0 and "does not exist yet" in out
    schema.migrate(get_database(sqlite_url), 384)
    code, out = run(settings)
    assert (
        code == 0
        and "✓ WAL mode" in out
        and f"✓ schema version: {schema.SCHEMA_VERSION} (current)" in out
    )
    path = sqlite_url.split("///", 1)[1]
    from memory_palace.db.engine import dispose_engines

    dispose_engines()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    code, out = run(settings)
    assert code == 1 and "✗ WAL mode: journal_mode=delete" in out
    assert "PRAGMA journal_mode=WAL;" in out
