"""memory-palace-mcp: every tool of the registry over MCP stdio (official `mcp` SDK 2.x,
low-level server, raw JSON schemas). Blocking work runs in worker threads; logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
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
from .wake import WakeNotifier

log = logging.getLogger("memory_palace.mcp")

SERVER_NAME = "memory-palace"
TTY_HINT = (
    "memory-palace-mcp speaks MCP (JSON-RPC) on stdin/stdout and waits for an MCP client; "
    "register it with your client instead of typing here. Ctrl-C exits.\n"
)


def _text(result: dict[str, Any]) -> str:
    return orjson.dumps(result, default=str).decode()


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
            notifier.notify_sent(
                str(result["from_instance"]), str(result["to_instance"]), int(result["id"])
            )
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
    ap.add_argument("--version", action="version", version=f"memory-palace-mcp {__version__}")
    args = ap.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        # The stdin reader thread blocks in read(): a KeyboardInterrupt would wait for a line
        # that never comes. Ctrl-C ends the process at once, quietly, with the shell's 130.
        signal.signal(signal.SIGINT, _interrupted)
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
    if sys.stdin.isatty():
        sys.stderr.write(TTY_HINT)
        sys.stderr.flush()
    try:
        anyio.run(serve, palace)
    finally:
        palace.close()
    return 0


def _interrupted(_signum: int, _frame: Any) -> None:
    sys.stderr.flush()
    os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
