"""memory-palace-mcp: every tool of the registry over MCP (official `mcp` SDK 2.x, low-level
server, raw JSON schemas), on stdio or streamable HTTP. Blocking work runs in worker threads, at
most as many at once as the pool has connections (`Palace.max_concurrent_calls`): more calls wait
in line for a thread instead of timing out in the pool; logs go to stderr.

Identity. On stdio the server acts as this process's identity (its MEMORY_PALACE_TOKEN, else the
configured instance, unverified). Over HTTP every request must carry `Authorization: Bearer
<token>` (from `memory-palace token create`) and each call runs as that token's instance and role;
the server itself needs no token. Serve HTTP on loopback and put a TLS reverse proxy in front of it
for remote agents (docs/postgres.md, "Security model").
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
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_REQUEST, PARSE_ERROR
from pydantic import ValidationError

from . import __version__
from .bridge import ID_RE
from .config import load_settings
from .errors import MemoryPalaceError, to_wire
from .palace import Palace
from .services import delivery, messages
from .services.access import Caller
from .wake import WakeNotifier

log = logging.getLogger("memory_palace.mcp")

SERVER_NAME = "memory-palace"
UNREADABLE = "memory_palace/unreadable_line"  # what guard_line makes of a line the SDK drops
TTY_HINT = (
    "memory-palace-mcp speaks MCP (JSON-RPC) on stdin/stdout and waits for an MCP client; "
    "register it with your client instead of typing here. Ctrl-C exits.\n"
)


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
            delivery.claim(db, [(payload, [instance])], "http-wake", delivery.silent)
        except MemoryPalaceError as exc:
            log.warning("recording the wake of %s: %s", instance, exc.message)

    notifier.notify_sent(
        str(sent["from_instance"]),
        str(sent["to_instance"]),
        int(sent["id"]),
        subscribers,
        accepted,
    )


class TokenVerifier:
    """Bearer tokens of the HTTP transport, checked by the Palace (hashed, cached, rechecked)."""

    def __init__(self, palace: Palace) -> None:
        self.palace = palace

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            caller = await anyio.to_thread.run_sync(self.palace.authenticate, token)
        except MemoryPalaceError:  # unknown, revoked or malformed: 401, the secret never logged
            return None
        return AccessToken(token=token, client_id=caller.instance or "", scopes=[caller.role])


def _request_caller(palace: Palace, ctx: Any) -> Caller | None:
    """The caller an HTTP request authenticated as (its bearer token); None on stdio."""
    request = getattr(ctx, "request", None)
    user = request.scope.get("user") if request is not None else None
    access = getattr(user, "access_token", None)
    return palace.authenticate(access.token) if access is not None else None


def build_server(palace: Palace, notifier: WakeNotifier | None = None) -> Server:
    """An MCP server over `palace`. The tool list and schemas come from the registry."""
    notifier = notifier or WakeNotifier(palace.settings.instance_routes)
    limiter = anyio.CapacityLimiter(palace.max_concurrent_calls)
    tools = [
        types.Tool(name=t.name, description=t.description, input_schema=t.schema())
        for t in palace.registry.for_surface("mcp")
    ]

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        args = dict(params.arguments or {})

        def run() -> dict[str, Any]:
            return palace.call(params.name, args, caller=_request_caller(palace, ctx))

        try:
            result = await anyio.to_thread.run_sync(run, limiter=limiter)
        except Exception as exc:  # mapped to an error result; a tool bug must not kill us
            err = to_wire(exc, params.name)
            return types.CallToolResult(
                content=[types.TextContent(text=f"{err['code']}: {err['message']}")], is_error=True
            )
        tool = palace.registry.get(params.name)
        if "sends" in tool.effects and result.get("id"):
            await anyio.to_thread.run_sync(
                _wake, palace, notifier, result, args.get("database"), limiter=limiter
            )
        return types.CallToolResult(content=[types.TextContent(text=_text(result))])

    return Server(
        SERVER_NAME,
        version=__version__,
        instructions="Memory Palace: shared persistent memory and messaging for agents.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def _prepare(palace: Palace) -> None:
    try:
        await anyio.to_thread.run_sync(palace.database)  # create/migrate the default early
    except MemoryPalaceError as exc:
        log.error("default database not ready: %s", exc.message)  # tools report it per call


class _UnreadableParams(types.RequestParams):
    code: int
    message: str


async def _unreadable(ctx: Any, params: _UnreadableParams) -> Any:
    raise MCPError(params.code, params.message)


def guard_line(raw: bytes) -> str | None:
    """A stdin line as the SDK should see it. The SDK drops a line that is not a JSON-RPC 2.0
    message without a reply, so a client without a timeout would wait forever: such a line
    becomes a request for UNREADABLE on the id it carries (recovered even from broken JSON),
    answered with PARSE_ERROR or INVALID_REQUEST. A line without an id is logged and dropped."""
    text: str | None = None
    try:
        text = raw.decode("utf-8")
        message = orjson.loads(raw)
    except (UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        code, reason = PARSE_ERROR, f"Parse error: {exc}"
        rid = _recover_id(raw)
    else:
        try:
            types.jsonrpc_message_adapter.validate_json(text, by_name=False)
            return text
        except ValidationError as exc:
            code = INVALID_REQUEST
            if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
                detail = 'an object with "jsonrpc": "2.0" is expected'
            else:
                first = exc.errors()[0]
                detail = f"{first['msg']} at {'.'.join(map(str, first['loc'])) or 'the top'}"
            reason = f"Invalid Request: not a JSON-RPC 2.0 message ({detail})"
        rid = message.get("id") if isinstance(message, dict) else None
    if not isinstance(rid, str | int) or isinstance(rid, bool):
        log.warning("dropped an unreadable stdin line without an id: %s", reason[:200])
        return None
    request = {"code": code, "message": reason[:500]}
    return orjson.dumps(
        {"jsonrpc": "2.0", "id": rid, "method": UNREADABLE, "params": request}
    ).decode()


def _recover_id(raw: bytes) -> Any:
    match = ID_RE.search(raw)
    try:
        return orjson.loads(match.group(1)) if match else None
    except orjson.JSONDecodeError:  # the id itself is not valid UTF-8
        return None


class _GuardedStdin:
    """The lines of a binary file, through guard_line, as the async iterator the SDK reads."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def __aiter__(self) -> _GuardedStdin:
        return self

    async def __anext__(self) -> str:
        while True:
            raw = await self.file.readline()
            if not raw:
                raise StopAsyncIteration
            if raw.strip() and (line := guard_line(raw)) is not None:
                return line


