"""The memory lifecycle on both backends: update with history, forget, unarchive, expiry and
the sweep, event time (since/until), and who may change what."""

from __future__ import annotations

import io
import json
import shlex
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from memory_palace import Palace
from memory_palace.cli import main
from memory_palace.db.filters import Filters
from memory_palace.db.urls import sqlite_path
from memory_palace.db.values import utcnow
from memory_palace.errors import InvalidParams, NotFound, PermissionDenied
from memory_palace.services import lifecycle, when
from memory_palace.services.access import Caller
from memory_palace.transfer import export_jsonl, import_jsonl
from sqlalchemy import text

A = Caller("alice", "writer", verified=True)
B = Caller("bob", "writer", verified=True)
READER = Caller("rita", "reader", verified=True)
ADMIN = Caller("root", "admin", verified=True)


def add(palace: Palace, content: str, caller: Caller | None = None, **kw: Any) -> int:
    return palace.call("memory_set", {"content": content, **kw}, caller=caller)["id"]


def found(palace: Palace, query: str, search: str = "keyword", **kw: Any) -> list[int]:
    out = palace.call(
        "memory_recall", {"query": query, "search": search, "include_graph": False, **kw}
    )
    return [m["id"] for m in out["memories"]]


def rows(palace: Palace, sql: str, **params: Any) -> list[Any]:
    with palace.database().read() as conn:
        return list(conn.execute(text(sql), params))


# --- update and history -----------------------------------------------------------------------


def test_update_reindexes_and_history_keeps_both_versions(palace: Palace) -> None:
    mid = add(palace, "the staging database listens on port quokka5432", caller=A)
    out = palace.call(
        "memory_update",
        {"memory_id": mid, "content": "the staging database listens on port wombat6543"},
        caller=A,
    )
    assert out["version"] == 2 and out["changed"] == ["content"] and out["embedded"]
    assert found(palace, "wombat6543") == [mid]
    assert found(palace, "quokka5432") == []
    assert found(palace, "wombat6543", search="vector")[0] == mid
    card = palace.call("memory_get", {"memory_ids": mid, "include_graph": False})["memory"]
    assert "wombat6543" in card["content"]

    palace.call(
        "memory_update",
        {"memory_id": mid, "subject": "staging port", "tags": ["ops"], "reason": "titled"},
        caller=ADMIN,
    )
    hist = palace.call("memory_history", {"memory_id": mid})
    assert [v["version"] for v in hist["versions"]] == [1, 2, 3]
    first, second, third = hist["versions"]
    assert first["by"] == "alice" and "quokka5432" in first["content"]
    assert first["subject"] is None
    assert second["by"] == "alice" and second["changed"] == ["content"]
    assert "wombat6543" in second["content"]
    assert third["by"] == "root" and third["reason"] == "titled"
    assert third["changed"] == ["subject", "tags"] and third["subject"] == "staging port"


def test_update_without_changes_writes_no_version(palace: Palace) -> None:
    mid = add(palace, "same text stays the same", subject="s")
    out = palace.call("memory_update", {"memory_id": mid, "subject": "s"})
    assert out["changed"] == []
    assert palace.call("memory_history", {"memory_id": mid})["count"] == 1


def test_update_type_projects_visibility_and_occurred_at(palace: Palace) -> None:
    mid = add(palace, "a fact about the build cache", caller=A)
    palace.call(
        "memory_update",
        {
            "memory_id": mid,
            "memory_type": "gotcha",
            "project": ["build", "ci"],
            "foundational": True,
            "visibility": "private",
            "occurred_at": "2026-03-14",
        },
        caller=A,
    )
    card = palace.call("memory_get", {"memory_ids": mid, "include_graph": False}, caller=A)
    m = card["memory"]
    assert (m["memory_type"], m["projects"], m["foundational"]) == ("gotcha", ["build", "ci"], True)
    assert m["visibility"] == "private" and m["occurred_at"].startswith("2026-03-14T00:00:00")
    with pytest.raises(NotFound):  # now private: bob no longer sees it
        palace.call("memory_get", {"memory_ids": mid}, caller=B)


