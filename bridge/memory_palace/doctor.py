"""`memory-palace doctor`: the troubleshooting guide as one command. Each check prints ✓ or ✗
and, on ✗, the exact fix. Nothing is created or changed; exit code 1 when any check fails.
"""

from __future__ import annotations

import select
import sqlite3
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import psycopg2
from psycopg2 import sql
from sqlalchemy.engine import make_url

from .config import Postgres, Settings
from .db.engine import listen_url_for
from .db.postgres import pg_connect
from .db.schema import SCHEMA_VERSION
from .db.urls import mask_url, pg_database_name, sqlite_path
from .errors import BackendUnavailable, DatabaseMissing, MemoryPalaceError

NOTIFY_TIMEOUT_S = 5.0
PGVECTOR_FIX = (
    "install pgvector: sudo apt install postgresql-15-pgvector (Debian/Ubuntu; use "
    "your server's major version) or brew install pgvector (macOS)"
)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    fix: str | None = None


def _pg_checks(
    url: str, engines_on_server: int, processes: int, pool: Postgres | None = None
) -> list[Check]:
    pool = pool or Postgres()
    u = make_url(url)
    dbname = pg_database_name(url)
    user = u.username or "your_user"
    host = u.host or u.query.get("host") or "localhost"
    checks: list[Check] = []
    exists = True
    try:
        conn = pg_connect(url)
    except BackendUnavailable as exc:
        return [
            Check(
                "server reachable",
                False,
                exc.message,
                f"pg_isready -h {host}; then psql -h {host} -U {user} -d {dbname}",
            )
        ]
    except DatabaseMissing:
        exists = False
        try:
            conn = pg_connect(u.set(database="postgres").render_as_string(hide_password=False))
        except BackendUnavailable as exc2:
            return [
                Check(
                    "server reachable",
                    False,
                    exc2.message,
                    f"pg_isready -h {host}; then psql -h {host} -U {user} -d postgres",
                )
            ]
    try:
        cur = conn.cursor()
        cur.execute("SHOW server_version")
        checks.append(Check("server reachable", True, f"PostgreSQL {cur.fetchone()[0]}"))
        checks.append(
            Check(
                "database exists",
                True,
                dbname if exists else f"{dbname} does not exist yet; it is created on first use",
            )
        )

        cur.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
        row = cur.fetchone()
        checks.append(
            Check(
                "pgvector installed on the server",
                row is not None,
                f"version {row[0]}" if row else "not available",
                PGVECTOR_FIX,
            )
        )
        if exists:
            cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cur.fetchone()
            checks.append(
                Check(
                    f"pgvector enabled in {dbname}",
                    row is not None,
                    f"vector {row[0]}" if row else "the vector extension is not enabled",
                    f'psql {dbname} -c "CREATE EXTENSION IF NOT EXISTS vector;" (as a superuser)',
                )
            )

        cur.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
        row = cur.fetchone()
        can = bool(row and row[0])
        checks.append(
            Check(
                "role may create databases (CREATEDB)",
                can,
                "named databases are created automatically"
                if can
                else f"role {user} has no CREATEDB: named databases cannot be auto-created",
                f"ALTER USER {user} CREATEDB;",
            )
        )

        cur.execute(
            "SELECT current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int, "
            "(SELECT count(*) FROM pg_stat_activity)"
        )
        max_conn, reserved, in_use = cur.fetchone()
        per_engine = pool.pool_size + pool.max_overflow + 1  # the pool and one LISTEN
        needed = per_engine * engines_on_server * processes
        usable = max_conn - reserved
        checks.append(
            Check(
                "max_connections covers the pools",
                needed <= usable,
                f"max_connections {max_conn} ({usable} usable, {in_use} in use); pools may open "
                f"up to {needed} = ({pool.pool_size} + {pool.max_overflow} + 1 LISTEN) x "
                f"{engines_on_server} database(s) x {processes} process(es)",
                "SHOW max_connections; SELECT count(*) FROM pg_stat_activity; then lower config "
                "postgres.max_overflow, put PgBouncer (transaction mode) in front "
                "of the pools (docs/postgres.md), or raise max_connections: "
                f"ALTER SYSTEM SET max_connections = {needed + reserved + 10}; and restart "
                "PostgreSQL",
            )
        )

        if exists:
            cur.execute("SELECT to_regclass('memories') IS NOT NULL")
            if cur.fetchone()[0]:
                cur.execute(
                    "SELECT count(*) FROM pg_indexes WHERE tablename = 'memories' "
                    "AND schemaname = current_schema() AND indexdef ILIKE %s",
                    ("%USING hnsw%",),
                )
                has = cur.fetchone()[0] > 0
                checks.append(
                    Check(
                        "HNSW index on memories.embedding",
                        has,
                        "present" if has else "missing: vector search scans every row",
                        "CREATE INDEX ON memories USING hnsw (embedding vector_cosine_ops);",
                    )
                )
                try:
                    cur.execute("SELECT value FROM palace_meta WHERE key = 'schema_version'")
                    r = cur.fetchone()
                    checks.append(_schema_check(int(r[0]) if r else 0))
                    cur.execute("SELECT count(*) FROM memories WHERE false")
                except psycopg2.errors.UndefinedTable:
                    checks.append(_schema_check(0))
                except psycopg2.errors.InsufficientPrivilege as exc:
                    checks.append(
                        Check(
                            "table privileges",
                            False,
                            str(exc).strip().splitlines()[0],
                            f"as the tables' owner: GRANT ALL ON ALL TABLES IN SCHEMA public TO "
                            f"{user}; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {user};",
                        )
                    )
            else:
                checks.append(
                    Check("schema", True, "tables not created yet; they are created on first use")
                )
        target = url if exists else u.set(database="postgres").render_as_string(False)
        checks.append(_listen_notify(listen_url_for(target, pool.listen_url)))
    finally:
        conn.close()
    return checks


