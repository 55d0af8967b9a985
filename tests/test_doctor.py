"""doctor against the real PostgreSQL, connecting as restricted roles: it runs what first use
runs (create the database, CREATE EXTENSION vector, the schema's DDL) in rolled-back
transactions, so each failure first use would hit is reported with its fix, and a database it
passes really works as that role. Also SQLite files, tokens and `doctor --json`."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
import uuid

import orjson
import psycopg2
import pytest
from memory_palace import doctor, load_settings
from memory_palace.db import schema
from memory_palace.db.engine import dispose_engines, get_database
from memory_palace.errors import MemoryPalaceError, PermissionDenied
from memory_palace.services import access
from psycopg2 import sql
from sqlalchemy.engine import make_url

from tests.fixtures.db import pg_url_for

SECRET = "s3cret-pw-7781"


def settings_for(tmp_path, url: str, **extra):
    d = tmp_path / f"cfg{uuid.uuid4().hex[:6]}"
    d.mkdir()
    (d / "config.json").write_bytes(orjson.dumps({"database": {"url": url}, **extra}))
    return load_settings(d, env={})


def run(settings, **kw) -> tuple[int, str]:
    out = io.StringIO()
    code, text = doctor.run(settings, out=out, **kw), out.getvalue()
    assert SECRET not in text
    return code, text


def admin(server_url: str, *statements: sql.Composable | str, dbname: str | None = None) -> None:
    conn = psycopg2.connect(pg_url_for(server_url, dbname) if dbname else server_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    conn.close()


def new_role(server_url: str, *options: str) -> str:
    role = f"mp_role_{uuid.uuid4().hex[:8]}"
    admin(
        server_url,
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} " + " ".join(options)).format(
            sql.Identifier(role), sql.Literal(SECRET)
        ),
    )
    return role


def as_role(url: str, role: str) -> str:
    return make_url(url).set(username=role, password=SECRET).render_as_string(hide_password=False)


def host_of(server_url: str) -> str:
    u = make_url(server_url)
    return str(u.host or u.query["host"])


def first_use(url: str) -> None:
    """What the first tool call does: prepare the database, then create the schema."""
    try:
        schema.migrate(get_database(url), 384)
    finally:
        dispose_engines()


@pytest.mark.postgres
def test_healthy_postgres(tmp_path, pg_url):
    first_use(pg_url)
    code, out = run(settings_for(tmp_path, pg_url))
    assert code == 0, out
    for name in (
        "server reachable",
        "pgvector installed",
        "pgvector enabled",
        "role may",
        "table privileges",
        "max_connections",
        "HNSW index",
        "LISTEN/NOTIFY round trip",
        "schema version",
        "NOTIFY queue: 0.0% used (pg_notification_queue_usage())",
    ):
        assert f"✓ {name}" in out, out
    assert "• tokens: identities are unverified (no tokens issued)" in out
    assert "✗" not in out and "all checks passed" in out


def test_notify_queue_over_half_full_warns_with_the_fix():
    """The queue is 8 GB: the test fills no queue; the line doctor prints above 50 % is this."""
    assert doctor._notify_queue_check(0.5).status == "ok"
    check = doctor._notify_queue_check(0.62)
    assert check.status == "warn" and check.ok and "62.0% used" in check.detail
    assert "pg_stat_activity" in check.fix and "pg_terminate_backend(<pid>)" in check.fix


@pytest.mark.postgres
def test_superuser_on_a_fresh_database_runs_the_first_use_ddl(tmp_path, pg_server_url):
    dbname = f"mp_noext_{uuid.uuid4().hex[:8]}"
    admin(pg_server_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = pg_url_for(pg_server_url, dbname)
    code, out = run(settings_for(tmp_path, url))
    assert code == 0, out
    assert f"✓ pgvector enabled in {dbname}: not enabled yet; role postgres enables it" in out
    assert "✓ schema can be created: first use's" in out and "(rolled back)" in out
    conn = psycopg2.connect(url)  # nothing was left behind
    with conn.cursor() as cur:
        cur.execute(
            "SELECT to_regclass('memories'), (SELECT count(*) FROM pg_extension "
            "WHERE extname = 'vector')"
        )
        assert cur.fetchone() == (None, 0)
    conn.close()
    # a schema without its HNSW index is reported with the fix
    first_use(url)
    admin(url, "DROP INDEX idx_memories_embedding_hnsw")
    code, out = run(settings_for(tmp_path, url))
    assert code == 1 and "✗ HNSW index" in out
    assert "CREATE INDEX ON memories USING hnsw (embedding vector_cosine_ops);" in out


@pytest.mark.postgres
def test_role_without_create_on_schema_public(tmp_path, pg_server_url, pg_url):
    """pgvector already enabled by a superuser; the role may connect but not create tables
    (PostgreSQL 15+: schema public grants CREATE to its owner only)."""
    dbname = make_url(pg_url).database
    admin(pg_server_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    admin(pg_url, "CREATE EXTENSION vector")
    role = new_role(pg_server_url, "NOCREATEDB")
    url = as_role(pg_url, role)
    settings = settings_for(tmp_path, url, auto_create=False)
    code, out = run(settings)
    assert code == 1, out
    assert f"✗ schema can be created: role {role}: permission denied for schema public" in out
    host = host_of(pg_server_url)
    grant = f'psql -h {host} -d {dbname} -c "GRANT CREATE ON SCHEMA public TO {role};"'
    assert f"fix: as the owner of schema public or a superuser: {grant}" in out
    assert "all checks passed" not in out
    with pytest.raises(PermissionDenied, match="permission denied for schema public"):
        first_use(url)  # first use fails exactly where doctor said
    admin(pg_url, sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    code, out = run(settings)
    assert code == 0, out
    assert "• role may create databases (CREATEDB): not needed: auto_create is false" in out
    first_use(url)  # and now it works as that role


@pytest.mark.postgres
def test_role_that_may_not_enable_pgvector(tmp_path, pg_server_url):
    """The docs/postgres.md path with a non-superuser: a database without the extension."""
    dbname = f"mp_noext_{uuid.uuid4().hex[:8]}"
    admin(pg_server_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    role = new_role(pg_server_url, "CREATEDB")
    url = as_role(pg_url_for(pg_server_url, dbname), role)
    code, out = run(settings_for(tmp_path, url))
    assert code == 1, out
    host = host_of(pg_server_url)
    assert f"✗ pgvector enabled in {dbname}: not enabled, and role {role} may not run " in out
    assert f'as a superuser: psql -h {host} -d {dbname} -c "CREATE EXTENSION vector;"' in out
    assert f"✗ schema can be created: role {role} lacks CREATE on schema public" in out
    assert f"GRANT CREATE ON SCHEMA public TO {role};" in out
    assert "✓ role may create databases (CREATEDB)" in out
    with pytest.raises(MemoryPalaceError, match="CREATE EXTENSION vector"):
        first_use(url)
    admin(
        pg_server_url,
        "CREATE EXTENSION vector",
        sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)),
        dbname=dbname,
    )
    code, out = run(settings_for(tmp_path, url))
    assert code == 0, out
    first_use(url)


@pytest.mark.postgres
def test_missing_database_and_restricted_roles(tmp_path, pg_server_url):
    dbname = f"mp_new_{uuid.uuid4().hex[:8]}"
    host = host_of(pg_server_url)
    plain = new_role(pg_server_url, "NOCREATEDB")
    code, out = run(settings_for(tmp_path, as_role(pg_url_for(pg_server_url, dbname), plain)))
    assert code == 1, out
    assert f"✗ database exists: {dbname} does not exist and role {plain} may not create it" in out
    assert f'psql -h {host} -d postgres -c "ALTER ROLE {plain} CREATEDB;"' in out
    assert f"createdb -h {host} -O {plain} {dbname}" in out

    creator = new_role(pg_server_url, "CREATEDB")
    url = as_role(pg_url_for(pg_server_url, dbname), creator)
    code, out = run(settings_for(tmp_path, url))
    assert code == 1, out
    assert f"✓ database exists: {dbname} does not exist yet; first use creates it" in out
    assert f"✗ pgvector enabled in {dbname}: first use would create {dbname} and then fail" in out
    assert f'psql -h {host} -d template1 -c "CREATE EXTENSION vector;"' in out
    with pytest.raises(MemoryPalaceError, match="CREATE EXTENSION vector"):
        first_use(url)


@pytest.mark.postgres
def test_role_without_table_privileges(tmp_path, pg_server_url, pg_url):
    first_use(pg_url)
    role = new_role(pg_server_url, "NOCREATEDB")
    url = as_role(pg_url, role)
    code, out = run(settings_for(tmp_path, url))
    lacks = f"✗ table privileges: role {role} lacks SELECT, INSERT, UPDATE, DELETE on palace_meta,"
    assert code == 1 and lacks in out and "memories" in out.split(lacks)[1].split("\n")[0]
    assert f"ON ALL TABLES IN SCHEMA public TO {role};" in out
    admin(
        pg_url,
        *(
            sql.SQL("GRANT ALL ON ALL {} IN SCHEMA public TO {}").format(
                sql.SQL(what), sql.Identifier(role)
            )
            for what in ("TABLES", "SEQUENCES")
        ),
    )
    code, out = run(settings_for(tmp_path, url))
    assert "✓ schema version" in out and "✓ table privileges" in out
    assert code == 1
    assert "✗ role may create databases (CREATEDB)" in out
    assert f'-d postgres -c "ALTER ROLE {role} CREATEDB;"' in out


@pytest.mark.postgres
def test_max_connections_too_low_for_the_processes(tmp_path, pg_url):
    first_use(pg_url)
    code, out = run(settings_for(tmp_path, pg_url), expected_processes=1000)
    assert code == 1 and "✗ max_connections covers the pools" in out
    assert "(5 + 10 + 1 LISTEN) x 1 database(s) x 1000 process(es)" in out
    assert "SHOW max_connections" in out


def test_unreachable_server_fix_names_host_and_port(tmp_path):
    code, out = run(settings_for(tmp_path, f"postgresql://u:{SECRET}@127.0.0.1:1/memory_palace"))
    assert code == 1 and "✗ server reachable" in out
    assert (
        "fix: pg_isready -h 127.0.0.1 -p 1; then psql -h 127.0.0.1 -p 1 -U u -d memory_palace"
        in out
    )


def test_sqlite_checks(tmp_path, sqlite_url):
    settings = settings_for(tmp_path, sqlite_url)
    code, out = run(settings)
    assert code == 0 and "does not exist yet" in out
    first_use(sqlite_url)
    code, out = run(settings)
    assert (
        code == 0
        and "✓ WAL mode" in out
        and f"✓ schema version: {schema.SCHEMA_VERSION} (current)" in out
    )
    path = sqlite_url.split("///", 1)[1]
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    code, out = run(settings)
    assert code == 1 and "✗ WAL mode: journal_mode=delete" in out
    assert "PRAGMA journal_mode=WAL;" in out


def test_sqlite_file_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    path = blocker / "sub" / "m.db"
    code, out = run(settings_for(tmp_path, f"sqlite:///{path}"))
    assert code == 1, out
    assert (
        f"✗ database file: {path} does not exist and {blocker} is not a writable directory" in out
    )


def test_tokens_counted_in_the_default_database(tmp_path, sqlite_url):
    settings = settings_for(tmp_path, sqlite_url)
    first_use(sqlite_url)
    _, out = run(settings)
    assert "• tokens: identities are unverified (no tokens issued)" in out
    db = get_database(sqlite_url)
    created = [access.create_token(db, access.Caller(), f"agent{i}", "writer") for i in range(2)]
    access.revoke_token(db, access.Caller(), created[0]["token_id"])
    dispose_engines()
    code, out = run(settings)
    assert code == 0 and "✓ tokens: 1 active token(s), 1 revoked" in out
    assert created[1]["token"] not in out


def test_doctor_json_through_the_cli(tmp_path, sqlite_url):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.json").write_bytes(orjson.dumps({"database": {"url": sqlite_url}}))
    for argv in (["doctor", "--json"], ["--json", "doctor"]):
        proc = subprocess.run(
            [sys.executable, "-m", "memory_palace.cli", *argv, "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        report = orjson.loads(proc.stdout)
        assert report["ok"] is True and report["failed"] == 0
        (db,) = report["databases"]
        assert db["name"] == "default" and db["type"] == "sqlite"
        statuses = {c["name"]: c["status"] for c in db["checks"]}
        assert statuses["database file"] == "ok" and statuses["tokens"] == "info"
