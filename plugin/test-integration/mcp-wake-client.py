"""A real MCP client for the MCP-wake integration test: spawns `memory-palace-mcp` over stdio
(official `mcp` SDK ClientSession) and sends one message per recipient with the `message` tool.

Usage: mcp-wake-client.py DATA_DIR SENDER RECIPIENT...  (DATA_DIR holds config.json)
Prints one JSON line: {"sends": [{"id", "to", "content", "sentAtMs"}]}; the server's logs (the
wake lines among them) go to stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client


def server_command() -> str:
    """The console script next to this Python (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / "memory-palace-mcp"
    found = str(local) if local.exists() else shutil.which("memory-palace-mcp")
    if not found:
        raise SystemExit(
            "memory-palace-mcp not found: install memory-palace into "
            f"{sys.executable}'s environment (pip install -e .)"
        )
    return found


async def send_all(data_dir: str, sender: str, recipients: list[str]) -> list[dict[str, Any]]:
    env = {**os.environ, "MEMORY_PALACE_DATA_DIR": data_dir, "MEMORY_PALACE_INSTANCE_ID": sender}
    params = StdioServerParameters(command=server_command(), args=["--log-level", "INFO"], env=env)
    sends = []
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        for to in recipients:
            content = f"The vault code for {to} is 4417-{time.time_ns()}"
            sent_at = time.time() * 1000
            res = await session.call_tool(
                "message",
                {
                    "action": "send",
                    "from_instance": sender,
                    "to_instance": to,
                    "subject": "vault code",
                    "content": content,
                },
            )
            if res.is_error:
                raise SystemExit(f"message send to {to} failed: {res.content[0].text}")
            sends.append(
                {
                    "id": json.loads(res.content[0].text)["id"],
                    "to": to,
                    "content": content,
                    "sentAtMs": sent_at,
                }
            )
    return sends


def main() -> int:
    if len(sys.argv) < 4:
        sys.stderr.write(__doc__ or "")
        return 2
    sends = anyio.run(send_all, sys.argv[1], sys.argv[2], sys.argv[3:])
    sys.stdout.write(json.dumps({"sends": sends}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
