"""The target before anything is written: what it holds (rows, its vector dimension, a run to
resume), read over a connection that creates nothing, and the exact check of whether a memory's
keyword index fits PostgreSQL's tsvector limit.

While the target database does not exist yet, the connection goes to the server's maintenance
database instead, so a dry run and the checks of a run that is refused leave no trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg2
from psycopg2 import errorcodes, sql

from ..db.postgres import SEARCH_DDL, pg_connect
from ..db.tables import EXPORTED, META
from ..errors import DatabaseMissing
from .rows import TSV_LIMIT

STATE_KEY = "migration_in_progress"  # palace_meta: the source of a run not yet verified
TSV_FUNCTION = "memory_palace_tsv("


@dataclass
class TargetState:
    exists: bool
    rows: dict[str, int] = field(default_factory=dict)  # per existing table
    stored_dim: int | None = None  # the vector dimension the target was created with
    in_progress: str | None = None  # the source path of an interrupted run

    @property
    def has_rows(self) -> bool:
        return any(self.rows.values())


def connect(url: str) -> tuple[Any, bool]:
    """(autocommit connection, whether the target database exists)."""
    try:
        return pg_connect(url), True
    except DatabaseMissing:
        return pg_connect(url, dbname="postgres"), False


def _table_exists(cur: Any, name: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
    return bool(cur.fetchone()[0])


def row_counts(cur: Any) -> dict[str, int]:
    out = {}
    for table in EXPORTED:
        if _table_exists(cur, table.name):
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.name)))
            out[table.name] = int(cur.fetchone()[0])
    return out


def read_state(conn: Any, exists: bool) -> TargetState:
    if not exists:
        return TargetState(exists=False)
    with conn.cursor() as cur:
        state = TargetState(exists=True, rows=row_counts(cur))
        if _table_exists(cur, META.name):
            cur.execute(
                "SELECT key, value FROM palace_meta WHERE key IN ('vector_dim', %s)", (STATE_KEY,)
            )
            meta = dict(cur.fetchall())
            state.stored_dim = int(meta["vector_dim"]) if meta.get("vector_dim") else None
            state.in_progress = meta.get(STATE_KEY)
    return state


def _temp_tsv_ddl() -> str:
    """The keyword index's function from db/postgres.py, as a temporary function: the check
    then uses exactly the expression the generated column will."""
    ddl = next(s for s in SEARCH_DDL if TSV_FUNCTION in s)
    return ddl.replace(f"FUNCTION {TSV_FUNCTION}", f"FUNCTION pg_temp.{TSV_FUNCTION}", 1)


class KeywordIndexCheck:
    """Asks PostgreSQL whether a memory's keyword index (tsvector) stays under its 1 MiB limit.
    Only memories large enough to possibly reach it are asked about (rows.TSV_CANDIDATE)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.ready = False

    def __call__(self, subject: str | None, content: str, keywords: list[str] | None) -> str | None:
        with self.conn.cursor() as cur:
            if not self.ready:
                cur.execute(_temp_tsv_ddl())
                self.ready = True
            try:
                cur.execute(
                    "SELECT pg_temp.memory_palace_tsv(%s, %s, %s::text[]) IS NULL",
                    (subject, content, keywords),
                )
            except psycopg2.Error as exc:
                if exc.pgcode != errorcodes.PROGRAM_LIMIT_EXCEEDED:
                    raise
                detail = str(exc).strip().splitlines()[0]
                return (
                    "subject+content+keywords are too long for the keyword index: PostgreSQL's "
                    f"tsvector holds at most {TSV_LIMIT} bytes ({detail}); shorten or split it"
                )
        return None