def test_bad_times_are_clear_errors(palace: Palace) -> None:
    mid = add(palace, "a memory with times")
    with pytest.raises(InvalidParams, match="occurred_at 'last tuesday' is not an ISO 8601"):
        palace.call("memory_update", {"memory_id": mid, "occurred_at": "last tuesday"})
    with pytest.raises(InvalidParams, match="not both"):
        palace.call("memory_set", {"content": "x", "ttl_seconds": 5, "expires_at": "2030-01-01"})
    with pytest.raises(InvalidParams, match="not both"):
        palace.call("memory_update", {"memory_id": mid, "ttl_seconds": 0, "expires_at": "2030"})
    with pytest.raises(InvalidParams, match="ttl_seconds' must be <="):
        palace.call("memory_set", {"content": "x", "ttl_seconds": 10**12})
    with pytest.raises(InvalidParams, match="until must be after since"):
        palace.call("memory_recent", {"since": "2026-02-01", "until": "2026-01-01"})


# --- permissions ------------------------------------------------------------------------------


def test_others_cannot_update_or_forget(palace: Palace) -> None:
    private = add(palace, "alice private diary entry", caller=A, visibility="private")
    shared = add(palace, "alice shared note about lunch", caller=A)
    with pytest.raises(NotFound):  # bob cannot even see it
        palace.call("memory_update", {"memory_id": private, "content": "bob was here"}, caller=B)
    with pytest.raises(PermissionDenied, match="belongs to 'alice'"):
        palace.call("memory_update", {"memory_id": shared, "content": "bob was here"}, caller=B)
    with pytest.raises(PermissionDenied, match="writer role"):
        palace.call("memory_update", {"memory_id": shared, "content": "x"}, caller=READER)
    with pytest.raises(PermissionDenied, match="writer role"):
        palace.call("memory_forget", {"memory_ids": [shared]}, caller=READER)
    out = palace.call(
        "memory_forget", {"memory_ids": [private, shared], "dry_run": False}, caller=B
    )
    assert out["forgotten"] == 0 and out["skipped_not_owner"] == [shared]
    assert out["not_found"] == [private]
    out = palace.call("memory_forget", {"instance_id": "alice", "dry_run": False}, caller=B)
    assert out["forgotten"] == 0
    assert len(rows(palace, "SELECT id FROM memories")) == 2
    assert found(palace, "lunch") == [shared]
    palace.call("memory_update", {"memory_id": shared, "content": "admin fixed it"}, caller=ADMIN)


# --- forget -----------------------------------------------------------------------------------


def test_forget_by_filter_leaves_no_trace(palace: Palace) -> None:
    keep = add(palace, "keep this memory about gardening tomatoes", project="garden")
    gone = add(palace, "secret xylophonic password hint", project="secrets")
    gone2 = add(palace, "another xylophonic secret", project="secrets", ttl_seconds=3600)
    palace.call("memory_link", {"source_id": keep, "target_id": gone, "relation_type": "refines"})
    palace.call("memory_update", {"memory_id": gone, "subject": "hint"})
    palace.call("memory_archive", {"memory_ids": [gone2], "dry_run": False})
    assert found(palace, "xylophonic") == [gone]

    dry = palace.call("memory_forget", {"project": "secrets"})
    assert (dry["would_forget"], dry["edges"], dry["versions"]) == (2, 1, 1)
    assert len(rows(palace, "SELECT id FROM memories")) == 3  # a dry run deletes nothing

    if palace.database().kind == "sqlite":  # the text is in the main file, not just the WAL
        with palace.database().read() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    out = palace.call("memory_forget", {"project": "secrets", "dry_run": False})
    assert out["forgotten"] == 2 and sorted(out["ids"]) == sorted([gone, gone2])
    ids = {"a": gone, "b": gone2}
    where_ids = "IN (:a, :b)"
    assert rows(palace, f"SELECT id FROM memories WHERE id {where_ids}", **ids) == []
    assert rows(palace, f"SELECT id FROM memory_versions WHERE memory_id {where_ids}", **ids) == []
    assert (
        rows(
            palace,
            f"SELECT id FROM memory_edges WHERE source_id {where_ids} OR target_id {where_ids}",
            **ids,
        )
        == []
    )
    assert rows(palace, "SELECT id FROM memories WHERE content LIKE '%xylophonic%'") == []
    if palace.database().kind == "sqlite":  # no copy in the keyword index, nor in the files
        from memory_palace.db.sqlite_index import keyword_index

        index = keyword_index(palace.database(), palace.settings.recall.fields)
        index.search([], Filters(), None, (1.2, 0.4), 1)  # catch up with the change log
        assert not [t for t in index.m.postings if t.startswith("xylophon")]
        path = Path(sqlite_path(palace.database().url))
        for f in path.parent.glob(path.name + "*"):
            assert b"xylophonic" not in f.read_bytes(), f.name
    assert found(palace, "xylophonic") == []
    assert found(palace, "xylophonic", include_archived=True) == []
    assert gone not in found(palace, "secret xylophonic password hint", search="vector")
    assert found(palace, "tomatoes") == [keep]


