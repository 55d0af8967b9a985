"""Identity and scopes end to end: tokens, roles, private memories and messages of one instance
stay invisible and unchangeable to another, on both backends and through the surfaces (bridge
`caller`, MCP streamable HTTP with bearer tokens, CLI)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from memory_palace import Palace
from memory_palace import palace as palace_module
from memory_palace.errors import MemoryPalaceError
from memory_palace.services import access
from memory_palace.services.access import Caller

from tests.fixtures.bridge import write_config

SECRET = "zebraquartz private plan"
ADMIN = Caller("ops", "admin", verified=False)


def token(p: Palace, instance: str, role: str = "writer", **kw: Any) -> str:
    return access.create_token(p.database(), ADMIN, instance, role, **kw)["token"]


def code_of(fn: Callable[[], Any]) -> str:
    with pytest.raises(MemoryPalaceError) as info:
        fn()
    return info.value.code


@pytest.fixture
def two(palace: Palace) -> tuple[Palace, Caller, Caller, dict[str, int]]:
    """alpha holds a private memory and a shared one; beta a shared one."""
    alpha = palace.authenticate(token(palace, "alpha"))
    beta = palace.authenticate(token(palace, "beta"))
    ids = {
        "private": palace.call(
            "memory_set", {"content": SECRET, "visibility": "private"}, caller=alpha
        )["id"],
        "shared": palace.call(
            "memory_set", {"content": "the deploy window is friday"}, caller=alpha
        )["id"],
        "beta": palace.call("memory_set", {"content": "beta keeps notes"}, caller=beta)["id"],
    }
    return palace, alpha, beta, ids


def test_tokens_verify_and_bind_the_instance(palace: Palace) -> None:
    secret = token(palace, "alpha")
    me = palace.authenticate(secret)
    assert (me.instance, me.role, me.verified) == ("alpha", "writer", True)
    out = palace.call("memory_set", {"content": "written by a token"}, caller=me)
    got = palace.call("memory_get", {"memory_ids": [out["id"]]}, caller=me)["memories"][0]
    assert got["instance_id"] == "alpha"
    # a token cannot write as another instance
    assert (
        code_of(
            lambda: palace.call("memory_set", {"content": "x", "instance_id": "beta"}, caller=me)
        )
        == "PERMISSION_DENIED"
    )
    assert code_of(lambda: palace.authenticate("mpt_aaaaaaaaaaaa_" + "b" * 40)) == (
        "PERMISSION_DENIED"
    )
    assert code_of(lambda: palace.authenticate(secret + "x")) == "PERMISSION_DENIED"


def test_roles_are_checked_per_tool(palace: Palace) -> None:
    reader = palace.authenticate(token(palace, "rita", role="reader"))
    writer = palace.authenticate(token(palace, "walt"))
    assert code_of(lambda: palace.call("memory_set", {"content": "x"}, caller=reader)) == (
        "PERMISSION_DENIED"
    )
    assert palace.call("memory_recall", {"query": "x"}, caller=reader)["memories"] == []
    assert code_of(lambda: palace.call("memory_reembed", {}, caller=writer)) == "PERMISSION_DENIED"
    assert (
        code_of(
            lambda: palace.call(
                "memory_scope",
                {"action": "add", "name": "ops", "members": ["walt"]},
                caller=writer,
            )
        )
        == "PERMISSION_DENIED"
    )
    admin = palace.authenticate(token(palace, "root", role="admin"))
    palace.call("memory_scope", {"action": "add", "name": "ops", "members": ["walt"]}, caller=admin)
    out = palace.call("memory_set", {"content": "ops rota", "visibility": "ops"}, caller=writer)
    assert out["visibility"] == "ops"


def test_a_revoked_token_stops_working(palace: Palace, monkeypatch: pytest.MonkeyPatch) -> None:
    made = access.create_token(palace.database(), ADMIN, "alpha", "writer")
    assert palace.authenticate(made["token"]).instance == "alpha"
    listed = access.list_tokens(palace.database(), ADMIN)
    assert [t["token_id"] for t in listed] == [made["token_id"]]
    assert all("token" not in t and "secret" not in str(t).lower() for t in listed)
    access.revoke_token(palace.database(), ADMIN, made["token_id"])
    assert palace.authenticate(made["token"]).instance == "alpha"  # cached until the recheck
    monkeypatch.setattr(palace_module, "TOKEN_RECHECK_S", 0)
    assert code_of(lambda: palace.authenticate(made["token"])) == "PERMISSION_DENIED"


def test_nothing_of_a_private_memory_reaches_another_instance(two: Any) -> None:
    palace, alpha, beta, ids = two
    hidden = ids["private"]

    def call(tool: str, params: dict[str, Any]) -> dict[str, Any]:
        return palace.call(tool, params, caller=beta)

    for search in ("hybrid", "keyword", "vector"):
        found = call("memory_recall", {"query": "zebraquartz private plan", "search": search})
        assert hidden not in [m["id"] for m in found["memories"]], search
    assert SECRET not in orjson.dumps(call("memory_recall", {"query": "zebraquartz"})).decode()
    assert call("memory_get", {"memory_ids": [hidden]})["memories"] == []
    assert hidden not in [m["id"] for m in call("memory_recent", {"limit": 50})["memories"]]
    whole = orjson.dumps(
        [call("memory_stats", {}), call("memory_audit", {}), call("memory_recent", {})]
    ).decode()
    assert "zebraquartz" not in whole
    assert call("memory_stats", {})["total_memories"] == 2  # alpha's shared one and beta's
    # nothing can change it either, and the refusal is clear
    tried = call("memory_archive", {"memory_ids": [hidden], "dry_run": False})
    assert tried["archived_count"] == 0 and tried["not_found_or_archived"] == [hidden]
    for tool, params in (
        (
            "memory_link",
            {"source_id": ids["beta"], "target_id": hidden, "relation_type": "refines"},
        ),
        ("memory_set", {"content": "replacement", "supersedes_id": hidden}),
    ):
        refused = code_of(lambda t=tool, a=params: call(t, a))
        assert refused in ("NOT_FOUND", "PERMISSION_DENIED"), tool
    mine = palace.call("memory_get", {"memory_ids": [hidden]}, caller=alpha)["memories"]
    assert [m["content"] for m in mine] == [SECRET]
    assert not mine[0].get("is_archived")
    # the shared memory is still shared
    found = call("memory_recall", {"query": "deploy window"})["memories"]
    assert ids["shared"] in [m["id"] for m in found]


def test_another_instances_inbox_is_closed(two: Any) -> None:
    palace, alpha, beta, _ = two
    sent = palace.call(
        "message",
        {"action": "send", "to_instance": "alpha", "content": "for alpha only", "subject": "s1"},
        caller=beta,
    )
    assert sent["from_instance"] == "beta"
    for params in (
        {"action": "get", "instance_id": "alpha"},
        {"action": "mark_read", "instance_id": "alpha", "message_id": sent["id"]},
        {"action": "send", "from_instance": "alpha", "to_instance": "beta", "content": "forged"},
    ):
        refused = code_of(lambda a=params: palace.call("message", a, caller=beta))
        assert refused == "PERMISSION_DENIED", params
    inbox = palace.call("message", {"action": "get"}, caller=alpha)["messages"]
    assert [m["content"] for m in inbox] == ["for alpha only"]
    assert palace.call("message", {"action": "get"}, caller=beta)["messages"] == []


def test_the_gateway_caller_binds_each_request(
    make_palace: Callable[..., Palace], sqlite_url: str, memory_bridge: Callable
) -> None:
    palace = make_palace(sqlite_url)
    bridge = memory_bridge(palace)
    bridge.feed(
        orjson.dumps(
            {
                "id": 1,
                "method": "memory_set",
                "params": {"content": SECRET, "visibility": "private"},
                "caller": "alpha",
            }
        )
        + b"\n"
    )
    hidden = bridge.reply(1)["result"]["id"]

    def as_beta(rid: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        line = {"id": rid, "method": method, "params": params, "caller": "beta"}
        bridge.feed(orjson.dumps(line) + b"\n")
        return bridge.reply(rid)

    assert as_beta(2, "memory_get", {"memory_ids": [hidden]})["result"]["memories"] == []
    refused = as_beta(3, "memory_set", {"content": "x", "instance_id": "alpha"})
    assert refused["error"]["code"] == "PERMISSION_DENIED"
    assert "beta" in refused["error"]["message"]
    assert as_beta(4, "_subscribe", {"instance": "alpha"})["error"]["code"] == "PERMISSION_DENIED"
    assert as_beta(5, "_subscribe", {"instance": "beta"}).get("result") is not None
    bridge.feed(b'{"id": 6, "method": "memory_stats", "params": {}, "caller": 7}\n')
    assert bridge.reply(6)["error"]["code"] == "INVALID_REQUEST"


# -- MCP over streamable HTTP, with the official SDK client ---------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[str, Path]]:
    data = tmp_path / "data"
    write_config(data, sqlite_url)
    port = _free_port()
    env = {**os.environ, "MEMORY_PALACE_DATA_DIR": str(data)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "memory_palace.mcp_server", "--http", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}/mcp", data
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
        assert out == b""  # nothing but protocol, and HTTP has none on stdout
        assert b"mpt_" not in err  # tokens are never logged


def _cli_token(data: Path, instance: str, role: str = "writer") -> str:
    out = subprocess.run(
        [
            *(sys.executable, "-m", "memory_palace.cli", "token", "create", instance),
            *("--role", role, "--data-dir", str(data)),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.count("\n") == 1 and out.stdout.startswith("mpt_")
    return out.stdout.strip()


async def _call_all(session: Any, calls: list[tuple[str, dict]]) -> list[Any]:
    """Each call's JSON result, or its error text ("CODE: message")."""
    await session.initialize()
    results = []
    for name, args in calls:
        res = await session.call_tool(name, args)
        text = res.content[0].text
        results.append(text if res.is_error else orjson.loads(text))
    return results


