"""db_manager tools against real databases: register, switch default, list with one down."""

from __future__ import annotations

import uuid

import pytest
from memory_palace.errors import Conflict, InvalidParams, NotFound, PermissionDenied

EXT = ["mcp_server.extensions.db_manager"]


def test_tools_need_the_extension(make_palace, sqlite_url):
    palace = make_palace(sqlite_url)
    with pytest.raises(InvalidParams, match="db_manager"):
        palace.call("memory_list_databases", {})
    short = make_palace(sqlite_url, extensions=["db_manager"])
    # the refused call above did not create the file; describing it does not either
    assert short.call("memory_current_database", {})["status"] == "missing"
    short.database()
    assert short.call("memory_current_database", {})["status"] == "connected"


@pytest.mark.postgres
def test_register_and_set_default_routes_later_calls(make_palace, pg_url):
    palace = make_palace(pg_url, extensions=EXT)
    name = f"t{uuid.uuid4().hex[:10]}"
    reg = palace.call("memory_register_database", {"name": name})
    assert reg["status"] == "connected" and reg["derived"] is True
    assert f"/memory_palace_{name}" in reg["url"]
    assert reg["table_counts"] == {"memories": 0, "memory_edges": 0, "messages": 0}

    out = palace.call("memory_set_default_database", {"name": name})
    assert out["previous"] == "default" and out["default"] == name
    cur = palace.call("memory_current_database", {})
    assert cur["name"] == name and cur["is_default"] is True

    palace.call("memory_set", {"content": "lands in the new default", "subject": "routing"})
    listing = palace.call("memory_list_databases", {})
    assert listing["default"] == name
    assert listing["databases"][name]["table_counts"]["memories"] == 1
    assert listing["databases"]["default"]["table_counts"].get("memories", 0) == 0

    palace.call("memory_set_default_database", {"name": "default"})
    palace.call("memory_set", {"content": "back in the old default"})
    listing = palace.call("memory_list_databases", {})
    assert listing["databases"]["default"]["table_counts"]["memories"] == 1
    assert listing["databases"][name]["table_counts"]["memories"] == 1


def test_set_default_unknown_name_is_not_found(make_palace, sqlite_url):
    palace = make_palace(sqlite_url, extensions=EXT)
    with pytest.raises(NotFound, match="memory_register_database"):
        palace.call("memory_set_default_database", {"name": "nowhere"})


@pytest.mark.postgres
def test_list_reports_a_down_database_without_failing(make_palace, pg_url, sqlite_url):
    down = "postgresql://mp:s3cr3tpw@127.0.0.1:1/memory_palace_down"
    palace = make_palace(
        extensions=EXT,
        databases={
            "default": {"type": "postgres", "url": pg_url},
            "offline": {"type": "postgres", "url": down},
            "local": {"type": "sqlite", "url": sqlite_url},
        },
    )
    palace.call("memory_set", {"content": "one memory"})
    listing = palace.call("memory_list_databases", {})
    dbs = listing["databases"]
    # databases other runs derived on the same server are listed too, marked discovered
    assert {n for n, d in dbs.items() if not d.get("discovered")} == {"default", "offline", "local"}
    assert dbs["default"]["status"] == "connected" and dbs["default"]["is_default"]
    assert dbs["default"]["table_counts"]["memories"] == 1
    assert dbs["offline"]["status"] == "down" and dbs["offline"]["type"] == "postgres"
    assert "s3cr3tpw" not in str(listing) and "***" in dbs["offline"]["url"]
    assert "pg_isready" in dbs["offline"]["error"]
    # SQLite file not created by listing
    assert dbs["local"]["status"] == "missing" and dbs["local"]["type"] == "sqlite"


@pytest.mark.postgres
def test_register_with_explicit_url_and_unreachable(make_palace, pg_url, sqlite_url):
    palace = make_palace(pg_url, extensions=EXT)
    inside = f"sqlite:///{palace.settings.data_dir / 'side.db'}"
    out = palace.call("memory_register_database", {"name": "side", "url": inside})
    assert out["type"] == "sqlite" and out["status"] == "connected"
    # agents place SQLite files only in the data dir, never turn other files into databases
    with pytest.raises(PermissionDenied, match="outside"):
        palace.call("memory_register_database", {"name": "away", "url": sqlite_url})
    (palace.settings.data_dir / "notes.txt").write_text("precious")
    with pytest.raises(Conflict, match="not a Memory Palace"):
        palace.call(
            "memory_register_database",
            {"name": "notes", "url": f"sqlite:///{palace.settings.data_dir / 'notes.txt'}"},
        )
    assert (palace.settings.data_dir / "notes.txt").read_text() == "precious"
    with pytest.raises(PermissionDenied):
        palace.call(
            "memory_register_database",
            {"name": "up", "url": f"sqlite:///{palace.settings.data_dir}/../up.db"},
        )
    from memory_palace.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="pg_isready"):
        palace.call(
            "memory_register_database",
            {"name": "gone", "url": "postgresql://x:pw@127.0.0.1:1/memory_palace_x"},
        )
    # a failed registration leaves nothing registered
    assert "gone" not in palace.call("memory_list_databases", {})["databases"]
