"""The console entry points (pyproject `[project.scripts]`). Each imports its command only when
run, so Ctrl-C at any moment — even while the heavy imports load — exits quietly with the
shell's 130 instead of a traceback."""

from __future__ import annotations

import os
import signal
from importlib import import_module


def _exit_while_loading(_signum: int, _frame: object) -> None:
    # A KeyboardInterrupt raised inside a half-imported C extension can crash or hang the
    # interpreter; nothing has been opened or written yet, so leave at once.
    os._exit(130)


def _run(module: str) -> int:
    previous = signal.signal(signal.SIGINT, _exit_while_loading)
    try:
        main = import_module(module).main
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        return int(main())
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
