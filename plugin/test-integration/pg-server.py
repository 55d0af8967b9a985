"""Run a throwaway PostgreSQL (pgserver: PostgreSQL + pgvector from PyPI) for the OpenClaw
integration test: prints its URI as one line on stdout, then stays up until stdin closes.
Uses MEMORY_PALACE_TEST_PG_URL instead when it is set (nothing is started then)."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path


def _stop(_signum: int, _frame: object) -> None:
    raise SystemExit(0)  # run the finally below: a killed helper must not leak its PostgreSQL


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    url = os.environ.get("MEMORY_PALACE_TEST_PG_URL")
    server = None
    if not url:
        import pgserver

        root = Path(tempfile.mkdtemp(prefix="mp-openclaw-pg-"))
        server = pgserver.get_server(root, cleanup_mode="delete")
        url = server.get_uri()
    sys.stdout.write(url + "\n")
    sys.stdout.flush()
    try:
        sys.stdin.read()  # the test closes stdin (or dies) when it is done
    finally:
        if server is not None:
            server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