def _schema_check(version: int) -> Check:
    if version > SCHEMA_VERSION:
        return Check(
            "schema version",
            False,
            f"database is at version {version}, this code knows {SCHEMA_VERSION}",
            "upgrade memory-palace to the version that wrote this database",
        )
    note = "current" if version == SCHEMA_VERSION else "older; migrated automatically on next use"
    return Check("schema version", True, f"{version} ({note})")


def _listen_notify(url: str) -> Check:
    channel = f"memory_palace_doctor_{uuid.uuid4().hex[:12]}"
    fix = (
        "LISTEN/NOTIFY must reach this process directly: behind PgBouncer in transaction mode, "
        "set config postgres.listen_url to a URL of PostgreSQL itself"
    )
    try:
        listener = pg_connect(url)
        sender = pg_connect(url)
    except MemoryPalaceError as exc:
        return Check("LISTEN/NOTIFY round trip", False, exc.message, fix)
    try:
        with listener.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_listening_channels()")  # warm up
            cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        with sender.cursor() as cur:
            cur.execute("SELECT pg_notify(%s, %s)", (channel, "doctor"))
        ready, _, _ = select.select([listener], [], [], NOTIFY_TIMEOUT_S)
        if ready:
            listener.poll()
        got = [n.payload for n in listener.notifies if n.channel == channel]
        return Check(
            "LISTEN/NOTIFY round trip",
            got == ["doctor"],
            "notification received" if got else f"no notification within {NOTIFY_TIMEOUT_S:.0f} s",
            fix,
        )
    except psycopg2.Error as exc:
        return Check("LISTEN/NOTIFY round trip", False, str(exc).strip(), fix)
    finally:
        listener.close()
        sender.close()