async def serve(palace: Palace) -> None:
    """MCP over stdio, as this process's identity. Stdin is read here (through guard_line), and
    fd 0 points at the null device meanwhile, as the SDK does for the streams it claims."""
    notifier = WakeNotifier(palace.settings.instance_routes)
    server = build_server(palace, notifier)
    server.add_request_handler(UNREADABLE, _UnreadableParams, _unreadable)
    await _prepare(palace)
    wire = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    stdin = _GuardedStdin(anyio.wrap_file(os.fdopen(wire, "rb", closefd=False)))
    try:
        async with stdio_server(stdin=stdin) as (read, write):  # type: ignore[arg-type]
            await server.run(read, write, server.create_initialization_options())
    finally:
        os.dup2(wire, 0)
        notifier.drain()  # wakes started just before the client hung up still go out


def http_app(palace: Palace, host: str, port: int, notifier: WakeNotifier) -> Any:
    """The streamable HTTP app (path /mcp): every request needs a bearer token."""
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    return build_server(palace, notifier).streamable_http_app(
        host=host,
        auth=AuthSettings(issuer_url=url, resource_server_url=None),
        token_verifier=TokenVerifier(palace),
    )


async def serve_http(palace: Palace, host: str, port: int) -> None:
    """MCP over streamable HTTP at http://HOST:PORT/mcp, each call as its bearer token."""
    import uvicorn

    notifier = WakeNotifier(palace.settings.instance_routes)
    await _prepare(palace)
    config = uvicorn.Config(
        http_app(palace, host, port, notifier), host=host, port=port, log_config=None
    )
    log.info("serving MCP on http://%s:%d/mcp (bearer tokens required)", host, port)
    try:
        await uvicorn.Server(config).serve()
    finally:
        notifier.drain()


def _listen_address(value: str) -> tuple[str, int]:
    """`PORT` or `HOST:PORT` (IPv6 as `[::1]:PORT`); the host defaults to 127.0.0.1."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r}: use PORT or HOST:PORT, e.g. 127.0.0.1:8765")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="memory-palace-mcp",
        description="Serve the Memory Palace tools over MCP: stdio, or streamable HTTP with "
        "--http. Configuration comes from config.json in the data dir and MEMORY_PALACE_* "
        "variables.",
    )
    ap.add_argument(
        "--data-dir",
        help="data dir holding config.json (default: $MEMORY_PALACE_DATA_DIR or ~/.memory-palace)",
    )
    ap.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        type=_listen_address,
        help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio; every request needs "
        "'Authorization: Bearer <token>' (host default 127.0.0.1)",
    )
    ap.add_argument("--log-level", default="INFO", help="stderr log level (default INFO)")
    ap.add_argument("--version", action="version", version=f"memory-palace-mcp {__version__}")
    args = ap.parse_args(argv)
    if not args.http and threading.current_thread() is threading.main_thread():
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
    if not args.http and sys.stdin.isatty():
        sys.stderr.write(TTY_HINT)
        sys.stderr.flush()
    try:
        if args.http:
            anyio.run(serve_http, palace, *args.http)
        else:
            anyio.run(serve, palace)
    except KeyboardInterrupt:  # HTTP mode (stdio mode exits in _interrupted)
        return 130
    finally:
        palace.close()
    return 0


def _interrupted(_signum: int, _frame: Any) -> None:
    sys.stderr.flush()
    os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