def test_forget_needs_ids_or_a_filter(palace: Palace) -> None:
    with pytest.raises(InvalidParams, match="give memory_ids or at least one filter"):
        palace.call("memory_forget", {"dry_run": False})


def test_forget_older_than_and_type(palace: Palace) -> None:
    old = add(palace, "an old event from long ago", memory_type="event")
    new = add(palace, "a new event from today", memory_type="event")
    with palace.database().write() as conn:
        conn.execute(
            text("UPDATE memories SET created_at = :t WHERE id = :i"),
            {
                "t": palace.database().backend.encode("time", utcnow() - timedelta(days=40)),
                "i": old,
            },
        )
    out = palace.call(
        "memory_forget", {"memory_type": "event", "older_than_days": 30, "dry_run": False}
    )
    assert out["ids"] == [old]
    assert [r[0] for r in rows(palace, "SELECT id FROM memories")] == [new]


def test_export_import_carry_versions_and_never_forgotten(
    palace: Palace, make_palace: Callable[..., Palace], tmp_path: Path
) -> None:
    mid = add(palace, "version one of the export test")
    palace.call("memory_update", {"memory_id": mid, "content": "version two of the export test"})
    gone = add(palace, "forgotten before the export")
    palace.call("memory_forget", {"memory_ids": [gone], "dry_run": False})
    buf = io.BytesIO()
    counts = export_jsonl(palace, None, buf)["counts"]
    assert counts["memory_version"] == 1 and counts["memory"] == 1
    other = make_palace(f"sqlite:///{tmp_path / 'imported.db'}")
    import_jsonl(other, None, io.BytesIO(buf.getvalue()))
    hist = other.call("memory_history", {"memory_id": mid})
    assert [v["content"] for v in hist["versions"]] == [
        "version one of the export test",
        "version two of the export test",
    ]
    with pytest.raises(NotFound):
        other.call("memory_get", {"memory_ids": gone})


# --- archive and supersede --------------------------------------------------------------------


def test_unarchive_restores_and_history_shows_the_chain(palace: Palace) -> None:
    old = add(palace, "the office is on floor 3 okapi")
    new = palace.call(
        "memory_set", {"content": "the office moved to floor 5 okapi", "supersedes_id": old}
    )["id"]
    assert found(palace, "okapi") == [new]
    hist = palace.call("memory_history", {"memory_id": new})
    assert [r["id"] for r in hist["replaces"]] == [old]
    assert [r["id"] for r in palace.call("memory_history", {"memory_id": old})["replaced_by"]] == [
        new
    ]
    out = palace.call("memory_unarchive", {"memory_ids": [old, new]})
    assert out == {"unarchived": [old], "already_active": [new]}
    assert sorted(found(palace, "okapi")) == sorted([old, new])
    versions = palace.call("memory_history", {"memory_id": old})["versions"]
    assert [v["is_archived"] for v in versions] == [True, False]


