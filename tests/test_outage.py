"""PostgreSQL stopped mid-session: every call answers BACKEND_UNAVAILABLE with a fix (never
INTERNAL_ERROR); started again: the same bridge process answers normally."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.fixtures.db import pg_execute

pytestmark = pytest.mark.postgres


def test_postgres_outage_then_recovery_in_one_bridge(own_server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.json").write_bytes(
        orjson.dumps({"database": {"url": own_server.url}, "embedder": "hash"})
    )
    env = {**os.environ, "MEMORY_PALACE_DATA_DIR": str(data), "MEMORY_PALACE_INSTANCE_ID": "a"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "memory_palace.bridge"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin and proc.stdout
    lines = iter(proc.stdout.readline, b"")

    def call(rid: int, method: str, params: dict) -> dict:
        proc.stdin.write(orjson.dumps({"id": rid, "method": method, "params": params}) + b"\n")
        proc.stdin.flush()
        for line in lines:
            msg = orjson.loads(line)
            if msg.get("id") == rid:
                return msg
        raise AssertionError("the bridge exited")

    try:
        assert orjson.loads(next(lines))["ready"] is True
        assert "result" in call(1, "memory_set", {"content": "before the outage"})
        own_server.stop()
        for rid, (method, params) in enumerate(
            [
                ("memory_recall", {"query": "outage"}),
                ("memory_set", {"content": "during the outage"}),
                ("memory_stats", {}),
                ("message", {"action": "get", "instance_id": "a"}),
            ],
            start=10,
        ):
            err = call(rid, method, params)["error"]
            assert err["code"] == "BACKEND_UNAVAILABLE", err
            assert "pg_isready" in err["message"] or "retried" in err["message"], err
            assert "Traceback" not in err["message"] and "INSERT" not in err["message"]
        own_server.start()
        deadline = time.monotonic() + 30
        while True:  # the first call after the restart may still see a dead pooled connection
            got = call(100, "memory_recall", {"query": "outage", "include_graph": False})
            if "result" in got or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [m["content"] for m in got["result"]["memories"]] == ["before the outage"]
        assert "result" in call(101, "memory_set", {"content": "after the outage"})
        assert call(102, "memory_stats", {})["result"]["total_memories"] == 2
    finally:
        proc.stdin.close()
        proc.wait(30)


def _kill_pool(url: str) -> int:
    """Terminate every other backend on `url`'s database: the Palace's pooled connections."""
    return pg_execute(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
        "datname = current_database() AND pid <> pg_backend_pid()",
    )[1]


def test_a_pooled_connection_whose_backend_was_killed_is_replaced_before_use(
    make_palace, pg_url: str
) -> None:
    palace = make_palace(pg_url)
    palace.call("memory_set", {"content": "kept"})
    assert _kill_pool(pg_url) >= 1  # an admin, idle_session_timeout or a firewall did it
    out = palace.call("memory_recall", {"query": "kept", "include_graph": False})
    assert [m["content"] for m in out["memories"]] == ["kept"]
