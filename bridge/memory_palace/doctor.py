"""`memory-palace doctor`: the troubleshooting guide as one command.

It connects as the configured role and runs what first use runs (create the database or check
that it may, `CREATE EXTENSION vector`, the schema's DDL, LISTEN/NOTIFY) inside transactions it
rolls back, so it cannot say "passed" before a first use that fails. Each check prints ✓, ✗ or
• (information) and, on ✗, the exact fix naming host, port, role and database (never a
password). Nothing is created or changed; exit code 1 when any check fails. `--json` prints
the same as one object.
"""

from __future__ import annotations

import os
import re
import select
import sqlite3
import sys
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import orjson
import psycopg2
from psycopg2 import errorcodes, sql
from sqlalchemy.engine import make_url

from .config import Postgres, Settings, type_from_url
from .db.engine import listen_url_for
from .db.postgres import BACKEND as PG_BACKEND
from .db.postgres import pg_connect
from .db.schema import SCHEMA_VERSION, backend_fingerprint, first_use_ddl
from .db.tables import TABLES
from .db.urls import derive_url, mask_url, pg_database_name, sqlite_path
from .errors import BackendUnavailable, DatabaseMissing, MemoryPalaceError

NOTIFY_TIMEOUT_S = 5.0
NOTIFY_QUEUE_WARN = 0.5  # doctor warns above this share of the NOTIFY queue in use
DDL_TIMEOUT = "10s"  # a rolled-back DDL check that would rebuild a large table gives up
DEFAULT_DIM = 384
PLAIN_IDENT = re.compile(r"^[a-z_][a-z0-9_$]*$")
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


@dataclass
class Check:
    name: str
    status: str  # "ok" | "fail" | "warn" (printed with its fix, not a failure) | "info"
    detail: str = ""
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "fail"


def ok(name: str, detail: str = "") -> Check:
    return Check(name, "ok", detail)


def fail(name: str, detail: str, fix: str | None = None) -> Check:
    return Check(name, "fail", detail, fix)


def info(name: str, detail: str) -> Check:
    return Check(name, "info", detail)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def ident(name: str) -> str:
    """`name` as a SQL identifier in a printed statement."""
    return name if PLAIN_IDENT.match(name) else '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Server:
    """Where a PostgreSQL URL points, for the fixes doctor prints (never the password)."""

    host: str | None
    port: int | None
    role: str
    database: str

    @classmethod
    def of(cls, url: str) -> Server:
        u = make_url(url)
        host = u.host or u.query.get("host")
        return cls(
            str(host) if host else None,
            u.port,
            u.username or os.environ.get("PGUSER") or "your_role",
            pg_database_name(url),
        )

    def _hp(self) -> list[str]:
        return [
            *(["-h", self.host] if self.host else []),
            *(["-p", str(self.port)] if self.port else []),
        ]

    def psql(self, statement: str, database: str | None = None, as_role: bool = False) -> str:
        """psql running `statement` on this server (as a superuser unless `as_role`)."""
        parts = ["psql", *self._hp(), *(["-U", self.role] if as_role else [])]
        return " ".join([*parts, "-d", database or self.database, "-c", f'"{statement}"'])

    def as_superuser(self, statement: str, database: str | None = None) -> str:
        return f"as a superuser: {self.psql(statement, database)}"

    def createdb(self) -> str:
        return " ".join(["createdb", *self._hp(), "-O", self.role, self.database])

    def isready(self) -> str:
        return " ".join(["pg_isready", *self._hp()])


def pgvector_install_fix(major: int | None) -> str:
    pkg = f"postgresql-{major}-pgvector" if major else "postgresql-<major>-pgvector"
    return (
        f"install pgvector on the server: sudo apt install {pkg} (Debian/Ubuntu) or brew "
        "install pgvector (macOS); then run doctor again"
    )