# --- expiry -----------------------------------------------------------------------------------


def test_expired_vanish_from_every_read_and_sweep_purges(palace: Palace) -> None:
    keep = add(palace, "a lasting memory about narwhals")
    soon = add(palace, "a passing memory about narwhals and ephemera", ttl_seconds=3600)
    palace.call("memory_link", {"source_id": keep, "target_id": soon, "relation_type": "refines"})
    assert sorted(found(palace, "narwhals")) == sorted([keep, soon])
    stats = palace.call("memory_stats", {})
    assert (stats["active_memories"], stats["expired_memories"]) == (2, 0)

    past = (utcnow() - timedelta(seconds=1)).isoformat()
    palace.call("memory_update", {"memory_id": soon, "expires_at": past})
    assert found(palace, "narwhals") == [keep]
    assert found(palace, "ephemera") == []
    assert soon not in found(palace, "a passing memory about narwhals and ephemera", "vector")
    assert soon not in found(palace, "narwhals ephemera", "hybrid", include_archived=True)
    with pytest.raises(NotFound):
        palace.call("memory_get", {"memory_ids": soon})
    with pytest.raises(NotFound):
        palace.call("memory_history", {"memory_id": soon})
    recent = palace.call("memory_recent", {"include_archived": True})
    assert [m["id"] for m in recent["memories"]] == [keep]
    got = palace.call("memory_get", {"memory_ids": keep, "graph_depth": 2})
    assert str(soon) not in str(got.get("graph_context", {}))
    stats = palace.call("memory_stats", {})
    assert (stats["total_memories"], stats["expired_memories"], stats["total_edges"]) == (1, 1, 0)
    # the same text again is a new memory, not a duplicate of the expired one
    again = add(palace, "a passing memory about narwhals and ephemera")
    assert again != soon

    assert lifecycle.sweep(palace.database()) == 1
    assert rows(palace, "SELECT id FROM memories WHERE id = :i", i=soon) == []
    assert rows(palace, "SELECT id FROM memory_edges") == []
    assert palace.call("memory_stats", {})["expired_memories"] == 0
    assert lifecycle.sweep(palace.database()) == 0


def test_ttl_at_set_and_clearing_expiry(palace: Palace) -> None:
    out = palace.call("memory_set", {"content": "expires in an hour", "ttl_seconds": 3600})
    assert out["expires_at"] > utcnow().isoformat()
    palace.call("memory_update", {"memory_id": out["id"], "ttl_seconds": 0})
    card = palace.call("memory_get", {"memory_ids": out["id"], "include_graph": False})["memory"]
    assert card["expires_at"] is None


def test_sweep_runs_when_a_palace_opens_the_database(
    make_palace: Callable[..., Palace], db_url: str
) -> None:
    first = make_palace(db_url)
    mid = add(first, "sweep me on start", ttl_seconds=3600)
    past = (utcnow() - timedelta(seconds=1)).isoformat()
    first.call("memory_update", {"memory_id": mid, "expires_at": past})
    first.database().cache.pop("swept_at")  # as a new process would: never swept
    first.call("memory_stats", {})
    assert rows(first, "SELECT id FROM memories") == []


# --- event time -------------------------------------------------------------------------------


def test_since_until_filter_on_event_time(palace: Palace) -> None:
    jan = add(palace, "meeting notes pelican january", occurred_at="2026-01-15T10:00:00Z")
    feb = add(palace, "meeting notes pelican february", occurred_at="2026-02-01")
    mar = add(palace, "meeting notes pelican march", occurred_at="2026-03-01T00:00:00+00:00")
    now = add(palace, "meeting notes pelican stored today")

    def recent(**kw: Any) -> list[int]:
        return sorted(m["id"] for m in palace.call("memory_recent", kw)["memories"])

    assert recent(since="2026-02-01", until="2026-03-01") == [feb]  # since in, until out
    assert recent(until="2026-02-01") == [jan]
    assert recent(since="2026-03-01") == sorted([mar, now])
    assert recent(since="2026-01-15T10:00:00Z", until="2026-01-15T10:00:00.000001Z") == [jan]
    for search in ("keyword", "vector", "hybrid"):
        got = found(palace, "meeting notes pelican", search, since="2026-01-20", until="2026-03-02")
        assert sorted(got) == sorted([feb, mar])
    assert found(palace, "pelican", since=utcnow().date().isoformat()) == [now]


