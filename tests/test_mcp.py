"""The MCP server: in process through the official SDK's client over memory streams (on both
backends), spawned for real and driven by the SDK's ClientSession over stdio, and its HTTP wake
observed on a local HTTP server that checks the exact request."""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from mcp import Client, ClientSession, StdioServerParameters, stdio_client
from memory_palace import Palace
from memory_palace.mcp_server import build_server
from memory_palace.tools import TOOLS
from memory_palace.wake import WakeNotifier

TOKEN = "hook-secret-token"


class Gateway:
    """A stand-in for an OpenClaw gateway's POST /hooks/wake (hooks.enabled, hooks.token)."""

    def __init__(self) -> None:
        self.requests: queue.Queue[dict[str, Any]] = queue.Queue()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ok = (
                    self.path == "/hooks/wake"
                    and self.headers.get("Authorization") == f"Bearer {TOKEN}"
                )
                outer.requests.put(
                    {
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "type": self.headers.get("Content-Type"),
                        "body": json.loads(body),
                    }
                )
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true, "mode": "now", "eventOutcome": "queued"}')

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def gateway():
    gw = Gateway()
    yield gw
    gw.close()


def write_config(data_dir: Path, url: str, gateway_url: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "config.json").write_bytes(
        orjson.dumps(
            {
                "database": {"url": url},
                "embedder": "hash",
                "instances": ["prime", "crash", "sandy"],
                "extensions": ["mcp_server.extensions.db_manager"],
                "instance_routes": {
                    "crash": {
                        "gateway": gateway_url,
                        "token": TOKEN,
                        "agentId": "main",
                        "sessionKey": "hook:palace",
                    },
                    "sandy": {"gateway": gateway_url + "/hooks", "token": TOKEN},
                    "prime": {"gateway": gateway_url, "token": TOKEN},
                },
            }
        )
    )


async def session_run(data_dir: Path, body) -> Any:
    env = {
        **os.environ,
        "MEMORY_PALACE_DATA_DIR": str(data_dir),
        "MEMORY_PALACE_INSTANCE_ID": "prime",
    }
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "memory_palace.mcp_server"], env=env
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        return await body(session)


def result_json(res: Any) -> dict[str, Any]:
    assert not res.is_error, res.content[0].text
    return json.loads(res.content[0].text)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def mcp_client(palace: Palace) -> AsyncIterator[Client]:
    """The SDK's client connected to build_server(palace) in this process. mode="legacy" runs
    the JSON-RPC session over the SDK's memory streams (mcp.shared.memory), handshake included."""
    async with Client(build_server(palace), mode="legacy") as client:
        yield client


@pytest.mark.anyio
async def test_in_memory_session_lists_the_registry(mcp_client: Client, palace: Palace) -> None:
    listed = (await mcp_client.list_tools()).tools
    served = palace.registry.for_surface("mcp")
    assert [t.name for t in listed] == [t.name for t in served]
    assert "memory_list_databases" not in [t.name for t in listed]  # db_manager is not enabled
    for tool, spec in zip(listed, served, strict=True):
        assert tool.description == spec.description and tool.input_schema == spec.schema()


@pytest.mark.anyio
async def test_in_memory_session_calls_tools_and_reports_errors(mcp_client: Client) -> None:
    stored = result_json(
        await mcp_client.call_tool("memory_set", {"content": "The VPN rotates keys on Monday"})
    )
    recalled = result_json(
        await mcp_client.call_tool("memory_recall", {"query": "VPN keys", "include_graph": False})
    )
    assert [(m["id"], m["found_by"]) for m in recalled["memories"]] == [(stored["id"], "both")]
    missing = await mcp_client.call_tool("memory_get", {"memory_ids": stored["id"] + 1})
    assert missing.is_error and missing.content[0].text.startswith("NOT_FOUND: ")
    assert f"memory {stored['id'] + 1}" in missing.content[0].text
    bad = await mcp_client.call_tool("memory_recall", {"query": "x", "limit": "many"})
    assert bad.is_error and bad.content[0].text.startswith("INVALID_PARAMS: ")
    assert "limit" in bad.content[0].text
    # an error result leaves the session usable
    again = result_json(await mcp_client.call_tool("memory_stats", {}))
    assert again["total_memories"] == 1


