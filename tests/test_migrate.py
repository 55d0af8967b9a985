"""memory-palace-sqlite-to-pg against real SQLite files and the real PostgreSQL test server."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import memory_palace
import numpy as np
import orjson
import psycopg2
import pytest
from memory_palace import migrate as mig
from memory_palace.db import schema
from memory_palace.db.engine import dispose_engines, get_database
from memory_palace.db.postgres import ensure_database, ensure_pgvector, pg_connect
from memory_palace.db.tables import KINDS, MEMORIES
from memory_palace.migrate.copy import Stage
from sqlalchemy.engine import make_url

from tests.fixtures.layouts import this_layout

pytestmark = pytest.mark.postgres


ORIGINAL_DDL = [
    """CREATE TABLE memories (id INTEGER PRIMARY KEY, created_at DATETIME NOT NULL,
       updated_at DATETIME, instance_id VARCHAR(50), projects JSON NOT NULL,
       memory_type VARCHAR(50), subject VARCHAR(255), content TEXT NOT NULL, keywords JSON,
       tags JSON, foundational BOOLEAN, source_type VARCHAR(50), source_context TEXT,
       source_session_id VARCHAR(100), embedding TEXT, last_accessed_at DATETIME,
       access_count INTEGER, expires_at DATETIME, is_archived BOOLEAN)""",
    """CREATE TABLE memory_edges (id INTEGER PRIMARY KEY, created_at DATETIME,
       source_id INTEGER, target_id INTEGER, relation_type VARCHAR(50), strength FLOAT,
       bidirectional BOOLEAN, edge_metadata JSON, created_by VARCHAR(50))""",
    """CREATE TABLE messages (id INTEGER PRIMARY KEY, created_at DATETIME, from_instance
       VARCHAR(50), to_instance VARCHAR(50), message_type VARCHAR(50), subject VARCHAR(255),
       content TEXT, read_at DATETIME, read_by VARCHAR(50), channel VARCHAR(100),
       delivery_status VARCHAR(20), delivered_at DATETIME, expires_at DATETIME,
       priority INTEGER)""",
]


def original_layout(path: Path, dim: int = 8) -> None:
    conn = sqlite3.connect(path)
    with conn:
        for ddl in ORIGINAL_DDL:
            conn.execute(ddl)
        for i in range(1, 4):
            conn.execute(
                "INSERT INTO memories (id, created_at, instance_id, projects, memory_type, "
                "subject, content, keywords, tags, foundational, embedding, access_count, "
                "is_archived) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    i,
                    "2024-05-01 10:00:00.500000",
                    "prime",
                    '["life", "code"]',
                    "fact",
                    f"s{i}",
                    f"original {i}",
                    '["kw"]',
                    None,
                    1 if i == 1 else 0,
                    orjson.dumps([0.125 * i] * dim).decode() if i < 3 else None,
                    3,
                    0,
                ),
            )
        conn.execute(
            "INSERT INTO memory_edges VALUES (1, '2024-05-01 10:00:00', 1, 2, "
            "'supersedes', 1.0, 0, '{\"auto_linked\": true, \"method\": \"x\"}', 'p')"
        )
        conn.execute(
            "INSERT INTO memory_edges VALUES (2, '2024-05-01 10:00:00', 1, 99, "
            "'relates_to', 1.0, 0, NULL, 'p')"
        )  # orphan: memory 99 does not exist
        conn.execute(
            "INSERT INTO messages VALUES (7, '2024-05-01 10:00:00', 'prime', 'crash', "
            "'handoff', 'hi', 'body', '2024-05-02 10:00:00', 'crash', NULL, "
            "'delivered', NULL, NULL, 5)"
        )
    conn.close()


def v2_layout(path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("""CREATE TABLE memories (id INTEGER PRIMARY KEY, created_at DATETIME,
            instance_id VARCHAR(50), project VARCHAR(100), memory_type VARCHAR(50),
            subject VARCHAR(255), content TEXT, keywords JSON, tags JSON, importance INTEGER,
            embedding TEXT, is_archived BOOLEAN)""")
        conn.execute("""CREATE TABLE handoff_messages (id INTEGER PRIMARY KEY,
            created_at DATETIME, from_instance VARCHAR(50), to_instance VARCHAR(50),
            message_type VARCHAR(50), subject VARCHAR(255), content TEXT, read_at DATETIME,
            read_by VARCHAR(50))""")
        conn.execute(
            "INSERT INTO memories VALUES (1, '2023-01-01 00:00:00', 'prime', 'work', "
            "'fact', 's', 'important', NULL, NULL, 9, NULL, 0)"
        )
        conn.execute(
            "INSERT INTO memories VALUES (2, '2023-01-01 00:00:00', 'prime', NULL, "
            "'fact', 's', 'minor', NULL, NULL, 3, NULL, 0)"
        )
        conn.execute(
            "INSERT INTO handoff_messages VALUES (3, '2023-01-01 00:00:00', 'prime', "
            "'crash', 'handoff', 'x', 'y', NULL, NULL)"
        )
    conn.close()


def run(*args: str) -> int:
    return mig.main([*args, "--no-progress"])


def pg_rows(url: str, query: str, params: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()
    finally:
        conn.close()


def test_this_layout_copies_everything_and_resets_sequences(tmp_path, pg_url, make_palace, capsys):
    src = tmp_path / "memories.db"
    this_layout(src)
    assert run("--source", f"sqlite:///{src}", "--target", pg_url) == 0
    out = capsys.readouterr().out
    assert "migration verified" in out and "this project's SQLite schema" in out
    assert pg_rows(pg_url, "SELECT count(*) FROM memories") == [(40,)]
    row = pg_rows(
        pg_url,
        "SELECT projects, keywords, foundational, is_archived, "
        "embedding_dim, embedding_model, created_at FROM memories WHERE id = 10",
    )
    projects, keywords, found, archived, dim, model, created = row[0]
    assert projects == ["life", "work é"] and keywords == ["k1", "k2"]
    assert found is True and archived is True and dim == 384 and model == "hash:v1-384"
    assert created.microsecond == 123456
    meta = pg_rows(
        pg_url,
        "SELECT metadata, jsonb_typeof(metadata), auto_linked, bidirectional "
        "FROM memory_edges WHERE id = 11",
    )[0]
    assert meta == ({"auto_linked": True, "n": 1}, "object", True, True)
    # the vector is bit-exact
    src_vec = sqlite3.connect(src).execute("SELECT embedding FROM memories WHERE id = 4").fetchone()
    got = pg_rows(pg_url, "SELECT embedding::text FROM memories WHERE id = 4")[0][0]
    assert np.array_equal(np.frombuffer(src_vec[0], "<f4"), np.array(orjson.loads(got), "f4"))
    assert pg_rows(pg_url, "SELECT message_id, instance_id FROM message_reads") == [(1, "crash")]
    assert pg_rows(pg_url, "SELECT instance_id, channel FROM subscriptions") == [("crash", "ops")]

    # sequences were reset: the next insert through the palace gets max(id) + 1
    palace = make_palace(pg_url)
    new = palace.call("memory_set", {"content": "after the migration", "auto_link": False})
    assert new["id"] == 81
    dispose_engines()

    # target now has rows: a re-run needs --force, and then keeps the new row
    assert run("--source", f"sqlite:///{src}", "--target", pg_url) == 2
    assert "--force" in capsys.readouterr().err
    assert run("--source", f"sqlite:///{src}", "--target", pg_url, "--force") == 0
    assert "migration verified" in capsys.readouterr().out
    assert pg_rows(pg_url, "SELECT count(*) FROM memories") == [(41,)]


def test_original_layout_is_translated(tmp_path, pg_url, capsys):
    src = tmp_path / "old.db"
    original_layout(src)
    assert run("--source", str(src), "--target", pg_url, "--batch-size", "2") == 0
    out = capsys.readouterr().out
    assert "original Memory Palace v3" in out and "reembed" in out
    assert "1 memory_edges rows point at rows that do not exist" in out
    rows = pg_rows(
        pg_url,
        "SELECT id, projects, foundational, embedding_model, embedding_dim, "
        "content_hash IS NOT NULL FROM memories ORDER BY id",
    )
    assert rows == [
        (1, ["life", "code"], True, "unknown", 8, True),
        (2, ["life", "code"], False, "unknown", 8, True),
        (3, ["life", "code"], False, None, None, True),
    ]
    assert (
        pg_rows(pg_url, "SELECT embedding::text FROM memories WHERE id = 2")[0][0]
        == "[" + ",".join(["0.25"] * 8) + "]"
    )
    assert pg_rows(pg_url, "SELECT metadata->>'method', auto_linked FROM memory_edges") == [
        ("x", True)
    ]
    reads = pg_rows(pg_url, "SELECT message_id, instance_id, read_at::text FROM message_reads")
    assert reads == [(7, "crash", "2024-05-02 10:00:00+00")]


def test_original_v2_layout(tmp_path, pg_url, capsys):
    src = tmp_path / "v2.db"
    v2_layout(src)
    assert run("--source", str(src), "--target", pg_url, "--embedding-model", "nomic") == 0
    assert "original Memory Palace v2" in capsys.readouterr().out
    assert pg_rows(pg_url, "SELECT id, projects, foundational FROM memories ORDER BY id") == [
        (1, ["work"], True),
        (2, ["life"], False),
    ]
    assert pg_rows(pg_url, "SELECT id, to_instance FROM messages") == [(3, "crash")]


def test_dimension_mismatch_stops_with_a_clear_error(tmp_path, pg_url, capsys):
    schema.migrate(get_database(pg_url), 384)  # target built for 384-d vectors
    src = tmp_path / "old.db"
    original_layout(src, dim=8)
    assert run("--source", str(src), "--target", pg_url) == 2
    err = capsys.readouterr().err
    assert "8-d" in err and "384-d" in err and "new database" in err
    assert pg_rows(pg_url, "SELECT count(*) FROM memories") == [(0,)]


def test_mixed_source_dimensions_are_refused(tmp_path, pg_url, capsys):
    src = tmp_path / "old.db"
    original_layout(src, dim=8)
    conn = sqlite3.connect(src)
    with conn:
        conn.execute("UPDATE memories SET embedding = '[1.0, 2.0]' WHERE id = 2")
    conn.close()
    assert run("--source", str(src), "--target", pg_url) == 2
    assert "several dimensions" in capsys.readouterr().err


def test_dry_run_writes_nothing(tmp_path, pg_url, pg_server_url, capsys):
    src = tmp_path / "memories.db"
    this_layout(src, memories=5)
    assert run("--source", str(src), "--target", pg_url, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "missing: it will be created" in out and "5 rows to copy" in out
    dbname = pg_url.rsplit("/", 1)[1].split("?")[0]
    assert pg_rows(
        pg_server_url, "SELECT count(*) FROM pg_database WHERE datname = %s", (dbname,)
    ) == [(0,)]


def test_interrupted_run_can_be_rerun(tmp_path, pg_url):
    src = tmp_path / "memories.db"
    this_layout(src, memories=3000, dim=64)
    cmd = [
        sys.executable,
        "-m",
        "memory_palace.migrate",
        "--source",
        str(src),
        "--target",
        pg_url,
        "--batch-size",
        "20",
        "--no-progress",
    ]
    env = {**os.environ, "MEMORY_PALACE_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    copied = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            copied = pg_rows(pg_url, "SELECT count(*) FROM memories")[0][0]
        except psycopg2.Error:
            copied = 0
        if copied >= 200:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the migration finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    partial = pg_rows(pg_url, "SELECT count(*) FROM memories")[0][0]
    assert 0 < partial < 3000 and partial % 20 == 0  # whole batches only
    # the same command finishes the job, without --force (it resumes its own run)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "migration verified" in done.stdout
    assert pg_rows(pg_url, "SELECT count(*) FROM memories") == [(3000,)]
    assert pg_rows(pg_url, "SELECT count(*) FROM memory_edges") == [(2999,)]
    assert pg_rows(
        pg_url, "SELECT count(*) FROM pg_indexes WHERE indexname = 'idx_memories_embedding_hnsw'"
    ) == [(1,)]


def test_help_lists_the_flags():
    out = subprocess.run(
        [sys.executable, "-m", "memory_palace.migrate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--source",
        "--target",
        "--dry-run",
        "--force",
        "--batch-size",
        "--embedding-model",
    ):
        assert flag in out


# -- bad rows ------------------------------------------------------------------------------------
# this_layout(memories=6): memories 2, 4, .., 12; edge 10+i links memory 2i -> 2i+2 (i = 1..5);
# messages 1..5; message 1 is read by 'crash'.


def _distinct_words(n: int) -> str:
    letters = np.random.default_rng(3).integers(0, 26, (n, 8)) + ord("a")
    return " ".join(bytes(row.astype("u1")).decode() for row in letters)


def _set(sql_: str, *params: object):
    return lambda conn: conn.execute(sql_, params)


BAD_CASES = {
    "nul in text": (
        _set("UPDATE memories SET content = ? WHERE id = 4", "a\x00b"),
        {
            ("memories", 4): "content contains a NUL character",
            ("memory_edges", 11): "target_id 4 refers to a memories row that is skipped",
            ("memory_edges", 12): "source_id 4 refers to a memories row that is skipped",
        },
    ),
    "nul in strings": (
        _set("UPDATE memories SET keywords = ? WHERE id = 6", '["ok", "x\\u0000y"]'),
        {
            ("memories", 6): "keywords[1] contains a NUL character",
            ("memory_edges", 12): "target_id 6 refers",
            ("memory_edges", 13): "source_id 6 refers",
        },
    ),
    "nul in json": (
        _set("UPDATE memory_edges SET metadata = ? WHERE id = 13", '{"note": "x\\u0000"}'),
        {("memory_edges", 13): "metadata (JSON) contains a NUL character"},
    ),
    "invalid utf-8": (
        _set("UPDATE messages SET subject = CAST(x'ff41' AS TEXT) WHERE id = 3"),
        {("messages", 3): "subject is not valid UTF-8"},
    ),
    "invalid utf-8 in a key": (  # the report shows the bytes as escapes
        _set("UPDATE subscriptions SET instance_id = CAST(x'ff63' AS TEXT)"),
        {("subscriptions", ("\\udcffc", "ops")): "instance_id is not valid UTF-8"},
    ),
    "unparseable time": (
        _set("UPDATE messages SET created_at = 'yesterday' WHERE id = 1"),
        {
            ("messages", 1): "created_at is an unparseable time: 'yesterday'",
            ("message_reads", (1, "crash")): "message_id 1 refers to a messages row",
        },
    ),
    "malformed json array": (
        _set("UPDATE memories SET tags = '[\"a\",' WHERE id = 8"),
        {
            ("memories", 8): "tags is malformed JSON",
            ("memory_edges", 13): "target_id 8 refers",
            ("memory_edges", 14): "source_id 8 refers",
        },
    ),
    "malformed json object": (
        _set("UPDATE memory_edges SET metadata = '{oops' WHERE id = 15"),
        {("memory_edges", 15): "metadata is malformed JSON: '{oops'"},
    ),
    "wrong dimension": (
        _set("UPDATE memories SET embedding = ? WHERE id = 10", np.ones(2, "<f4").tobytes()),
        {
            ("memories", 10): "embedding has 2 dimensions but the target's vector column has 384",
            ("memory_edges", 14): "target_id 10 refers",
            ("memory_edges", 15): "source_id 10 refers",
        },
    ),
    "integer out of range": (
        _set("UPDATE memories SET access_count = ? WHERE id = 2", 2**40),
        {
            ("memories", 2): "access_count 1099511627776 is out of range for a 32-bit integer",
            ("memory_edges", 11): "source_id 2 refers",
        },
    ),
    # ~900 kB of distinct words need a 1.2 MB tsvector; 2.4 MB of two repeated words fit.
    "keyword index too large": (
        lambda conn: (
            conn.execute(
                "UPDATE memories SET content = ? WHERE id = 12", (_distinct_words(10**5),)
            ),
            conn.execute(
                "UPDATE memories SET content = ? WHERE id = 2", ("hello world " * 2 * 10**5,)
            ),
        ),
        {
            ("memories", 12): "too long for the keyword index",
            ("memory_edges", 15): "target_id 12 refers",
        },
    ),
}


def _database_exists(server_url: str, url: str) -> bool:
    dbname = url.rsplit("/", 1)[1].split("?")[0]
    found = pg_rows(server_url, "SELECT count(*) FROM pg_database WHERE datname = %s", (dbname,))
    return found == [(1,)]


def _key(key: object) -> str:
    """A key as reports print it: composite keys (tuples here) as JSON lists."""
    return orjson.dumps(list(key) if isinstance(key, tuple) else key).decode()


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_rows_are_listed_refused_or_skipped(case, tmp_path, pg_url, pg_server_url, capsys):
    mutate, expected = BAD_CASES[case]
    want = {(table, _key(key)): reason for (table, key), reason in expected.items()}
    src = tmp_path / "memories.db"
    this_layout(src, memories=6)
    conn = sqlite3.connect(src)
    with conn:
        mutate(conn)
    conn.close()

    # the dry run lists every bad row with its reason, and says how many
    assert run("--source", str(src), "--target", pg_url, "--dry-run") == 1
    out = capsys.readouterr().out
    assert f"bad rows: {len(want)} row(s) PostgreSQL cannot store" in out
    for (table, key), reason in want.items():
        line = next(ln for ln in out.splitlines() if ln.startswith(f"  {table} {key}: "))
        assert reason in line

    # a run refuses to start, names the flag and leaves no trace
    assert run("--source", str(src), "--target", pg_url) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "--skip-bad-rows" in err
    assert "nothing was copied" in err and not _database_exists(pg_server_url, pg_url)

    # --skip-bad-rows copies everything else, reports the skipped rows, and verifies
    report = tmp_path / "bad.jsonl"
    skip = ("--skip-bad-rows", "--bad-rows-file", str(report))
    assert run("--source", str(src), "--target", pg_url, *skip) == 0
    out = capsys.readouterr().out
    assert "migration verified" in out and f"listed in {report}" in out
    listed = [orjson.loads(line) for line in report.read_bytes().splitlines()]
    assert {(r["table"], _key(r["id"])) for r in listed} == set(want)
    for r in listed:
        assert want[r["table"], _key(r["id"])] in r["reason"]
    bad_memories = sum(1 for table, _ in want if table == "memories")
    assert pg_rows(pg_url, "SELECT count(*) FROM memories") == [(6 - bad_memories,)]


def test_original_layout_embedding_of_another_dimension_is_a_bad_row(tmp_path, pg_url, capsys):
    src = tmp_path / "old.db"
    original_layout(src, dim=8)
    conn = sqlite3.connect(src)
    with conn:  # the original stored a missing JSON value as the text 'null'
        conn.execute(
            "INSERT INTO memories (id, created_at, projects, content, keywords, embedding) "
            "VALUES (4, '2024-05-01 10:00:00', '[\"life\"]', 'stray', 'null', '[1.0, 2.0]')"
        )
    conn.close()
    bad = tmp_path / "bad.jsonl"
    assert run("--source", str(src), "--target", pg_url, "--skip-bad-rows",
               "--bad-rows-file", str(bad)) == 0  # fmt: skip
    assert "migration verified" in capsys.readouterr().out
    assert [orjson.loads(line) for line in bad.read_bytes().splitlines()] == [
        {
            "table": "memories",
            "id": 4,
            "reason": "embedding has 2 dimensions but the target's vector column has 8; "
            "re-embed this memory in the source to keep it",
        }
    ]
    assert pg_rows(pg_url, "SELECT id FROM memories ORDER BY id") == [(1,), (2,), (3,)]


def _memory_row(mid: int, content: str) -> tuple:
    values = dict.fromkeys(MEMORIES.names)
    values.update(
        id=mid,
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
        access_count=0,
        projects=["life"],
        content=content,
        foundational=False,
        is_archived=False,
        visibility="shared",
    )
    return tuple(values[n] for n in MEMORIES.names)


def test_rows_postgresql_still_refuses_are_found_by_splitting_the_batch(pg_url):
    schema.migrate(get_database(pg_url), 4)
    conn = pg_connect(pg_url, autocommit=False)
    try:
        stage = Stage(conn, MEMORIES)
        stage.prepare()
        rows = [_memory_row(i, "bad \x00" if i == 6 else f"m{i}") for i in range(1, 10)]
        moved = stage.move(rows)  # nothing checked these rows: PostgreSQL refuses row 6
    finally:
        conn.close()
    assert moved.inserted == 8
    assert [(row[0], "0x00" in why) for row, why in moved.refused] == [(6, True)]
    assert pg_rows(pg_url, "SELECT count(*) FROM memories") == [(8,)]


def test_every_column_kind_has_a_copy_encoder():
    assert set(mig.ENCODERS) == set(KINDS)


# -- command-line errors: one line, the right exit code, no traceback, no password ---------------


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("memory-palace-sqlite-to-pg: error: "), err
    assert "Traceback" not in err and "secret" not in err
    return err


def test_help_and_version_touch_nothing(tmp_path):
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "MEMORY_PALACE_DATA_DIR": str(tmp_path / "data"),
        "MEMORY_PALACE_DATABASE_URL": "postgresql://user:secret@127.0.0.1:1/nowhere",
    }
    for flag in ("--help", "--version"):
        res = subprocess.run(
            [sys.executable, "-m", "memory_palace.migrate", flag],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
        assert res.returncode == 0 and res.stderr == "", res.stderr
    assert res.stdout == f"memory-palace-sqlite-to-pg {memory_palace.__version__}\n"
    assert list(tmp_path.iterdir()) == []


def test_missing_source(tmp_path, pg_url, capsys):
    assert run("--source", str(tmp_path / "nope.db"), "--target", pg_url) == 2
    assert "does not exist; pass --source" in _one_error_line(capsys)


def test_source_that_is_not_sqlite(tmp_path, pg_url, capsys):
    src = tmp_path / "notes.txt"
    src.write_text("not a database, just some notes\n" * 100)
    assert run("--source", str(src), "--target", pg_url) == 2
    assert "is not a SQLite database" in _one_error_line(capsys)


def test_target_with_the_wrong_scheme(tmp_path, capsys):
    src = tmp_path / "memories.db"
    this_layout(src, memories=1)
    assert run("--source", str(src), "--target", "mysql://user:secret@host/db") == 2
    err = _one_error_line(capsys)
    assert "--target must be a PostgreSQL URL" in err and "mysql://user:***@host/db" in err


def test_unreachable_target(tmp_path, capsys):
    src = tmp_path / "memories.db"
    this_layout(src, memories=1)
    target = "postgresql://user:secret@127.0.0.1:1/memory_palace"
    assert run("--source", str(src), "--target", target) == 1
    err = _one_error_line(capsys)
    assert "cannot connect to PostgreSQL at postgresql://user:***@127.0.0.1:1" in err
    assert "pg_isready" in err


@pytest.fixture
def limited_role(pg_server_url):
    """A login role without CREATEDB; its URL carries a password that must never be shown."""
    name = f"mp_limited_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(pg_server_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'secret' NOCREATEDB")
    yield name
    with conn.cursor() as cur:
        cur.execute(f"DROP OWNED BY {name}")
        cur.execute(f"DROP ROLE {name}")
    conn.close()


def test_target_role_that_may_not_create_the_database(tmp_path, pg_url, limited_role, capsys):
    src = tmp_path / "memories.db"
    this_layout(src, memories=1)
    target = make_url(pg_url).set(username=limited_role, password="secret")
    assert run("--source", str(src), "--target", target.render_as_string(False)) == 1
    err = _one_error_line(capsys)
    assert "may not create it (no CREATEDB privilege)" in err
    assert f"ALTER USER {limited_role} CREATEDB" in err


def test_target_role_without_privileges_in_the_database(
    tmp_path, pg_url, pg_server_url, limited_role, capsys
):
    ensure_database(pg_url)
    ensure_pgvector(pg_url)  # as the superuser: only the schema privilege is missing
    src = tmp_path / "memories.db"
    this_layout(src, memories=1)
    target = make_url(pg_url).set(username=limited_role, password="secret")
    assert run("--source", str(src), "--target", target.render_as_string(False)) == 1
    err = _one_error_line(capsys)
    assert "permission denied for schema public" in err
    assert f"GRANT CREATE, USAGE ON SCHEMA public TO {limited_role}" in err
