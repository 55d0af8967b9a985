"""Palace-level behaviour: routing, tool errors, and an embedder that is down."""

from __future__ import annotations

import socket

import pytest
from memory_palace import InvalidParams, Palace, load_settings


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_ollama_down_still_stores_and_recalls_by_keyword(tmp_path, sqlite_url: str) -> None:
    import orjson

    (tmp_path / "config.json").write_bytes(
        orjson.dumps(
            {
                "database": {"url": sqlite_url},
                "embedder": "ollama",
                "ollama_url": f"http://127.0.0.1:{closed_port()}",
            }
        )
    )
    palace = Palace(load_settings(tmp_path, env={}))
    r = palace.call("memory_set", {"content": "the VPN password rotates every Friday"})
    assert r["embedded"] is False and "ollama serve" in r["warning"]
    out = palace.call("memory_recall", {"query": "VPN password"})
    assert [m["id"] for m in out["memories"]] == [r["id"]]
    assert out["memories"][0]["found_by"] == "keyword" and "warning" in out


def test_unknown_tool_and_disabled_extension(make_palace, sqlite_url: str) -> None:
    palace = make_palace(sqlite_url)
    with pytest.raises(InvalidParams, match="unknown tool 'nope'"):
        palace.call("nope", {})
    with pytest.raises(InvalidParams, match=r"mcp_server\.extensions\.db_manager"):
        palace.call("memory_list_databases", {})


@pytest.mark.parametrize(
    "params,needle",
    [
        ({"content": 5}, "parameter 'content' must be a string"),
        ({"content": "x", "project": [1]}, "parameter 'project' must be a string or a list"),
        ({"content": "x", "bogus": 1}, "unknown parameter 'bogus'"),
        ({}, "missing required parameter 'content'"),
        ({"content": "x", "foundational": "yes"}, "parameter 'foundational' must be a boolean"),
    ],
)
def test_wrong_params_name_the_param(make_palace, sqlite_url: str, params, needle) -> None:
    palace = make_palace(sqlite_url)
    with pytest.raises(InvalidParams, match=needle.replace("(", r"\(")):
        palace.call("memory_set", params)
    assert palace.call("memory_stats", {})["total_memories"] == 0