@pytest.mark.postgres
def test_mcp_session_tools_memory_and_wake(tmp_path, pg_url, gateway):
    data = tmp_path / "data"
    write_config(data, pg_url, gateway.url)

    async def body(session: ClientSession) -> dict[str, Any]:
        listed = await session.list_tools()
        by_name = {t.name: t for t in listed.tools}
        set_res = result_json(
            await session.call_tool(
                "memory_set",
                {"content": "The deploy key rotates every Monday", "subject": "deploy key"},
            )
        )
        recall = result_json(
            await session.call_tool("memory_recall", {"query": "deploy key rotation"})
        )
        bad = await session.call_tool("memory_recall", {"query": "x", "limit": "many"})
        sent = result_json(
            await session.call_tool(
                "message",
                {
                    "action": "send",
                    "from_instance": "prime",
                    "to_instance": "crash",
                    "content": "secret body text",
                    "subject": "handoff",
                },
            )
        )
        got = result_json(
            await session.call_tool("message", {"action": "get", "instance_id": "crash"})
        )
        broadcast = result_json(
            await session.call_tool(
                "message",
                {
                    "action": "send",
                    "from_instance": "prime",
                    "to_instance": "all",
                    "content": "everyone",
                },
            )
        )
        # the wakes arrive while the session is still open (not only at shutdown)
        wakes = [await anyio.to_thread.run_sync(gateway.requests.get, True, 10) for _ in range(3)]
        return {
            "tools": by_name,
            "set": set_res,
            "recall": recall,
            "bad": bad,
            "sent": sent,
            "got": got,
            "broadcast": broadcast,
            "wakes": wakes,
        }

    out = anyio.run(session_run, data, body)
    tools = out["tools"]
    assert set(tools) == {t.name for t in TOOLS}  # db_manager enabled: every tool is served
    assert "message" in tools and "palace_message" not in tools
    assert tools["memory_recall"].input_schema["properties"]["database"]["type"] == "string"
    assert tools["memory_recall"].input_schema["required"] == ["query"]
    assert out["recall"]["count"] >= 1
    assert out["set"]["id"] in [m["id"] for m in out["recall"]["memories"]]
    assert out["bad"].is_error and out["bad"].content[0].text.startswith("INVALID_PARAMS")
    assert "limit" in out["bad"].content[0].text
    assert out["got"]["count"] == 1 and out["got"]["messages"][0]["content"] == "secret body text"

    direct, *woken = out["wakes"]
    if f"#{out['sent']['id']} " not in direct["body"]["text"]:  # threads may finish in any order
        direct, woken = next(
            (w, [x for x in out["wakes"] if x is not w])
            for w in out["wakes"]
            if f"#{out['sent']['id']} " in w["body"]["text"]
        )
    assert direct["path"] == "/hooks/wake" and direct["auth"] == f"Bearer {TOKEN}"
    assert direct["type"] == "application/json"
    b = direct["body"]
    assert set(b) == {"text", "mode", "agentId", "sessionKey"}
    assert b["mode"] == "now" and b["agentId"] == "main" and b["sessionKey"] == "hook:palace"
    assert f"#{out['sent']['id']}" in b["text"] and "prime" in b["text"]
    assert (
        "Memory Palace message tool (palace_message in the OpenClaw plugin): action=get, "
        "instance_id=crash." in b["text"]
    )
    assert "secret body text" not in b["text"]

    # the broadcast wakes crash and sandy, not the sender prime
    texts = sorted(w["body"]["text"] for w in woken)
    assert all(f"#{out['broadcast']['id']}" in t for t in texts)
    assert any("for crash" in t for t in texts) and any("for sandy" in t for t in texts)
    assert all(w["path"] == "/hooks/wake" for w in woken)
    with pytest.raises(queue.Empty):
        gateway.requests.get(timeout=0.5)  # nothing for prime


def test_wake_failure_never_blocks_or_raises(caplog):
    notifier = WakeNotifier(
        {
            "crash": {"gateway": "http://127.0.0.1:1", "token": "t"},
            "bad": {"gateway": "ftp://x", "token": "t"},
        },
        timeout=0.5,
    )
    assert list(notifier.routes) == ["crash"]
    threads = notifier.notify_sent("prime", "crash", 5)
    for t in threads:
        t.join(timeout=5)
    assert any("wake of crash" in r.getMessage() for r in caplog.records)
    assert notifier.notify_sent("prime", "nobody", 6) == []


def test_route_url_uses_the_hooks_path():
    notifier = WakeNotifier(
        {
            "a": {"gateway": "http://gw:18789", "token": "t"},
            "b": {"gateway": "http://gw:18789/hooks/", "token": "t"},
            "c": {"gateway": "https://proxy.example/openclaw/palace-hooks", "token": "t"},
        }
    )
    assert notifier.routes["a"].url == "http://gw:18789/hooks/wake"
    assert notifier.routes["b"].url == "http://gw:18789/hooks/wake"
    assert notifier.routes["c"].url == "https://proxy.example/openclaw/palace-hooks/wake"


def test_wake_http_failure_logs_the_fix(caplog):
    gw = Gateway()
    try:
        notifier = WakeNotifier({"crash": {"gateway": gw.url, "token": "wrong"}}, timeout=5)
        for t in notifier.notify_sent("prime", "crash", 7):
            t.join(timeout=10)
        assert gw.requests.get(timeout=5)["auth"] == "Bearer wrong"
    finally:
        gw.close()
    lines = [r.getMessage() for r in caplog.records if "wake of crash" in r.getMessage()]
    assert lines and "HTTP 401" in lines[0] and "hooks.token" in lines[0]


def test_mcp_help():
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "memory_palace.mcp_server", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "stdio" in out.stdout


@pytest.mark.anyio
@pytest.mark.postgres
async def test_more_concurrent_calls_than_connections_queue(make_palace, pg_url) -> None:
    """40 concurrent calls on a pool of 1 + 1 connections that gives up after 0.2 s: the
    server runs at most 2 at once and queues the rest, so none times out in the pool."""
    palace = make_palace(pg_url, postgres={"pool_size": 1, "max_overflow": 1, "pool_timeout": 0.2})
    assert palace.max_concurrent_calls == 2
    async with Client(build_server(palace), mode="legacy") as client:
        stored = result_json(await client.call_tool("memory_set", {"content": "queue me"}))
        results: list[Any] = [None] * 40

        async def one(i: int) -> None:
            name = "memory_set" if i % 4 == 0 else "memory_recall"
            args = {"content": f"note {i}"} if i % 4 == 0 else {"query": "queue me"}
            results[i] = await client.call_tool(name, args)

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
    errors = [r.content[0].text for r in results if r.is_error]
    assert errors == []
    recalls = [result_json(r) for i, r in enumerate(results) if i % 4]
    assert all(stored["id"] in [m["id"] for m in r["memories"]] for r in recalls)