async def _mcp_calls(url: str, bearer: str | None, calls: list[tuple[str, dict]]) -> list[Any]:
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        return await _call_all(session, calls)


def test_mcp_http_runs_each_call_as_its_bearer_token(http_server: tuple[str, Path]) -> None:
    url, data = http_server
    alpha, beta = _cli_token(data, "alpha"), _cli_token(data, "beta")
    (stored,) = anyio.run(
        _mcp_calls, url, alpha, [("memory_set", {"content": SECRET, "visibility": "private"})]
    )
    seen, get, forged = anyio.run(
        _mcp_calls,
        url,
        beta,
        [
            ("memory_recall", {"query": "zebraquartz"}),
            ("memory_get", {"memory_ids": [stored["id"]]}),
            ("memory_set", {"content": "x", "instance_id": "alpha"}),
        ],
    )
    assert stored["id"] not in [m["id"] for m in seen["memories"]]
    assert get["memories"] == []
    assert forged.startswith("PERMISSION_DENIED")
    (mine,) = anyio.run(_mcp_calls, url, alpha, [("memory_get", {"memory_ids": [stored["id"]]})])
    assert [(m["content"], m["instance_id"]) for m in mine["memories"]] == [(SECRET, "alpha")]


@pytest.mark.parametrize("bearer", [None, "mpt_aaaaaaaaaaaa_" + "b" * 40, "not-a-token"])
def test_mcp_http_refuses_a_missing_or_unknown_token(
    http_server: tuple[str, Path], bearer: str | None
) -> None:
    import httpx2

    url, _ = http_server
    headers = {"Accept": "application/json, text/event-stream"}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    reply = httpx2.post(url, json=body, headers=headers, timeout=10)
    assert reply.status_code == 401
    assert "WWW-Authenticate" in reply.headers