# --- conflicts at write -----------------------------------------------------------------------

BASE = "the deploy pipeline pushes docker images to the staging registry every night"
NEAR = "the deploy pipeline pushes docker images to the staging registry every morning"  # 0.93


def test_conflicts_reported_for_a_changed_fact_not_for_unrelated(palace: Palace) -> None:
    port = add(palace, "The staging deploy port is 5432", subject="Deploy port")
    out = palace.call(
        "memory_set", {"content": "I like green tea in the morning", "subject": "tea"}
    )
    assert "possible_conflicts" not in out
    out = palace.call(
        "memory_set", {"content": "The staging deploy port is now 6543", "subject": "deploy port"}
    )
    assert [c["id"] for c in out["possible_conflicts"]] == [port]
    assert out["possible_conflicts"][0]["reason"] == "same subject"
    assert "supersedes_id" in out["conflict_note"]

    night = add(palace, BASE)
    out = palace.call("memory_set", {"content": NEAR})
    assert [(c["id"], c["reason"]) for c in out["possible_conflicts"]] == [(night, "similar text")]
    assert out["possible_conflicts"][0]["similarity"] >= 0.9


def test_on_conflict_supersede_replaces_in_one_call(palace: Palace) -> None:
    old = add(palace, "The team lead is Dana", subject="team lead", caller=A)
    out = palace.call(
        "memory_set",
        {"content": "The team lead is Sam", "subject": "Team lead", "on_conflict": "supersede"},
        caller=A,
    )
    assert out["superseded"] == old and "possible_conflicts" not in out
    assert palace.call("memory_history", {"memory_id": out["id"]})["replaces"][0]["id"] == old
    # bob may not replace alice's memory: reported, not superseded
    out = palace.call(
        "memory_set",
        {"content": "The team lead is Kim", "subject": "team lead", "on_conflict": "supersede"},
        caller=B,
    )
    assert "superseded" not in out and out["possible_conflicts"][0]["instance_id"] == "alice"


def test_conflicts_never_reveal_private_memories(palace: Palace) -> None:
    add(palace, "my salary is 100", subject="salary", caller=A, visibility="private")
    out = palace.call(
        "memory_set", {"content": "salary bands are public", "subject": "salary"}, caller=B
    )
    assert "possible_conflicts" not in out


# --- CLI --------------------------------------------------------------------------------------


