"""The JSON-lines bridge as a real subprocess: ready line, protocol errors, huge lines, one error
channel, management methods, clean exit, and SQLite polling events."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from memory_palace.tools import TOOLS

from tests.fixtures.bridge import ROOT


def test_ready_first_then_only_json_lines(spawn, sqlite_url: str) -> None:
    b = spawn(sqlite_url, env={"MEMORY_PALACE_INSTANCE_ID": "prime"})
    assert b.lines[0] is b.ready
    assert b.ready["ready"] is True and b.ready["tools"] == [
        t.name for t in TOOLS if t.extension is None
    ]
    assert b.ready["version"] and b.ready["instance_id"] == "prime"
    stats = b.result("memory_stats")
    assert isinstance(stats, dict) and "error" not in stats
    assert b.close() == 0
    assert b.bad_lines == [] and len(b.lines) == 2


@pytest.mark.parametrize(
    "line, code, has_id",
    [
        (b"{not json", "PARSE_ERROR", False),
        (b"[1, 2, 3]", "INVALID_REQUEST", False),
        (b'"just a string"', "INVALID_REQUEST", False),
        (b'{"method": "_health"}', "INVALID_REQUEST", False),
        (b'{"id": {"x": 1}, "method": "_health"}', "INVALID_REQUEST", False),
        (b'{"id": true, "method": "_health"}', "INVALID_REQUEST", False),
        (b'{"id": 7, "method": 42}', "INVALID_REQUEST", True),
        (b'{"id": 7, "method": "memory_stats", "params": [1]}', "INVALID_PARAMS", True),
        (b'{"id": 7, "method": "no_such_tool"}', "METHOD_NOT_FOUND", True),
        (
            b'{"id": 7, "method": "message", "params": {"action": "get", "limit": "ten"}}',
            "INVALID_PARAMS",
            True,
        ),
        (b'{"id": 7, "method": "message", "params": {"action": "shout"}}', "INVALID_PARAMS", True),
        (
            b'{"id": 7, "method": "message", "params": {"action": "get", "nope": 1}}',
            "INVALID_PARAMS",
            True,
        ),
        (b'{"id": 7, "method": "_subscribe", "params": {"instance": 5}}', "INVALID_PARAMS", True),
        (
            b'{"id": 7, "method": "message", "params": {"action": "mark_read", "instance_id": "prime",'
            b' "message_id": 99999}}',
            "NOT_FOUND",
            True,
        ),
    ],
)
def test_bad_requests_get_their_error_and_the_bridge_keeps_serving(
    spawn, sqlite_url: str, line: bytes, code: str, has_id: bool
) -> None:
    b = spawn(sqlite_url)
    b.send_raw(line + b"\n")
    rid = 7 if has_id else None
    reply = b.reply(rid)
    assert reply["error"]["code"] == code, reply
    assert "result" not in reply and reply["error"]["message"]
    if code == "NOT_FOUND":  # a tool's refusal carries its domain code
        assert reply["error"]["data"]["kind"] == "NOT_FOUND"
    if code == "INVALID_PARAMS" and b"limit" in line:
        assert reply["error"]["data"]["param"] == "limit" and "limit" in reply["error"]["message"]
    assert b.result("_health")["ok"] is True


def test_huge_line_is_refused_without_a_crash(spawn, sqlite_url: str) -> None:
    b = spawn(sqlite_url)
    content = "x" * (17 * 1024 * 1024)
    big = orjson.dumps(
        {
            "id": "big",
            "method": "message",
            "params": {
                "action": "send",
                "from_instance": "prime",
                "to_instance": "sandy",
                "content": content,
            },
        }
    )
    b.send_raw(big + b"\n")
    reply = b.reply("big", timeout=60)  # the id is read from the line's head: no lost caller
    assert reply["error"]["code"] == "INVALID_REQUEST" and "result" not in reply
    assert "longer than" in reply["error"]["message"]
    assert "limits.max_request_bytes" in reply["error"]["message"]
    sent = b.result(
        "message",
        {"action": "send", "from_instance": "prime", "to_instance": "sandy", "content": "small"},
    )
    assert sent["success"]
    got = b.result("message", {"action": "get", "instance_id": "sandy"})
    assert [m["content"] for m in got["messages"]] == ["small"]


def test_management_methods(spawn, sqlite_url: str) -> None:
    b = spawn(sqlite_url, instance_routes={"sandy": {"url": "http://127.0.0.1:1/hooks"}})
    routes = b.result("_get_instance_routes")
    assert routes["instances"] == ["prime", "sandy"]
    assert routes["instance_routes"] == {"sandy": {"url": "http://127.0.0.1:1/hooks"}}
    health = b.result("_health")
    assert health["listener_state"] == "polling" and health["in_flight"] == 0
    assert health["listeners"]["default"]["names"] == ["all"] and health["served"] == []
    assert health["uptime_s"] >= 0
    cancel = b.result("_cancel", {"id": "nothing-pending"})
    assert cancel == {
        "cancelled": False,
        "id": "nothing-pending",
        "state": "unknown",
        "note": cancel["note"],
    }
    sub = b.result("_subscribe", {"instance": "ops"})
    assert sub["mode"] == "poll" and sub["instance"] == "ops" and sub["served"] == ["ops"]
    assert "ops" in b.result("_health")["listeners"]["default"]["names"]
    b.result("_unsubscribe", {"instance": "ops"})
    assert "ops" not in b.result("_health")["listeners"]["default"]["names"]
    bad = b.call("_subscribe", {"instance": "x" * 60})
    assert bad["error"]["code"] == "INVALID_PARAMS" and "45 bytes" in bad["error"]["message"]


def test_duplicate_pending_id_and_out_of_order_ids(spawn, sqlite_url: str) -> None:
    b = spawn(sqlite_url)
    lines = b"".join(
        orjson.dumps(
            {
                "id": i,
                "method": "message",
                "params": {
                    "action": "send",
                    "from_instance": "prime",
                    "to_instance": "sandy",
                    "content": f"m{i}",
                },
            }
        )
        + b"\n"
        for i in range(40)
    )
    b.send_raw(lines)
    replies = [b.reply(i) for i in range(40)]
    assert all(r["result"]["success"] for r in replies)
    assert len({r["result"]["id"] for r in replies}) == 40
    got = b.result("message", {"action": "get", "instance_id": "sandy", "limit": 100})
    assert got["count"] == 40


def test_shutdown_replies_then_exits(spawn, sqlite_url: str) -> None:
    b = spawn(sqlite_url)
    assert b.result("_shutdown")["success"] is True
    assert b.proc.wait(30) == 0


def test_eof_exits_cleanly_after_finishing_requests(spawn, sqlite_url: str) -> None:
    b = spawn(sqlite_url)
    rid = b.submit(
        "message",
        {
            "action": "send",
            "from_instance": "prime",
            "to_instance": "sandy",
            "content": "last words",
        },
    )
    assert b.close() == 0
    assert b.replies[rid][0]["result"]["success"]


def test_sqlite_polling_emits_events(spawn, make_palace, sqlite_url: str) -> None:
    b = spawn(sqlite_url, env={"MEMORY_PALACE_INSTANCE_ID": "sandy"})
    other = make_palace(sqlite_url, instances=["prime", "sandy"])
    direct = other.call(
        "message",
        {
            "action": "send",
            "from_instance": "prime",
            "to_instance": "sandy",
            "content": "wake",
            "subject": "hi",
        },
    )
    event = b.event(lambda e: e.get("data", {}).get("message_id") == direct["id"])
    assert event["event"] == "new_message"
    assert event["data"]["subject"] == "hi" and event["data"]["from_instance"] == "prime"
    # A served instance's channel subscription is polled too.
    b.result("message", {"action": "subscribe", "instance_id": "sandy", "channel": "ops"})
    chan = other.call(
        "message",
        {"action": "send", "from_instance": "prime", "channel": "ops", "content": "deploy"},
    )
    event = b.event(lambda e: e.get("data", {}).get("message_id") == chan["id"])
    assert event["data"]["recipients"] == ["sandy"]
    # Messages for instances nobody listens to are not emitted.
    other.call(
        "message",
        {"action": "send", "from_instance": "prime", "to_instance": "zed", "content": "not ours"},
    )
    last = other.call(
        "message",
        {"action": "send", "from_instance": "prime", "to_instance": "all", "content": "everyone"},
    )
    b.event(lambda e: e.get("data", {}).get("message_id") == last["id"])
    ids = [d["message_id"] for d in b.new_messages()]
    assert ids == [direct["id"], chan["id"], last["id"]]


def test_cancel_drops_replies_and_frees_a_worker(spawn, sqlite_url: str) -> None:
    import sqlite3

    from memory_palace.db.urls import sqlite_path

    b = spawn(sqlite_url)
    b.result("message", {"action": "get", "instance_id": "sandy"})  # schema exists
    lock = sqlite3.connect(sqlite_path(sqlite_url), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # every send now waits for the write lock
    try:
        ids = [
            b.submit(
                "message",
                {
                    "action": "send",
                    "from_instance": "prime",
                    "to_instance": "sandy",
                    "content": f"blocked {i}",
                },
            )
            for i in range(9)
        ]
        b.wait_for(
            lambda: (
                b.result("_health")["in_flight"] == 9
                and sum(r["running"] for r in b.result("_health")["in_flight_requests"]) == 8
            )
        )
        running = [r["id"] for r in b.result("_health")["in_flight_requests"] if r["running"]]
        queued = next(i for i in ids if i not in running)
        assert b.result("_cancel", {"id": queued})["state"] == "queued"
        assert b.result("_cancel", {"id": running[0]})["state"] == "running"
        # Every original worker is stuck, yet a new request is served at once.
        got = b.result("message", {"action": "get", "instance_id": "sandy"})
        assert got["count"] == 0
    finally:
        lock.execute("COMMIT")
        lock.close()
    for rid in running[1:]:
        assert b.reply(rid)["result"]["success"]
    b.wait_for(lambda: b.result("_health")["in_flight"] == 0)
    assert running[0] not in b.replies and queued not in b.replies
    got = b.result("message", {"action": "get", "instance_id": "sandy", "limit": 100})
    assert got["count"] == 8  # the cancelled running send finished; the queued one never ran


def test_stray_writes_go_to_stderr_not_the_protocol() -> None:
    code = (
        "import os; from memory_palace.bridge import _protocol_stdout; out = _protocol_stdout(); "
        "print('stray print'); os.write(1, b'stray fd write\\n'); "
        "out.write(b'{\"ok\": 1}\\n'); out.flush()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b'{"ok": 1}\n'
    assert b"stray print" in done.stderr and b"stray fd write" in done.stderr


def test_ready_line_reports_a_foreign_embedder_with_the_fix(
    spawn, sqlite_url: str, make_palace
) -> None:
    from memory_palace.embeddings import HashingEmbedder

    other = make_palace(sqlite_url, embedder=HashingEmbedder(384))
    other.call("memory_set", {"content": "written by the hash embedder"})
    b = spawn(sqlite_url, embedder="local")
    err = b.ready.get("embedder_error")
    assert err and err["code"] == "CONFLICT" and "reembed" in err["message"]
    # the bridge still serves: the fix itself can run through it
    assert b.result("memory_reembed", {"all_memories": True})["would_reembed"] == 1