def test_export_and_import_need_an_admin(
    make_palace: Callable[..., Palace], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    owner = make_palace(url)
    writer = token(owner, "alpha")
    owner.call("memory_set", {"content": SECRET, "visibility": "private"})
    from memory_palace.transfer import export_jsonl, import_jsonl

    as_writer = make_palace(url, env={"MEMORY_PALACE_TOKEN": writer})
    out = tmp_path / "dump.jsonl"
    assert code_of(lambda: export_jsonl(as_writer, None, out)) == "PERMISSION_DENIED"
    assert not out.exists()
    as_admin = make_palace(url, env={"MEMORY_PALACE_TOKEN": token(owner, "ops", role="admin")})
    export_jsonl(as_admin, None, out)
    dumped = out.read_text()
    assert SECRET in dumped and "mpt_" not in dumped and "secret_hash" not in dumped
    assert code_of(lambda: import_jsonl(as_writer, None, out, force=True)) == "PERMISSION_DENIED"


async def _stdio_calls(data: Path, bearer: str, calls: list[tuple[str, dict]]) -> list[Any]:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    env = {**os.environ, "MEMORY_PALACE_DATA_DIR": str(data), "MEMORY_PALACE_TOKEN": bearer}
    server = StdioServerParameters(
        command=sys.executable, args=["-m", "memory_palace.mcp_server"], env=env
    )
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        return await _call_all(session, calls)


def test_mcp_stdio_acts_as_its_token(tmp_path: Path, db_url: str) -> None:
    data = tmp_path / "data"
    write_config(data, db_url)
    alpha, beta = _cli_token(data, "alpha"), _cli_token(data, "beta")
    stored, sent = anyio.run(
        _stdio_calls,
        data,
        alpha,
        [
            ("memory_set", {"content": SECRET, "visibility": "private"}),
            ("message", {"action": "send", "to_instance": "gamma", "content": "psst"}),
        ],
    )
    assert sent["from_instance"] == "alpha"
    seen, stats, inbox, forged, retract = anyio.run(
        _stdio_calls,
        data,
        beta,
        [
            ("memory_recall", {"query": "zebraquartz private plan"}),
            ("memory_stats", {}),
            ("message", {"action": "get", "instance_id": "gamma"}),
            ("memory_set", {"content": "x", "instance_id": "alpha"}),
            ("message", {"action": "retract", "message_id": sent["id"]}),
        ],
    )
    assert stored["id"] not in [m["id"] for m in seen["memories"]]
    assert stats["total_memories"] == 0
    assert inbox.startswith("PERMISSION_DENIED") and "beta" in inbox
    assert forged.startswith("PERMISSION_DENIED")
    assert retract.startswith(("PERMISSION_DENIED", "NOT_FOUND"))
