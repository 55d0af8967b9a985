"""The JSON-lines bridge. In process (`Bridge` over in-memory streams, on both backends): tool
calls, the protocol-error table, management methods, one JSON object per stdout line. As a real
subprocess: the ready line, a bad line, huge lines, cancellation, EOF and _shutdown, stray writes
to stdout, SQLite polling events."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from memory_palace.tools import TOOLS

from tests.fixtures.bridge import ROOT, MemoryBridge, request_line

INSTANCES = ["prime", "sandy"]
ROUTES = {"sandy": {"url": "http://127.0.0.1:1/hooks"}}
LISTENER = {  # what listens for new messages on each backend
    "sqlite": {"kind": "poll", "state": "polling"},
    "postgres": {"kind": "listen", "state": "listening"},
}


@pytest.fixture
def bridged(make_palace, db_url: str, memory_bridge) -> MemoryBridge:
    """A started in-process bridge over a fresh database of each backend."""
    return memory_bridge(make_palace(db_url, instances=INSTANCES, instance_routes=ROUTES))


# -- in process ---------------------------------------------------------------------------------


def test_tool_calls_answer_one_json_line_each(bridged: MemoryBridge, backend: str) -> None:
    ready = bridged.ready
    assert ready["ready"] is True and ready["database"] == "default"
    assert ready["tools"] == [t.name for t in TOOLS if t.extension is None]
    assert ready["listener"] == LISTENER[backend]
    awkward = 'two\nlines, a \r, a \u2028, a "quote" and \\ in one value'
    stored = bridged.result("memory_set", {"content": awkward, "auto_link": False})
    got = bridged.result("memory_get", {"memory_ids": stored["id"], "include_graph": False})
    assert got["memory"]["content"] == awkward
    sent = bridged.result(
        "message",
        {"action": "send", "from_instance": "prime", "to_instance": "sandy", "content": awkward},
    )
    inbox = bridged.result("message", {"action": "get", "instance_id": "sandy"})
    assert [(m["id"], m["content"]) for m in inbox["messages"]] == [(sent["id"], awkward)]
    lines = bridged.lines()  # each line parsed on its own: one JSON object per line
    assert lines[0] == ready and all("ready" not in line for line in lines[1:])
    replies = [line for line in lines if "id" in line]
    assert [r["id"] for r in replies] == ["m1", "m2", "m3", "m4"]
    assert all(set(r) == {"id", "result"} for r in replies)


@pytest.mark.parametrize("backend", ["sqlite"])  # protocol errors are the same on both
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
            b'{"id": 7, "method": "message", "params": {"action": "mark_read", '
            b'"instance_id": "prime", "message_id": 99999}}',
            "NOT_FOUND",
            True,
        ),
    ],
)
def test_bad_requests_get_their_error_and_the_bridge_keeps_serving(
    bridged: MemoryBridge, line: bytes, code: str, has_id: bool
) -> None:
    bridged.feed(line + b"\n")
    reply = bridged.reply(7 if has_id else None)
    assert reply["error"]["code"] == code, reply
    assert "result" not in reply and reply["error"]["message"]
    if code == "NOT_FOUND":  # a tool's refusal carries its domain code
        assert reply["error"]["data"]["kind"] == "NOT_FOUND"
    if code == "INVALID_PARAMS" and b"limit" in line:
        assert reply["error"]["data"]["param"] == "limit" and "limit" in reply["error"]["message"]
    assert bridged.result("_health")["ok"] is True
    assert len([x for x in bridged.lines() if "error" in x]) == 1


def test_management_methods(bridged: MemoryBridge, backend: str) -> None:
    routes = bridged.result("_get_instance_routes")
    assert routes == {"instances": INSTANCES, "instance_routes": ROUTES, "instance_id": None}
    health = bridged.result("_health")
    assert health["ok"] is True and health["in_flight"] == 0 and health["served"] == []
    assert health["listener_state"] == LISTENER[backend]["state"]
    assert health["listeners"]["default"]["names"] == ["all"]
    assert 0 <= health["uptime_s"] < 60
    assert bridged.result("_cancel", {"id": "nothing-pending"}) == {
        "cancelled": False,
        "id": "nothing-pending",
        "state": "unknown",
        "note": "no pending request has this id (finished already?)",
    }
    sub = bridged.result("_subscribe", {"instance": "ops"})
    assert sub["mode"] == LISTENER[backend]["kind"] and sub["served"] == ["ops"]
    assert "ops" in bridged.result("_health")["listeners"]["default"]["names"]
    bridged.result("_unsubscribe", {"instance": "ops"})
    assert "ops" not in bridged.result("_health")["listeners"]["default"]["names"]
    bad = bridged.call("_subscribe", {"instance": "x" * 60})
    assert bad["error"]["code"] == "INVALID_PARAMS" and "45 bytes" in bad["error"]["message"]
    unknown = bridged.call("_health", {"verbose": True})
    assert unknown["error"]["data"] == {"kind": "INVALID_PARAMS", "param": "verbose"}
    # _shutdown answers, and read_lines stops reading: the line after it is never served
    bridged.feed(request_line("bye", "_shutdown") + request_line("late", "_health"))
    assert bridged.reply("bye")["result"] == {"success": True, "shutting_down": True}
    assert not any(line.get("id") == "late" for line in bridged.lines())


# -- subprocess ---------------------------------------------------------------------------------


def test_ready_first_then_only_json_lines(spawn, sqlite_url: str) -> None:
    b = spawn(sqlite_url, env={"MEMORY_PALACE_INSTANCE_ID": "prime"})
    assert b.ready["ready"] is True and b.ready["tools"] == [
        t.name for t in TOOLS if t.extension is None
    ]
    assert b.ready["version"] and b.ready["instance_id"] == "prime"
    assert b.result("memory_stats")["total_memories"] == 0
    assert b.close() == 0
    assert b.bad_lines == [] and len(b.lines) == 2
    assert "ready" in b.lines[0] and "ready" not in b.lines[1]


def test_a_bad_line_is_answered_and_the_process_keeps_serving(spawn, sqlite_url: str) -> None:
    b = spawn(sqlite_url)
    b.send_raw(b"{not json\n")
    assert b.reply(None)["error"]["code"] == "PARSE_ERROR"
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
