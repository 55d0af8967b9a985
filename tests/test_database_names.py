"""Databases by name: the guide's derivation stays the default, but never silently: a call
that created a database says so, derived names are validated before anything is created,
auto_create: false refuses unknown names, and databases from earlier runs are discovered."""

from __future__ import annotations

import uuid

import pytest
from memory_palace import InvalidParams, NotFound
from memory_palace.db.postgres import pg_connect

EXT = ["mcp_server.extensions.db_manager"]


def pg_databases(url: str) -> set[str]:
    conn = pg_connect(url, dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            return {r[0] for r in cur.fetchall()}
    finally:
        conn.close()


def test_a_call_that_created_a_database_says_so(make_palace, db_url: str) -> None:
    palace = make_palace(db_url)
    name = f"n{uuid.uuid4().hex[:8]}"
    first = palace.call("memory_recent", {"database": name})
    assert first["database_created"]["backend"] in ("sqlite", "postgres")
    assert "***" in first["database_created"]["url"] or "sqlite" in first["database_created"]["url"]
    assert "database_created" not in palace.call("memory_recent", {"database": name})


@pytest.mark.parametrize("bad", ["My-Stuff", "Work", "a b", "x" * 49, "wörk", "-x"])
def test_derived_names_are_validated_before_anything_is_created(
    make_palace, db_url: str, bad: str
) -> None:
    palace = make_palace(db_url)
    with pytest.raises(InvalidParams, match=r"lowercase|invalid database name"):
        palace.call("memory_recent", {"database": bad})


def test_auto_create_off_refuses_unknown_names_and_lists_known(make_palace, pg_url: str) -> None:
    maker = make_palace(pg_url)
    maker.call("memory_recent", {"database": "team_known"})  # exists now, on the server
    palace = make_palace(pg_url, auto_create=False)
    with pytest.raises(NotFound) as err:
        palace.call("memory_recall", {"query": "sprint", "database": "wrok"})
    assert "auto_create" in err.value.message and "team_known" in err.value.message
    assert "memory_palace_wrok" not in pg_databases(pg_url)
    assert palace.call("memory_recent", {"database": "team_known"})["count"] == 0


def test_sqlite_auto_create_off(make_palace, sqlite_url: str) -> None:
    palace = make_palace(sqlite_url, auto_create=False)
    with pytest.raises(NotFound, match="auto_create"):
        palace.call("memory_recent", {"database": "typo"})
    assert not list(palace.settings.data_dir.parent.glob("**/memories_typo.db"))


def test_databases_from_earlier_runs_are_discovered(make_palace, db_url: str) -> None:
    name = f"d{uuid.uuid4().hex[:8]}"
    make_palace(db_url).call("memory_set", {"content": "old run", "database": name})
    fresh = make_palace(db_url, extensions=EXT)  # a new process: nothing registered
    listed = fresh.call("memory_list_databases", {})["databases"]
    assert listed[name]["discovered"] is True
    assert listed[name]["status"] == "connected"
    assert listed[name]["table_counts"]["memories"] == 1
