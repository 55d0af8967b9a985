"""No password in any output: URLs with a scheme typo, a bad port, an unescaped '@', a type that
disagrees with the URL, an unsupported database, an unreachable server — through the CLI, the
bridge's ready line, memory_register_database and memory-palace-sqlite-to-pg. Every case is a
clear error (no traceback) whose text never holds the secret."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
import pytest
from memory_palace.config import mask_url

from tests.test_entry_points import command

SECRET = "Sup3rSecretPw"
BAD_URLS = {
    "scheme typo": f"postgress://memory:{SECRET}@localhost:5432/memory_palace",
    "bad port": f"postgresql://memory:{SECRET}@localhost:54x2/memory_palace",
    "unescaped @": f"postgresql://memory:{SECRET[:5]}@{SECRET[5:]}@localhost:5432/mp",
    "unsupported": f"mysql://memory:{SECRET}@localhost/memory_palace",
    "sqlite with a password": f"sqlite://memory:{SECRET}@host/x.db",
}
UNREACHABLE = f"postgresql://memory:{SECRET}@127.0.0.1:1/memory_palace"


def run(script: str, *argv: str, data: Path, env: dict[str, str] | None = None, stdin: str = ""):
    proc = subprocess.run(
        [*command(script), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "MEMORY_PALACE_DATA_DIR": str(data),
            "MEMORY_PALACE_EMBEDDER": "hash",
            **(env or {}),
        },
    )
    for stream in (proc.stdout, proc.stderr):
        assert SECRET not in stream and SECRET[5:] not in stream, stream
        assert "Traceback" not in stream, stream
    return proc


def config_dir(tmp_path: Path, name: str, config: dict) -> Path:
    d = tmp_path / name.replace(" ", "_")
    d.mkdir()
    (d / "config.json").write_bytes(orjson.dumps(config))
    return d


@pytest.mark.parametrize("url", [*BAD_URLS.values(), UNREACHABLE])
def test_mask_url_hides_the_whole_password(url):
    shown = mask_url(url)
    assert SECRET not in shown and SECRET[5:] not in shown and ":***@" in shown


@pytest.mark.parametrize("case", sorted(BAD_URLS))
def test_bad_url_in_config_and_environment(tmp_path, case):
    url = BAD_URLS[case]
    data = config_dir(tmp_path, case, {"database": {"url": url}})
    proc = run("memory-palace", "config", "check", data=data)
    assert proc.returncode == 1 and "database.url" in proc.stderr, proc.stderr
    proc = run(
        "memory-palace", "stats", data=tmp_path / "env", env={"MEMORY_PALACE_DATABASE_URL": url}
    )
    assert proc.returncode == 1 and "MEMORY_PALACE_DATABASE_URL" in proc.stderr, proc.stderr


def test_type_and_url_disagree(tmp_path):
    data = config_dir(
        tmp_path, "mismatch", {"databases": {"default": {"type": "sqlite", "url": UNREACHABLE}}}
    )
    proc = run("memory-palace", "config", "show", data=data)
    assert proc.returncode == 1 and "make them agree" in proc.stderr


def test_bridge_ready_line_masks(tmp_path):
    data = config_dir(tmp_path, "bridge", {"database": {"url": BAD_URLS["scheme typo"]}})
    proc = run("memory-palace-bridge", data=data)
    ready = orjson.loads(proc.stdout.splitlines()[0])
    assert ready["ready"] is False and "postgress" in ready["error"]["message"]
    assert "memory:***@localhost" in ready["error"]["message"]


def test_bridge_unreachable_default_database(tmp_path):
    data = config_dir(tmp_path, "down", {"database": {"url": UNREACHABLE}})
    request = orjson.dumps({"id": 1, "method": "memory_stats", "params": {}}).decode()
    proc = run("memory-palace-bridge", data=data, stdin=request + "\n")
    lines = [orjson.loads(line) for line in proc.stdout.splitlines()]
    reply = next(line for line in lines if line.get("id") == 1)
    assert reply["error"]["code"] == "BACKEND_UNAVAILABLE"
    assert "memory:***@127.0.0.1:1" in reply["error"]["message"]


@pytest.mark.parametrize("url", [*BAD_URLS.values(), UNREACHABLE])
def test_register_database_errors_mask(tmp_path, url):
    data = config_dir(tmp_path, "reg", {"extensions": ["db_manager"], "embedder": "hash"})
    params = orjson.dumps({"name": "elsewhere", "url": url}).decode()
    proc = run("memory-palace", "call", "memory_register_database", params, data=data)
    assert proc.returncode == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert ":***@" in proc.stderr or "mysql" in proc.stderr or "scheme" in proc.stderr


@pytest.mark.parametrize("url", [BAD_URLS["unsupported"], BAD_URLS["scheme typo"], UNREACHABLE])
def test_sqlite_to_pg_target_masks(tmp_path, url):
    source = tmp_path / "src.db"
    run("memory-palace", "init", data=tmp_path / "d", env={
        "MEMORY_PALACE_DATABASE_URL": f"sqlite:///{source}"})  # fmt: skip
    proc = run(
        "memory-palace-sqlite-to-pg",
        "--source",
        f"sqlite:///{source}",
        "--target",
        url,
        data=tmp_path / "d",
    )
    assert proc.returncode in (1, 2) and "error:" in proc.stderr, proc.stderr
    assert ":***@" in proc.stderr, proc.stderr


def test_sqlite_to_pg_source_with_a_password(tmp_path):
    proc = run(
        "memory-palace-sqlite-to-pg",
        "--source",
        BAD_URLS["sqlite with a password"],
        "--target",
        "postgresql://localhost/memory_palace",
        data=tmp_path / "d",
    )
    assert proc.returncode in (1, 2) and "error:" in proc.stderr, proc.stderr
