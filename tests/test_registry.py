"""The registry is the single declaration of a tool: schemas derive from the service function,
and a tool added to `tools.TOOLS` appears on every surface (Palace, bridge, MCP, CLI, and the
OpenClaw plugin's generated schemas and manifest) with no other edit."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import orjson
import pytest
from memory_palace import InvalidParams, cli, tools
from memory_palace.bridge import Bridge
from memory_palace.db.engine import Database
from memory_palace.mcp_server import build_server
from memory_palace.params import P

ROOT = Path(__file__).resolve().parents[1]


def echo(
    db: Database,
    *,
    text: Annotated[str, P("Text to echo back.", min_length=1)],
    times: Annotated[int, P("How often.", minimum=1, maximum=3)] = 1,
    mode: Annotated[Literal["plain", "loud"], P("How to say it.")] = "plain",
) -> dict[str, Any]:
    """Echo a text back (a throwaway tool for this test)."""
    said = text.upper() if mode == "loud" else text
    return {"echo": " ".join([said] * times), "backend": db.kind}


ECHO = tools.Tool.of(echo, "test_echo", identity=(), direct=True)


def test_schema_derives_from_the_signature() -> None:
    assert ECHO.description == "Echo a text back (a throwaway tool for this test)."
    assert ECHO.deps == ("db",) and ECHO.required == ("text",)
    assert ECHO.params == {
        "text": {"type": "string", "description": "Text to echo back.", "minLength": 1},
        "times": {
            "type": "integer",
            "description": "How often.",
            "minimum": 1,
            "maximum": 3,
            "default": 1,
        },
        "mode": {
            "type": "string",
            "enum": ["plain", "loud"],
            "description": "How to say it.",
            "default": "plain",
        },
        "database": tools.DATABASE_PARAM,
    }


def test_a_function_that_is_not_a_tool_is_refused() -> None:
    def no_doc(db: Database, *, x: Annotated[int, P("x")]) -> dict[str, Any]:
        return {}

    def bad_dep(palace: Any, *, x: Annotated[int, P("x")]) -> dict[str, Any]:
        """Reaches up into the palace."""
        return {}

    with pytest.raises(TypeError, match="docstring"):
        tools.Tool.of(no_doc, "no_doc")
    with pytest.raises(TypeError, match="not a dependency"):
        tools.Tool.of(bad_dep, "bad_dep")


def test_validation_names_the_parameter() -> None:
    with pytest.raises(InvalidParams, match="'times' must be <= 3"):
        tools.validate(ECHO, {"text": "x", "times": 4})
    with pytest.raises(InvalidParams, match="'mode' must be one of plain, loud"):
        tools.validate(ECHO, {"text": "x", "mode": "whisper"})
    with pytest.raises(InvalidParams, match="'text' must be a string, got int"):
        tools.validate(ECHO, {"text": 5})
    unlink = tools.Registry(tools.TOOLS).get("memory_unlink")  # ids: 64-bit whatever declared
    with pytest.raises(InvalidParams, match="must be <= 9223372036854775807"):
        tools.validate(unlink, {"source_id": 2**64, "target_id": 1})
    assert tools.validate(ECHO, {"text": "x"}) == {
        "text": "x",
        "times": 1,
        "mode": "plain",
        "database": None,
    }


@pytest.fixture
def with_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Add the tool where the README says to: the registry tuple."""
    monkeypatch.setattr(tools, "TOOLS", (*tools.TOOLS, ECHO))


def load_generator() -> Any:
    path = ROOT / "scripts" / "gen-tool-schemas"
    loader = importlib.machinery.SourceFileLoader("gen_tool_schemas", str(path))
    spec = importlib.util.spec_from_loader("gen_tool_schemas", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_a_new_tool_appears_on_every_surface(
    with_echo, make_palace, sqlite_url, tmp_path, capsys
) -> None:
    palace = make_palace(sqlite_url)
    # Palace
    assert palace.call("test_echo", {"text": "hi", "times": 2}) == {
        "echo": "hi hi",
        "backend": "sqlite",
    }
    # bridge, in process
    out = io.BytesIO()
    bridge = Bridge(palace, out)
    assert "test_echo" in bridge.start()["tools"]
    bridge.handle_line(
        b'{"id": 1, "method": "test_echo", "params": {"text": "yo", "mode": "loud"}}'
    )
    assert bridge.shutdown()  # waits for the request in flight
    replies = [orjson.loads(x) for x in out.getvalue().splitlines() if x.startswith(b'{"id"')]
    assert replies == [{"id": 1, "result": {"echo": "YO", "backend": "sqlite"}}]

    # MCP, through the official SDK's in-process client
    async def over_mcp() -> tuple[list[str], str]:
        from mcp import Client

        async with Client(build_server(palace)) as client:
            listed = [t.name for t in (await client.list_tools()).tools]
            result = await client.call_tool("test_echo", {"text": "mcp"})
            return listed, result.content[0].text

    listed, text = anyio.run(over_mcp)
    assert "test_echo" in listed and orjson.loads(text)["echo"] == "mcp"

    # CLI: listed, and callable through `call`
    data_dir = str(palace.settings.data_dir)
    assert cli.main(["tools", "--data-dir", data_dir]) == 0
    assert "test_echo" in capsys.readouterr().out
    assert (
        cli.main(["call", "test_echo", '{"text": "cli"}', "-P", "times=2", "--data-dir", data_dir])
        == 0
    )
    assert orjson.loads(capsys.readouterr().out)["echo"] == "cli cli"

    # OpenClaw plugin: generated TypeBox schemas and the manifest's contracts.tools
    gen = load_generator()
    registry = tools.export(tools.TOOLS)
    ts = gen.render(registry)
    assert 'name: "test_echo"' in ts and '"mode": Type.Optional(Type.String(' in ts
    assert "test_echo" in gen.tool_names(registry)
