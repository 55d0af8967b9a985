"""memory-palace-mcp: every tool of the registry over MCP stdio (official `mcp` SDK 2.x,
low-level server, raw JSON schemas). Blocking work runs in worker threads; logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import anyio
import mcp_types as types
import orjson
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from . import __version__
from .config import load_settings
from .errors import MemoryPalaceError, to_wire
from .palace import Palace
from .services import delivery, messages
from .wake import WakeNotifier

log = logging.getLogger("memory_palace.mcp")

SERVER_NAME = "memory-palace"


def _text(result: dict[str, Any]) -> str:
    return orjson.dumps(result, default=str).decode()


def _wake(palace: Palace, notifier: WakeNotifier, sent: dict[str, Any], database: Any) -> None:
    """POST the wakes of a sent message: its recipient, or everyone for a broadcast, and a
    channel's subscribers; a wake the gateway accepted is recorded as delivered."""
    if not notifier.routes:
        return
    try:
        db = palace.database(database if isinstance(database, str) else None)
        subscribers = [
            s
            for s in (messages.subscribers(db, sent["channel"]) if sent.get("channel") else [])
            if s != sent["from_instance"]
        ]
    except MemoryPalaceError as exc:
        log.warning("wake of message %s: %s", sent["id"], exc.message)
        return
    payload = {"message_id": int(sent["id"]), "ack_due_at": sent.get("ack_due_at")}

    def accepted(instance: str) -> None:
        try:
            delivery.claim(db, [(payload, [instance])], "http-wake", lambda *_: None)
        except MemoryPalaceError as exc:
            log.warning("recording the wake of %s: %s", instance, exc.message)

    notifier.notify_sent(
        str(sent["from_instance"]),
        str(sent["to_instance"]),
        int(sent["id"]),
        subscribers,
        accepted,
    )


def build_server(palace: Palace, notifier: WakeNotifier | None = None) -> Server:
    """An MCP server over `palace`. The tool list and schemas come from the registry."""
    notifier = notifier or WakeNotifier(palace.settings.instance_routes)
    tools = [
        types.Tool(name=t.name, description=t.description, input_schema=t.schema())
        for t in palace.registry.for_surface("mcp")
    ]

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        args = dict(params.arguments or {})
        try:
            result = await anyio.to_thread.run_sync(palace.call, params.name, args)
        except Exception as exc:  # mapped to an error result; a tool bug must not kill us
            err = to_wire(exc, params.name)
            return types.CallToolResult(
                content=[types.TextContent(text=f"{err['code']}: {err['message']}")], is_error=True
            )
        tool = palace.registry.get(params.name)
        if "sends" in tool.effects and result.get("id"):
            await anyio.to_thread.run_sync(_wake, palace, notifier, result, args.get("database"))
        return types.CallToolResult(content=[types.TextContent(text=_text(result))])

    return Server(
        SERVER_NAME,
        version=__version__,
        instructions="Memory Palace: shared persistent memory and messaging for agents.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def serve(palace: Palace) -> None:
    notifier = WakeNotifier(palace.settings.instance_routes)
    server = build_server(palace, notifier)
    try:
        await anyio.to_thread.run_sync(palace.database)  # create/migrate the default early
    except MemoryPalaceError as exc:
        log.error("default database not ready: %s", exc.message)  # tools report it per call
    try:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
    finally:
        notifier.drain()  # wakes started just before the client hung up still go out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="memory-palace-mcp",
        description="Serve the Memory Palace tools over MCP (stdio). Configuration comes from "
        "config.json in the data dir and MEMORY_PALACE_* variables.",
    )
    ap.add_argument(
        "--data-dir",
        help="data dir holding config.json (default: $MEMORY_PALACE_DATA_DIR or ~/.memory-palace)",
    )
    ap.add_argument("--log-level", default="INFO", help="stderr log level (default INFO)")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        palace = Palace(load_settings(args.data_dir))
    except MemoryPalaceError as exc:
        sys.stderr.write(f"memory-palace-mcp: {exc.code}: {exc.message}\n")
        return 2
    try:
        anyio.run(serve, palace)
    except KeyboardInterrupt:
        pass
    finally:
        palace.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