def _sqlite_checks(url: str) -> list[Check]:
    try:
        path = sqlite_path(url)
    except MemoryPalaceError as exc:
        return [Check("database file", False, exc.message, "fix the URL in config.json")]
    if not path.exists():
        parent = path.parent
        ok = parent.exists() or not parent.is_file()
        return [
            Check(
                "database file",
                ok,
                f"{path} does not exist yet; it is created on first use",
                f"mkdir -p {parent}",
            )
        ]
    checks = [Check("database file", True, f"{path} ({path.stat().st_size} bytes)")]
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        return [
            *checks,
            Check("database readable", False, str(exc), f"check the permissions of {path}"),
        ]
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        checks.append(
            Check(
                "WAL mode",
                mode.lower() == "wal",
                f"journal_mode={mode}",
                f'sqlite3 {path} "PRAGMA journal_mode=WAL;" (Memory Palace also '
                "sets it whenever it opens the file)",
            )
        )
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='palace_meta'"
        ).fetchone()
        version = 0
        if has_meta:
            r = conn.execute("SELECT value FROM palace_meta WHERE key='schema_version'").fetchone()
            version = int(r[0]) if r else 0
        elif conn.execute("SELECT 1 FROM sqlite_master WHERE name='memories'").fetchone():
            checks.append(
                Check(
                    "schema",
                    False,
                    "this is a database of the original Memory Palace layout",
                    "memory-palace-sqlite-to-pg --source "
                    f"sqlite:///{path} --target postgresql://... (or export/import)",
                )
            )
            return checks
        checks.append(_schema_check(version))
        ok = conn.execute("PRAGMA quick_check").fetchone()[0]
        checks.append(
            Check(
                "integrity (quick_check)",
                ok == "ok",
                ok,
                f"restore {path} from a backup or `memory-palace export`",
            )
        )
    except sqlite3.Error as exc:
        checks.append(
            Check("database readable", False, str(exc), f"check the permissions of {path}")
        )
    finally:
        conn.close()
    return checks


def _server_key(url: str) -> tuple[Any, ...]:
    u = make_url(url)
    return (u.host, u.port, u.query.get("host"))


def run(
    settings: Settings,
    database: str | None = None,
    out: TextIO = sys.stdout,
    expected_processes: int | None = None,
) -> int:
    """Check every configured database (or only `database`); print ✓/✗ with fixes.

    Returns 0 when every check passes, 1 otherwise.
    """
    from .db.urls import derive_url

    dbs = {n: c.url for n, c in settings.databases.items()}
    if database is not None:
        url = dbs.get(database) or derive_url(settings.default_url, database)
        dbs = {database: url}
    processes = expected_processes or max(2, len(settings.instances))
    pg_servers: dict[tuple[Any, ...], int] = {}
    for c in settings.databases.values():
        if c.type == "postgres":
            pg_servers[_server_key(c.url)] = pg_servers.get(_server_key(c.url), 0) + 1
    failed = 0
    write: Callable[[str], Any] = out.write
    for name, url in dbs.items():
        kind = "postgres" if url.startswith("postgres") else "sqlite"
        write(f"database {name} ({kind}): {mask_url(url)}\n")
        if kind == "postgres":
            engines = max(1, pg_servers.get(_server_key(url), 1))
            checks = _pg_checks(url, engines, processes, settings.postgres)
        else:
            checks = _sqlite_checks(url)
        for c in checks:
            write(f"  {'✓' if c.ok else '✗'} {c.name}: {c.detail}\n")
            if not c.ok:
                failed += 1
                if c.fix:
                    write(f"      fix: {c.fix}\n")
    write("all checks passed\n" if not failed else f"{failed} check(s) failed\n")
    return 0 if not failed else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m memory_palace.doctor [--database NAME]` (the CLI wires `memory-palace
    doctor` to run())."""
    import argparse

    from .config import load_settings

    ap = argparse.ArgumentParser(
        prog="memory-palace doctor", description="Check the databases and print fixes."
    )
    ap.add_argument("--database", help="only this named database")
    ap.add_argument(
        "--processes",
        type=int,
        help="processes expected to connect (default: configured instances, at least 2)",
    )
    ap.add_argument("--data-dir", help="data dir holding config.json")
    args = ap.parse_args(argv)
    try:
        settings = load_settings(args.data_dir)
    except MemoryPalaceError as exc:
        sys.stderr.write(f"{exc.code}: {exc.message}\n")
        return 2
    return run(settings, args.database, sys.stdout, args.processes)


if __name__ == "__main__":
    sys.exit(main())
