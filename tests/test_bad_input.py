"""Hostile input at the surfaces, through the real entry points: a thousand `_cancel` requests
leave no worker behind; a read-only SQLite database is a clear error, the bridge keeps serving
and recovers once the permissions return, without a restart; so is a full disk; the same memory
sent fifty times at once is stored once; malformed lines on the MCP stdio server do not stop it
serving."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
from memory_palace.bridge import WORKERS
from memory_palace.db.engine import dispose_engines
from memory_palace.db.urls import sqlite_path

from tests.fixtures.bridge import request_line
from tests.fixtures.db import build_palace

ROOT = Path(__file__).resolve().parents[1]


def workers() -> int:
    return sum(t.name.startswith("mp-worker-") for t in threading.enumerate())


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_thousand_cancels_leak_no_worker(memory_bridge, make_palace, sqlite_url):
    b = memory_bridge(make_palace(sqlite_url))
    b.result("message", {"action": "get", "instance_id": "sandy"})  # schema exists
    base = workers()
    assert base <= WORKERS
    lock = sqlite3.connect(sqlite_path(sqlite_url), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the send below waits for the write lock
    try:
        send = {"action": "send", "from_instance": "prime", "to_instance": "sandy", "content": "x"}
        blocked = b.submit("message", send)
        wait_until(lambda: any(r["running"] for r in b.result("_health")["in_flight_requests"]))
        lines = b"".join(request_line(f"c{i}", "_cancel", {"id": blocked}) for i in range(1000))
        lines += b"".join(request_line(f"u{i}", "_cancel", {"id": f"none{i}"}) for i in range(1000))
        b.feed(lines)
        replies = {line["id"]: line["result"] for line in b.lines() if "id" in line}
        cancels = [replies[f"c{i}"] for i in range(1000)]
        assert cancels[0]["state"] == "running" and cancels[0]["cancelled"] is True
        assert all("already cancelled" in c.get("note", "") for c in cancels[1:])
        assert all(replies[f"u{i}"]["state"] == "unknown" for i in range(1000))
        assert workers() <= WORKERS + 1  # one stand-in for the abandoned call, not a thousand
        # every original worker but the stuck one is free: a burst is served at once
        burst = [b.submit("memory_stats") for _ in range(50)]
        assert all("result" in b.reply(rid) for rid in burst)
    finally:
        lock.execute("COMMIT")
        lock.close()
    wait_until(lambda: b.result("_health")["in_flight"] == 0)
    assert blocked not in {line.get("id") for line in b.lines()}  # a cancelled call: no reply
    wait_until(lambda: workers() <= WORKERS)


def _protocol(proc: subprocess.Popen[bytes], rid: str, method: str, params: dict) -> dict:
    proc.stdin.write(request_line(rid, method, params))
    proc.stdin.flush()
    while True:
        line = proc.stdout.readline()
        assert line, "the bridge closed its stdout"
        obj = orjson.loads(line)
        if obj.get("id") == rid:
            return obj


def _one_memory(data: Path, content: str) -> dict:
    """A SQLite palace in `data` holding one memory; closed, so a bridge can take it over."""
    palace = build_palace(data, f"sqlite:///{data / 'memories.db'}")
    kept = palace.call("memory_set", {"content": content})
    palace.close()
    dispose_engines()
    return kept


def test_read_only_sqlite_is_a_clear_error_and_recovers_without_restart():
    """As root the bridge runs as nobody (root writes anywhere); otherwise chmod does it."""
    root = Path(tempfile.mkdtemp(prefix="mp-ro-"))
    try:
        os.chmod(root, 0o755)
        data = root / "data"
        kept = _one_memory(data, "written before the disk went read-only")
        as_root = os.geteuid() == 0

        def read_only(on: bool) -> None:
            for path in (data, *data.iterdir()):
                if as_root:
                    os.chown(path, 0 if on else 65534, 0 if on else 65534)
                else:
                    mode = 0o755 if path.is_dir() else 0o644
                    os.chmod(path, mode & ~0o222 if on else mode)

        read_only(True)
        # Not measured by coverage when it runs as nobody: it could not write the data file.
        dropped = ("MEMORY_PALACE_", *(("COVERAGE",) if as_root else ()))
        env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
        env.update(MEMORY_PALACE_DATA_DIR=str(data), PYTHONPATH=str(ROOT / "bridge"))
        env["HOME"] = str(root)
        proc = subprocess.Popen(
            [sys.executable, "-m", "memory_palace.bridge"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            **({"user": 65534, "group": 65534, "extra_groups": []} if as_root else {}),
        )
        try:
            ready = orjson.loads(proc.stdout.readline())
            assert ready["ready"] is True  # serving; the database's state is reported per call
            failed = _protocol(proc, "w1", "memory_set", {"content": "while read-only"})
            error = failed["error"]
            assert error["code"] == "PERMISSION_DENIED", error
            assert "read-only" in error["message"] and str(data / "memories.db") in error["message"]
            assert "writable" in error["message"]  # the fix
            assert _protocol(proc, "h1", "_health", {})["result"]["in_flight"] == 0
            read_only(False)
            written = _protocol(proc, "w2", "memory_set", {"content": "after the fix"})
            assert "result" in written, written
            got = _protocol(proc, "g1", "memory_get", {"memory_ids": [kept["id"]]})["result"]
            assert got["memories"][0]["content"] == "written before the disk went read-only"
        finally:
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0
            err = proc.stderr.read().decode()
            assert "Traceback" not in err, err
    finally:
        shutil.rmtree(root, ignore_errors=True)


MALFORMED_MCP_LINES = [
    (b"{not json", None),  # no id to answer: logged on stderr and dropped
    (b'{"jsonrpc":"2.0","id":7,"method":"tools/list"', (7, -32700)),  # cut short
    (b'{"jsonrpc":"2.0","id":"s\xff","method":"tools/list"}', None),  # the id is not UTF-8
    (b'{"jsonrpc":"2.0","id":"u8","method":"x","params":{"a":"\xff"}}', ("u8", -32700)),
    (b'{"jsonrpc":"2.0","id":9,"method":"tools/list","params":{"a":"\\ud800"}}', (9, -32700)),
    (b'{"jsonrpc":"1.0","id":8,"method":"tools/list"}', (8, -32600)),
    (
        b'{"jsonrpc":"2.0","id":10,"method":"x","params":' + b"[" * 300 + b"]" * 300 + b"}",
        (10, -32600),
    ),  # nesting past the validator's limit
    (b"[]", None),
]


def test_mcp_stdio_answers_each_malformed_line_and_keeps_serving(tmp_path):
    """The SDK drops such lines silently (a client without a timeout would hang): the server
    answers each one that carries an id with PARSE_ERROR or INVALID_REQUEST on that id, and
    the next call after each one is served. One server takes them all, one after another."""
    env = {
        **os.environ,
        "MEMORY_PALACE_DATA_DIR": str(tmp_path),
        "MEMORY_PALACE_EMBEDDER": "hash",
        "PYTHONPATH": str(ROOT / "bridge"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "memory_palace.mcp_server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )

    def send(line: bytes) -> None:
        proc.stdin.write(line + b"\n")
        proc.stdin.flush()

    init = {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    }
    try:
        send(orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}))
        assert orjson.loads(proc.stdout.readline())["id"] == 1
        send(orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        for n, (bad, answer) in enumerate(MALFORMED_MCP_LINES, start=100):
            send(bad)
            call = {"name": "memory_stats", "arguments": {}}
            send(orjson.dumps({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": call}))
            replies = []
            while not replies or replies[-1].get("id") != n:
                replies.append(orjson.loads(proc.stdout.readline()))
            reply = replies.pop()
            assert reply["result"]["isError"] is False, bad
            assert "total_memories" in reply["result"]["content"][0]["text"]
            if answer is None:
                assert replies == [], bad
            else:
                (error,) = replies
                assert error["id"] == answer[0] and error["error"]["code"] == answer[1], error
                assert error["error"]["message"].startswith(("Parse error", "Invalid Request"))
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read().decode()
        assert "Traceback" not in err, err
    unanswerable = sum(1 for _, answer in MALFORMED_MCP_LINES if answer is None)
    assert err.count("dropped an unreadable stdin line without an id") == unanswerable, err


def test_the_same_memory_sent_fifty_times_at_once_is_stored_once(palace):
    from concurrent.futures import ThreadPoolExecutor

    content = "the release train leaves on thursdays at 14:00 UTC"
    with ThreadPoolExecutor(max_workers=16) as pool:
        outs = list(pool.map(lambda _: palace.call("memory_set", {"content": content}), range(50)))
    assert len({o["id"] for o in outs}) == 1
    assert sum(1 for o in outs if "duplicate_of" in o) == 49
    with palace.database().read() as conn:
        from sqlalchemy import text

        stored = conn.execute(
            text("SELECT count(*) FROM memories WHERE content = :c"), {"c": content}
        ).scalar()
    assert stored == 1


def test_a_full_disk_is_a_clear_error_and_recovers_without_restart(tmp_path):
    """The bridge may grow its files by a few KiB only (RLIMIT_FSIZE, as a full disk would);
    then the limit is lifted from outside, and the same process writes again."""
    import resource

    data = tmp_path / "data"
    kept = _one_memory(data, "written before the disk filled up")
    room = max(p.stat().st_size for p in data.iterdir()) + 8 * 1024

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (room, resource.RLIM_INFINITY))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEMORY_PALACE_", "COVERAGE"))}
    env.update(MEMORY_PALACE_DATA_DIR=str(data), PYTHONPATH=str(ROOT / "bridge"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "memory_palace.bridge"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=small_disk,
    )
    try:
        assert orjson.loads(proc.stdout.readline())["ready"] is True
        big = "disk filler " * 20_000  # 240 KB: more than the room left
        failed = _protocol(proc, "w1", "memory_set", {"content": big})
        error = failed["error"]
        assert error["code"] == "BACKEND_UNAVAILABLE", error
        assert "disk is full" in error["message"] or "I/O" in error["message"], error
        assert _protocol(proc, "h1", "_health", {})["result"]["in_flight"] == 0
        got = _protocol(proc, "g1", "memory_get", {"memory_ids": [kept["id"]]})["result"]
        assert got["memories"][0]["content"] == "written before the disk filled up"
        unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, unlimited)
        written = _protocol(proc, "w2", "memory_set", {"content": big})
        assert "result" in written, written
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read().decode()
        assert "Traceback" not in err, err