class _Pg:
    """The PostgreSQL checks of one database, over one connection as the configured role."""

    def __init__(self, url: str, conn: Any, exists: bool, server: Server) -> None:
        self.url, self.conn, self.exists, self.s = url, conn, exists, server
        self.checks: list[Check] = []

    def one(self, statement: str, params: tuple[Any, ...] = ()) -> Any:
        with self.conn.cursor() as cur:
            cur.execute(statement, params)
            row = cur.fetchone()
        return row[0] if row else None

    def attempt(self, statements: list[str]) -> psycopg2.Error | None:
        """Run `statements` in one transaction, roll it back; the first error or None."""
        self.conn.autocommit = False
        try:
            with self.conn.cursor() as cur:
                cur.execute(f"SET LOCAL statement_timeout = '{DDL_TIMEOUT}'")
                cur.execute("SET LOCAL lock_timeout = '2s'")
                for statement in statements:
                    cur.execute(statement)
            return None
        except psycopg2.Error as exc:
            return exc
        finally:
            self.conn.rollback()
            self.conn.autocommit = True

    # -- the checks, in first-use order -------------------------------------------------------
    def run(
        self, *, auto_create: bool, dim: int, engines: int, processes: int, pool: Postgres
    ) -> list[Check]:
        self.s = replace(self.s, role=self.one("SELECT current_user"))  # also without a user
        version = self.one("SHOW server_version")
        self.major = int(self.one("SHOW server_version_num")) // 10000
        self.superuser, self.createdb = self.one_row(
            "SELECT rolsuper, rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
        ) or (False, False)
        who = f"role {self.s.role}" + (" (superuser)" if self.superuser else "")
        self.checks.append(ok("server reachable", f"PostgreSQL {version} as {who}"))
        self.database(auto_create)
        available = self.pgvector_available()
        enabled = self.pgvector_enabled(available)
        if self.exists and enabled is not None:
            self.schema(dim, enable=not enabled)
        elif self.exists:  # the DDL needs pgvector: check at least the schema privilege
            self.schema_privilege()
        self.max_connections(engines, processes, pool)
        self.checks.append(
            _notify_queue_check(float(self.one("SELECT pg_notification_queue_usage()")))
        )
        if self.exists:
            self.index_and_version()
        return self.checks

    def one_row(self, statement: str) -> tuple[Any, ...] | None:
        with self.conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchone()

    def database(self, auto_create: bool) -> None:
        s = self.s
        grant = self.s.as_superuser(f"ALTER ROLE {ident(s.role)} CREATEDB;", "postgres")
        if not self.exists:
            if self.createdb:
                self.checks.append(
                    ok("database exists", f"{s.database} does not exist yet; first use creates it")
                )
            else:
                self.checks.append(
                    fail(
                        "database exists",
                        f"{s.database} does not exist and role {s.role} may not create it "
                        "(no CREATEDB privilege)",
                        f"{grant} or create it for the role: {s.createdb()}",
                    )
                )
            return
        self.checks.append(ok("database exists", s.database))
        if not auto_create:
            self.checks.append(
                info("role may create databases (CREATEDB)", "not needed: auto_create is false")
            )
        elif self.createdb:
            self.checks.append(
                ok(
                    "role may create databases (CREATEDB)",
                    "named databases are created on first use",
                )
            )
        else:
            self.checks.append(
                fail(
                    "role may create databases (CREATEDB)",
                    f"role {s.role} has no CREATEDB: a database named for the first time "
                    "(auto_create) cannot be created",
                    f'{grant} (or set "auto_create": false and configure every database)',
                )
            )

    def pgvector_available(self) -> bool:
        row = self.one_row(
            "SELECT v.version, v.trusted FROM pg_available_extension_versions v "
            "JOIN pg_available_extensions e ON e.name = v.name AND e.default_version = v.version "
            "WHERE v.name = 'vector'"
        )
        self.trusted = bool(row and row[1])
        if row is None:
            self.checks.append(
                fail(
                    "pgvector installed on the server",
                    "the vector extension is not available",
                    pgvector_install_fix(self.major),
                )
            )
            return False
        self.checks.append(ok("pgvector installed on the server", f"version {row[0]}"))
        return True

    def pgvector_enabled(self, available: bool) -> bool | None:
        """True: enabled; False: first use can enable it; None: it cannot (reported)."""
        s = self.s
        name = f"pgvector enabled in {s.database}"
        create = "CREATE EXTENSION vector;"
        if not available:
            return None
        if self.exists:
            version = self.one("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            if version:
                self.checks.append(ok(name, f"vector {version}"))
                return True
            error = self.attempt(["CREATE EXTENSION IF NOT EXISTS vector"])
            if error is None:
                self.checks.append(
                    ok(name, f"not enabled yet; role {s.role} enables it on first use")
                )
                return False
            self.checks.append(
                fail(
                    name,
                    f"not enabled, and role {s.role} may not run CREATE EXTENSION vector "
                    f"({_first_line(error)})",
                    s.as_superuser(create) + f" (or once in template1, for every new database: "
                    f"{s.psql(create, 'template1')})",
                )
            )
            return None
        # The database does not exist yet: first use creates it owned by the role.
        if self.superuser:
            how = "the role is a superuser"
        elif self.trusted:
            how = "pgvector is a trusted extension and the role will own the new database"
        elif self._in_template1():
            how = "template1 has it, so the new database does too"
        else:
            self.checks.append(
                fail(
                    name,
                    f"first use would create {s.database} and then fail at CREATE EXTENSION "
                    f"vector: role {s.role} is not a superuser and this pgvector is not a "
                    "trusted extension",
                    f"{s.as_superuser(create, 'template1')} (every new database then has it), "
                    f"or create this one yourself: {s.createdb()} && {s.psql(create)}",
                )
            )
            return None
        self.checks.append(ok(name, f"enabled on first use ({how})"))
        return False

    def _in_template1(self) -> bool:
        try:
            conn = pg_connect(self.url, dbname="template1")
        except MemoryPalaceError:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
                return cur.fetchone() is not None
        finally:
            conn.close()

    def schema(self, dim: int, enable: bool) -> None:
        """First use's DDL (or, on a current schema, the table privileges it needs)."""
        s = self.s
        schema_name = self.one("SELECT current_schema()") or "public"
        if self.meta_readable() is False or self.meta("schema_fingerprint") == backend_fingerprint(
            PG_BACKEND
        ):  # first use runs no DDL: check what it does run
            self.table_privileges(schema_name)
            return
        statements = ["CREATE EXTENSION IF NOT EXISTS vector"] if enable else []
        statements += first_use_ddl(PG_BACKEND, dim) + self._missing_columns(dim)
        error = self.attempt(statements)
        name = "schema can be created"
        if error is None:
            self.checks.append(
                ok(
                    name,
                    f"first use's {len(statements)} statements run as role {s.role} (rolled back)",
                )
            )
            return
        detail = f"role {s.role}: {_first_line(error)}"
        lowered = detail.lower()
        if error.pgcode == errorcodes.QUERY_CANCELED:
            self.checks.append(
                info(name, f"not finished within {DDL_TIMEOUT} (large tables); not verified")
            )
        elif "permission denied for schema" in lowered:
            self.checks.append(fail(name, detail, self._grant_create(schema_name)))
        elif "must be owner of" in lowered:
            self.checks.append(
                fail(
                    name,
                    detail + " (the schema needs changes only the tables' owner may make)",
                    "run `memory-palace init` once with the URL of the tables' owner, or "
                    f"as a superuser make {s.role} the owner: "
                    + s.psql(f"REASSIGN OWNED BY <owner> TO {ident(s.role)};"),
                )
            )
        else:
            self.checks.append(fail(name, detail, "see the PostgreSQL message above"))

    def schema_privilege(self) -> None:
        schema_name = self.one("SELECT current_schema()") or "public"
        if self.one("SELECT has_schema_privilege(%s, 'CREATE')", (schema_name,)):
            return
        self.checks.append(
            fail(
                "schema can be created",
                f"role {self.s.role} lacks CREATE on schema {schema_name}",
                self._grant_create(schema_name),
            )
        )

    def _grant_create(self, schema_name: str) -> str:
        statement = f"GRANT CREATE ON SCHEMA {ident(schema_name)} TO {ident(self.s.role)};"
        return f"as the owner of schema {schema_name} or a superuser: {self.s.psql(statement)}"

    def meta_readable(self) -> bool | None:
        """None: there is no palace_meta table; else whether this role may read it."""
        if not self.one("SELECT to_regclass('palace_meta') IS NOT NULL"):
            return None
        return bool(self.one("SELECT has_table_privilege('palace_meta', 'SELECT')"))

    def meta(self, key: str) -> str | None:
        if not self.meta_readable():
            return None
        return self.one("SELECT value FROM palace_meta WHERE key = %s", (key,))

    def _missing_columns(self, dim: int) -> list[str]:
        statements = []
        for table in TABLES:
            have = {
                r[0]
                for r in self._rows(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = %s",
                    (table.name,),
                )
            }
            if have:
                statements += [
                    PG_BACKEND.add_column(table, c, dim)
                    for c in table.columns
                    if c.name not in have
                ]
        return statements

    def _rows(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall()

    def table_privileges(self, schema_name: str) -> None:
        s = self.s
        lacking: dict[tuple[str, ...], list[str]] = {}  # missing privileges -> tables
        for table in TABLES:
            qualified = f"{schema_name}.{table.name}"
            if not self.one("SELECT to_regclass(%s) IS NOT NULL", (qualified,)):
                continue
            privileges = tuple(
                p
                for p in TABLE_PRIVILEGES
                if not self.one("SELECT has_table_privilege(%s, %s)", (qualified, p))
            )
            if privileges:
                lacking.setdefault(privileges, []).append(table.name)
        sequences = [
            seq
            for (seq,) in self._rows(
                "SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = %s",
                (schema_name,),
            )
            if not self.one("SELECT has_sequence_privilege(%s, 'USAGE')", (f"{schema_name}.{seq}",))
        ]
        if not lacking and not sequences:
            self.checks.append(
                ok("table privileges", f"role {s.role} may read and write every table")
            )
            return
        parts = [f"{', '.join(p)} on {', '.join(tables)}" for p, tables in lacking.items()]
        parts += [f"USAGE on sequence(s) {', '.join(sequences)}"] if sequences else []
        role, sch = ident(s.role), ident(schema_name)
        self.checks.append(
            fail(
                "table privileges",
                f"role {s.role} lacks {'; '.join(parts)}",
                "as the tables' owner: "
                + s.psql(
                    f"GRANT {', '.join(TABLE_PRIVILEGES)} ON ALL TABLES IN SCHEMA {sch} TO {role}; "
                    f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {sch} TO {role};"
                ),
            )
        )

    def max_connections(self, engines: int, processes: int, pool: Postgres) -> None:
        max_conn, reserved, in_use = self.one_row(
            "SELECT current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int, "
            "(SELECT count(*) FROM pg_stat_activity)"
        )
        per_engine = pool.pool_size + pool.max_overflow + 1  # the pool and one LISTEN
        needed = per_engine * engines * processes
        usable = max_conn - reserved
        check = Check(
            "max_connections covers the pools",
            "ok" if needed <= usable else "fail",
            f"max_connections {max_conn} ({usable} usable, {in_use} in use); pools may open "
            f"up to {needed} = ({pool.pool_size} + {pool.max_overflow} + 1 LISTEN) x {engines} "
            f"database(s) x {processes} process(es)",
            "SHOW max_connections; SELECT count(*) FROM pg_stat_activity; then lower config "
            "postgres.max_overflow, put PgBouncer (transaction mode) in front of the pools "
            "(docs/postgres.md), or raise max_connections: "
            + self.s.as_superuser(
                f"ALTER SYSTEM SET max_connections = {needed + reserved + 10};", "postgres"
            )
            + " and restart PostgreSQL",
        )
        self.checks.append(check)

    def index_and_version(self) -> None:
        if not self.one("SELECT to_regclass('memories') IS NOT NULL"):
            self.checks.append(ok("schema", "tables not created yet; first use creates them"))
            return
        has = self.one(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'memories' "
            "AND schemaname = current_schema() AND indexdef ILIKE %s",
            ("%USING hnsw%",),
        )
        self.checks.append(
            Check(
                "HNSW index on memories.embedding",
                "ok" if has else "fail",
                "present" if has else "missing: vector search scans every row",
                self.s.psql(
                    "CREATE INDEX ON memories USING hnsw (embedding vector_cosine_ops);",
                    as_role=True,
                ),
            )
        )
        if self.meta_readable() is False:
            return  # reported by the table privileges check
        value = self.meta("schema_version")
        self.checks.append(_schema_check(int(value) if value else 0))

    def tokens(self) -> None:
        if not self.exists or not self.one("SELECT to_regclass('tokens') IS NOT NULL"):
            self.checks.append(_tokens_check(0, 0))
            return
        if not self.one("SELECT has_table_privilege('tokens', 'SELECT')"):
            self.checks.append(info("tokens", f"role {self.s.role} may not read the tokens table"))
            return
        active, total = self.one_row(
            "SELECT count(*) FILTER (WHERE revoked_at IS NULL), count(*) FROM tokens"
        )
        self.checks.append(_tokens_check(active, total))


def _tokens_check(active: int, total: int) -> Check:
    if total == 0:
        detail = (
            "identities are unverified (no tokens issued): any caller may name any instance; "
            "`memory-palace token create INSTANCE` issues one"
        )
        return Check("tokens", "info", detail)
    revoked = total - active
    return ok("tokens", f"{active} active token(s)" + (f", {revoked} revoked" if revoked else ""))


def _pg_checks(
    url: str,
    engines: int,
    processes: int,
    *,
    auto_create: bool = True,
    dim: int = DEFAULT_DIM,
    tokens: bool = False,
    pool: Postgres | None = None,
) -> list[Check]:
    pool = pool or Postgres()
    s = Server.of(url)
    exists = True

    def unreachable(message: str, database: str) -> list[Check]:
        return [
            fail(
                "server reachable",
                message,
                f"{s.isready()}; then {s.psql('SELECT 1', database, as_role=True)} (check the "
                "host, port, role and password in the URL)",
            )
        ]

    try:
        conn = pg_connect(url)
    except DatabaseMissing:
        exists = False
        try:
            conn = pg_connect(url, dbname="postgres")
        except MemoryPalaceError as exc:
            return unreachable(exc.message, "postgres")
    except BackendUnavailable as exc:
        return unreachable(exc.message, s.database)
    listen_url = listen_url_for(url if exists else pg_url_for(url, "postgres"), pool.listen_url)
    try:
        pg = _Pg(url, conn, exists, s)
        checks = pg.run(
            auto_create=auto_create, dim=dim, engines=engines, processes=processes, pool=pool
        )
        if tokens:
            pg.tokens()
    finally:
        conn.close()
    return [*checks, _listen_notify(listen_url)]


def pg_url_for(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def _schema_check(version: int) -> Check:
    if version > SCHEMA_VERSION:
        return fail(
            "schema version",
            f"database is at version {version}, this code knows {SCHEMA_VERSION}",
            "upgrade memory-palace to the version that wrote this database",
        )
    note = "current" if version == SCHEMA_VERSION else "older; migrated automatically on next use"
    return ok("schema version", f"{version} ({note})")


def _notify_queue_check(usage: float) -> Check:
    """The server's one NOTIFY queue (8 GB, shared by every database): it only empties as fast
    as its slowest listener reads, and when it is full every NOTIFY, so every message send,
    fails. A listener stuck in a transaction or not reading its socket holds it."""
    name = "NOTIFY queue"
    detail = f"{usage:.1%} used (pg_notification_queue_usage())"
    if usage <= NOTIFY_QUEUE_WARN:
        return ok(name, detail)
    return Check(
        name,
        "warn",
        f"{detail}: a listening session is not consuming notifications; when the queue is full "
        "every message send fails",
        "find the stuck listener (the server log's 'NOTIFY queue is ... full' line names its "
        "PID): SELECT pid, datname, usename, application_name, state, wait_event, xact_start "
        "FROM pg_stat_activity WHERE state = 'idle in transaction' OR wait_event = 'ClientWrite' "
        "ORDER BY xact_start NULLS LAST; then SELECT pg_terminate_backend(<pid>); (a bridge's "
        "listener reconnects and catches up on its own)",
    )


def _listen_notify(url: str) -> Check:
    channel = f"memory_palace_doctor_{uuid.uuid4().hex[:12]}"
    name = "LISTEN/NOTIFY round trip"
    fix = (
        "LISTEN/NOTIFY must reach this process directly: behind PgBouncer in transaction mode, "
        "set config postgres.listen_url to a URL of PostgreSQL itself"
    )
    try:
        listener = pg_connect(url)
        sender = pg_connect(url)
    except MemoryPalaceError as exc:
        return fail(name, exc.message, fix)
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
        if got == ["doctor"]:
            return ok(name, "notification received")
        return fail(name, f"no notification within {NOTIFY_TIMEOUT_S:.0f} s", fix)
    except psycopg2.Error as exc:
        return fail(name, _first_line(exc), fix)
    finally:
        listener.close()
        sender.close()


def _writable_dir(path: Path) -> Path | None:
    """The nearest existing directory at or above `path` when it is not writable, else None."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return None if path.is_dir() and os.access(path, os.W_OK | os.X_OK) else path


def _sqlite_checks(url: str, tokens: bool = False) -> list[Check]:
    try:
        path = sqlite_path(url)
    except MemoryPalaceError as exc:
        return [fail("database file", exc.message, "fix the URL in config.json")]
    if not path.exists():
        blocked = _writable_dir(path.parent)
        if blocked is not None:
            return [
                fail(
                    "database file",
                    f"{path} does not exist and {blocked} is not a writable directory, so first "
                    "use cannot create it",
                    f"mkdir -p {path.parent} as a user who may, and chown it to this user, "
                    "or point the URL at a writable place",
                )
            ]
        checks = [ok("database file", f"{path} does not exist yet; first use creates it")]
        return [*checks, _tokens_check(0, 0)] if tokens else checks
    checks = [ok("database file", f"{path} ({path.stat().st_size} bytes)")]
    if not os.access(path, os.R_OK | os.W_OK) or _writable_dir(path.parent) is not None:
        checks.append(
            fail(
                "database writable",
                f"{path} or its directory {path.parent} is not writable by this user (SQLite "
                "writes the file and its -wal and -shm files beside it)",
                f"chmod u+w {path} {path.parent} (or chown them to this user)",
            )
        )
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        return [*checks, fail("database readable", str(exc), f"check the permissions of {path}")]
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        checks.append(
            Check(
                "WAL mode",
                "ok" if mode.lower() == "wal" else "fail",
                f"journal_mode={mode}",
                f'sqlite3 {path} "PRAGMA journal_mode=WAL;" (Memory Palace also '
                "sets it whenever it opens the file)",
            )
        )
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = 0
        if "palace_meta" in tables:
            r = conn.execute("SELECT value FROM palace_meta WHERE key='schema_version'").fetchone()
            version = int(r[0]) if r else 0
        elif "memories" in tables:
            checks.append(
                fail(
                    "schema",
                    "this is a database of the original Memory Palace layout",
                    "memory-palace-sqlite-to-pg --source "
                    f"sqlite:///{path} --target postgresql://... (or export/import)",
                )
            )
            return checks
        checks.append(_schema_check(version))
        result = conn.execute("PRAGMA quick_check").fetchone()[0]
        checks.append(
            Check(
                "integrity (quick_check)",
                "ok" if result == "ok" else "fail",
                result,
                f"restore {path} from a backup or `memory-palace export`",
            )
        )
        if tokens:
            active, total = (
                conn.execute("SELECT sum(revoked_at IS NULL), count(*) FROM tokens").fetchone()
                if "tokens" in tables
                else (0, 0)
            )
            checks.append(_tokens_check(int(active or 0), int(total)))
    except sqlite3.Error as exc:
        checks.append(fail("database readable", str(exc), f"check the permissions of {path}"))
    finally:
        conn.close()
    return checks


def _server_key(url: str) -> tuple[Any, ...]:
    u = make_url(url)
    return (u.host, u.port, u.query.get("host"))


MARKS = {"ok": "✓", "fail": "✗", "warn": "!", "info": "•"}


def check_all(
    settings: Settings, database: str | None = None, expected_processes: int | None = None
) -> list[dict[str, Any]]:
    """Every configured database (or only `database`) with its checks, as plain data."""
    dbs = {n: c.url for n, c in settings.databases.items()}
    if database is not None:
        url = dbs.get(database) or derive_url(settings.default_url, database)
        dbs = {database: url}
    processes = expected_processes or max(2, len(settings.instances))
    dim = settings.embedding_dimension or DEFAULT_DIM
    pg_servers: dict[tuple[Any, ...], int] = {}
    for c in settings.databases.values():
        if c.type == "postgres":
            pg_servers[_server_key(c.url)] = pg_servers.get(_server_key(c.url), 0) + 1
    report = []
    for name, url in dbs.items():
        kind = type_from_url(url)
        tokens = url == settings.default_url  # tokens live in the default database
        if kind == "postgres":
            engines = max(1, pg_servers.get(_server_key(url), 1))
            checks = _pg_checks(
                url,
                engines,
                processes,
                auto_create=settings.auto_create,
                dim=dim,
                tokens=tokens,
                pool=settings.postgres,
            )
        else:
            checks = _sqlite_checks(url, tokens=tokens)
        report.append(
            {
                "name": name,
                "type": kind,
                "url": mask_url(url),
                "checks": [asdict(c) for c in checks],
            }
        )
    return report


def run(
    settings: Settings,
    database: str | None = None,
    out: TextIO = sys.stdout,
    expected_processes: int | None = None,
    as_json: bool = False,
) -> int:
    """Check every configured database (or only `database`); print ✓/✗/• with fixes (or, with
    `as_json`, one JSON object). Returns 0 when every check passes, 1 otherwise."""
    report = check_all(settings, database, expected_processes)
    failed = sum(c["status"] == "fail" for d in report for c in d["checks"])
    if as_json:
        value = {"ok": not failed, "failed": failed, "databases": report}
        out.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0 if not failed else 1
    for d in report:
        out.write(f"database {d['name']} ({d['type']}): {d['url']}\n")
        for c in d["checks"]:
            out.write(f"  {MARKS[c['status']]} {c['name']}: {c['detail']}\n")
            if c["status"] in ("fail", "warn") and c["fix"]:
                out.write(f"      fix: {c['fix']}\n")
    warned = sum(c["status"] == "warn" for d in report for c in d["checks"])
    note = f" ({warned} warning(s))" if warned else ""
    out.write(f"all checks passed{note}\n" if not failed else f"{failed} check(s) failed{note}\n")
    return 0 if not failed else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m memory_palace.doctor [--database NAME] [--json]` (the CLI wires
    `memory-palace doctor` to run())."""
    import argparse

    from .config import load_settings

    ap = argparse.ArgumentParser(
        prog="memory-palace doctor",
        description="Check the databases and print fixes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--database", help="only this named database")
    ap.add_argument(
        "--processes",
        type=int,
        help="processes expected to connect (default: configured instances, at least 2)",
    )
    ap.add_argument("--data-dir", help="data dir holding config.json")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    try:
        settings = load_settings(args.data_dir)
        return run(settings, args.database, sys.stdout, args.processes, as_json=args.json)
    except MemoryPalaceError as exc:
        sys.stderr.write(f"{exc.code}: {exc.message}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