@pytest.fixture
def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    monkeypatch.setenv("MEMORY_PALACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEMORY_PALACE_EMBEDDER", "hash")
    monkeypatch.chdir(tmp_path)

    def run(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_readme_lifecycle_examples_run(cli: Callable[..., tuple[int, str, str]]) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Memory lifecycle", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    Path("retro.md").write_text("Retro: the migration went well; keep the runbook.\n")
    Path("memories.jsonl").write_text(
        '{"content": "imported one"}\n{"content": "imported two", "memory_type": "event"}\n'
    )
    outputs = {}
    for line in [ln for ln in block.splitlines() if ln.startswith("memory-palace")]:
        code, out, err = cli(*shlex.split(line)[1:])
        assert code == 0, f"{line}\n{out}\n{err}"
        outputs[line] = out
    history = outputs["memory-palace history 1"]
    assert "v1 " in history and "5432" in history and "v2 " in history and "6543" in history
    conflict = next(v for k, v in outputs.items() if "moved to 6543" in k)
    assert "possible conflict: #1 staging db port (same subject)" in conflict
    assert (
        "stored 2, duplicates 0, failed 0"
        in outputs["memory-palace remember --jsonl memories.jsonl -p imported"]
    )
    recent = outputs["memory-palace recent --since 2026-11-01 --until 2026-12-01"]
    assert "retro" in recent and "(1 of 1)" in recent
    assert "would_forget: 2" in outputs["memory-palace forget --project imported"]
    assert "forgotten: 2" in outputs["memory-palace forget --project imported --execute"]


def test_remember_from_stdin_file_and_jsonl_errors(
    cli: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    big = "line of a long note\n" * 5000  # ~100 KB: more than a command line comfortably takes
    code, out, _ = cli("remember", "-", "-s", "from stdin", "--json", stdin=big)
    assert code == 0
    mid = json.loads(out)["id"]
    code, out, _ = cli("get", str(mid), "--json")
    assert json.loads(out)["memory"]["content"] == big
    Path("note.txt").write_text("text from a file")
    code, out, _ = cli("remember", "--file", "note.txt", "--json")
    assert code == 0
    code, out, err = cli("remember", "--file", "missing.txt")
    assert code == 1 and "cannot read missing.txt" in err
    code, out, err = cli("remember")
    assert code == 1 and "'-' to read it from stdin" in err
    Path("bad.jsonl").write_text('{"content": "fine"}\nnot json\n{"subject": "no content"}\n')
    code, out, err = cli("remember", "--jsonl", "bad.jsonl")
    assert code == 1 and "stored 1, duplicates 0, failed 2" in out
    assert "line 2" in err and "line 3" in err and "content" in err


def test_cli_edit_forget_unarchive(cli: Callable[..., tuple[int, str, str]]) -> None:
    cli("remember", "first text", "-s", "edited")
    code, out, _ = cli("edit", "1", "-", "--reason", "typo", stdin="second text")
    assert code == 0 and "version: 2" in out
    code, out, _ = cli("history", "1", "--json")
    assert [v["content"] for v in json.loads(out)["versions"]] == ["first text", "second text"]
    code, out, _ = cli("edit", "1", "--no-foundational")
    assert "changed: -" in out
    cli("archive", "1", "--execute")
    code, out, _ = cli("unarchive", "1")
    assert code == 0 and "unarchived: 1" in out
    code, out, _ = cli("forget", "1", "--execute")
    assert code == 0 and "forgotten: 1" in out
    code, out, err = cli("history", "1")
    assert code == 1 and "does not exist" in err


@pytest.mark.postgres
def test_one_sweeper_at_a_time_on_postgres(make_palace: Callable[..., Palace], pg_url: str) -> None:
    palace = make_palace(pg_url)
    mid = add(palace, "expiring while another process sweeps", ttl_seconds=3600)
    past = (utcnow() - timedelta(seconds=1)).isoformat()
    palace.call("memory_update", {"memory_id": mid, "expires_at": past})
    db = palace.database()
    with db.write() as other:  # another process sweeping: holds the sweep lock
        assert db.backend.try_lock(other, lifecycle.SWEEP_LOCK)
        assert lifecycle.sweep(db) == 0
    assert lifecycle.sweep(db) == 1


# --- relative dates ---------------------------------------------------------------------------

THURSDAY = datetime(2026, 12, 3, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("query", "phrase", "since", "until", "rest"),
    [
        (
            "what did we decide last week",
            "last week",
            "2026-11-23",
            "2026-11-30",
            "what did we decide",
        ),
        ("notes from today", "today", "2026-12-03", "2026-12-04", "notes from"),
        ("yesterday?", "yesterday", "2026-12-02", "2026-12-03", "yesterday?"),
        ("3 days ago deploy", "3 days ago", "2026-11-30", "2026-12-01", "deploy"),
        (
            "outages in the last 2 weeks",
            "last 2 weeks",
            "2026-11-19",
            "2026-12-04",
            "outages in the",
        ),
        ("past seven days", "past seven days", "2026-11-26", "2026-12-04", "past seven days"),
        ("budget last month", "last month", "2026-11-01", "2026-12-01", "budget"),
        ("this month", "this month", "2026-12-01", "2027-01-01", "this month"),
        ("launch in March", "in March", "2026-03-01", "2026-04-01", "launch"),
        ("party in dec 2025", "in dec 2025", "2025-12-01", "2026-01-01", "party"),
        ("last year", "last year", "2025-01-01", "2026-01-01", "last year"),
    ],
)
def test_relative_dates(query: str, phrase: str, since: str, until: str, rest: str) -> None:
    span = when.find(query, THURSDAY)
    assert span is not None
    got = (span.phrase, span.since.date().isoformat(), span.until.date().isoformat(), span.query)
    assert got == (phrase, since, until, rest)


@pytest.mark.parametrize("query", ["nothing dated here", "the lastweek thing", "in mayonnaise"])
def test_no_relative_date(query: str) -> None:
    assert when.find(query, THURSDAY) is None


def test_recall_dates_flag(palace: Palace) -> None:
    day = utcnow().replace(hour=12, minute=0, second=0, microsecond=0)
    yesterday = add(
        palace,
        "decision: ship the heron release",
        occurred_at=(day - timedelta(days=1)).isoformat(),
    )
    older = add(
        palace,
        "decision: delay the heron release",
        occurred_at=(day - timedelta(days=9)).isoformat(),
    )
    plain = palace.call(
        "memory_recall", {"query": "heron release yesterday", "include_graph": False}
    )
    assert {m["id"] for m in plain["memories"]} >= {yesterday, older} and "dates" not in plain
    dated = palace.call(
        "memory_recall",
        {"query": "heron release yesterday", "dates": True, "include_graph": False},
    )
    assert [m["id"] for m in dated["memories"]] == [yesterday]
    assert dated["dates"]["phrase"] == "yesterday"
    last = found(palace, "heron release in the last 10 days", "hybrid", dates=True)
    assert sorted(last) == sorted([yesterday, older])


# --- recency ----------------------------------------------------------------------------------


def test_recency_weight_prefers_recent_events(
    make_palace: Callable[..., Palace], db_url: str
) -> None:
    cfg = {"recall": {"weights": {"similarity": 1, "recency": 1}, "half_life_days": 7}}
    palace = make_palace(db_url, **cfg)
    day = utcnow()
    old = add(
        palace,
        "standup notes about the ibis project",
        occurred_at=(day - timedelta(days=60)).isoformat(),
    )
    new = add(
        palace,
        "standup notes about the ibis project!",
        occurred_at=(day - timedelta(days=1)).isoformat(),
    )
    core = add(
        palace, "standup notes about the ibis project.", foundational=True, occurred_at="2020-01-01"
    )
    out = palace.call(
        "memory_recall", {"query": "ibis standup notes", "explain": True, "include_graph": False}
    )
    recency = {m["id"]: m["explain"]["recency"] for m in out["memories"]}
    assert recency[core] == 1.0 and 0.9 < recency[new] < 1.0 and recency[old] < 0.01
    assert [m["id"] for m in out["memories"]].index(new) < [m["id"] for m in out["memories"]].index(
        old
    )


def test_recency_is_off_by_default(palace: Palace) -> None:
    assert palace.settings.weights["recency"] == 0
    add(palace, "an event long ago about the egret", occurred_at="2001-01-01")
    out = palace.call("memory_recall", {"query": "egret", "explain": True, "include_graph": False})
    assert out["memories"][0]["explain"]["recency"] == 0.0


def test_concurrent_updates_keep_every_version(palace: Palace) -> None:
    mid = add(palace, "a memory many agents retag at once")
    errors: list[BaseException] = []

    def retag(i: int) -> None:
        try:
            palace.call("memory_update", {"memory_id": mid, "tags": [f"t{i}"]})
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=retag, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    versions = palace.call("memory_history", {"memory_id": mid})["versions"]
    assert [v["version"] for v in versions] == list(range(1, 8))
    final = palace.call("memory_get", {"memory_ids": mid, "include_graph": False})["memory"]
    assert versions[-1]["tags"] == final["tags"]
    assert sorted(v["tags"][0] for v in versions[1:]) == [f"t{i}" for i in range(6)]
