"""The console entry points (pyproject `[project.scripts]`). Each imports its command only when
run, so Ctrl-C at any moment — even while the heavy imports load — exits quietly with the
shell's 130 instead of a traceback."""

from __future__ import annotations

from importlib import import_module


def _run(module: str) -> int:
    try:
        return int(import_module(module).main())
    except KeyboardInterrupt:
        return 130


def cli() -> int:
    return _run("memory_palace.cli")


def bridge() -> int:
    return _run("memory_palace.bridge")


def mcp() -> int:
    return _run("memory_palace.mcp_server")


def sqlite_to_pg() -> int:
    return _run("memory_palace.migrate")
