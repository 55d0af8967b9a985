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
        # Deleted afterwards, so no fsync: stopping it then takes about 2 s. With fsync its
        # shutdown checkpoint could outlast the harness's 5 s wait on a busy machine; the
        # SIGTERM that followed cut the cleanup short and left PostgreSQL running.
        server.psql("ALTER SYSTEM SET fsync = off;\nSELECT pg_reload_conf();\n")
    sys.stdout.write(url + "\n")
    sys.stdout.flush()
    try:
        sys.stdin.read()  # the test closes stdin (or dies) when it is done
    finally:
        if server is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a TERM now must not cut the stop short
            server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
