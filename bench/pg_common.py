"""PostgreSQL for the benches: the server (MEMORY_PALACE_TEST_PG_URL, a superuser URL, or a
throwaway pgserver cluster in a temp dir) and plain psycopg2 connections to its databases."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy.engine import make_url


@contextmanager
def pg_server() -> Iterator[str]:
    """A superuser URL: MEMORY_PALACE_TEST_PG_URL, else a pgserver started now and deleted after
    (its default max_connections is 100)."""
    url = os.environ.get("MEMORY_PALACE_TEST_PG_URL")
    if url:
        yield url
        return
    import pgserver

    server = pgserver.get_server(
        Path(tempfile.mkdtemp(prefix="mp-bench-pg-")), cleanup_mode="delete"
    )
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def url_for(url: str, dbname: str) -> str:
    """`url` pointed at another database (password kept)."""
    return make_url(url).set(database=dbname).render_as_string(hide_password=False)


def connect(url: str, dbname: str | None = None) -> Any:
    """An autocommit psycopg2 connection to `dbname` (default: the URL's database)."""
    target = url_for(url, dbname) if dbname else url
    conn = psycopg2.connect(target.replace("+psycopg2", ""))
    conn.autocommit = True
    return conn
