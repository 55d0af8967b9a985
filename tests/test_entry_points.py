"""Every console entry point (pyproject [project.scripts] -> memory_palace.entry): --help and
--version answer without creating anything; the CLI's global flags work before or after the
command and its help shows defaults; Ctrl-C exits quietly with 130; memory-palace-mcp in a
terminal says what it is on stderr and keeps serving."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
import tomllib
import tty
from pathlib import Path

import orjson
import pytest
from memory_palace import __version__
from memory_palace.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def command(script: str) -> list[str]:
    """The console script as pip installs it: its entry function, run by this interpreter."""
    module, func = SCRIPTS[script].split(":")
    code = f"import sys; from {module} import {func}; sys.argv[0] = {script!r}; sys.exit({func}())"
    return [sys.executable, "-c", code]


def env_for(data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MEMORY_PALACE_DATA_DIR": str(data_dir),
        "MEMORY_PALACE_EMBEDDER": "hash",
        "PYTHONPATH": str(ROOT / "bridge"),
    }


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text


def test_scripts_are_the_four_entry_points():
    assert set(SCRIPTS) == {
        "memory-palace",
        "memory-palace-bridge",
        "memory-palace-mcp",
        "memory-palace-sqlite-to-pg",
    }
    assert all(target.startswith("memory_palace.entry:") for target in SCRIPTS.values())


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_and_version_create_nothing(script, tmp_path):
    data = tmp_path / "data"
    for flag in ("--version", "--help"):
        proc = subprocess.run(
            [*command(script), flag], capture_output=True, text=True, env=env_for(data), timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        no_traceback(proc.stderr)
        if flag == "--version":
            assert proc.stdout.strip() == f"{script} {__version__}"
        else:
            assert proc.stdout.startswith(f"usage: {script}"), proc.stdout
    assert not data.exists()


def test_global_flags_before_or_after_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEMORY_PALACE_EMBEDDER", "hash")
    monkeypatch.delenv("MEMORY_PALACE_DATA_DIR", raising=False)
    data = str(tmp_path / "data")

    def run(*argv: str) -> dict:
        assert main(list(argv)) == 0
        return orjson.loads(capsys.readouterr().out)

    assert run("--data-dir", data, "--json", "-d", "work", "remember", "in work")["id"] == 1
    assert run("remember", "in default", "--json", "--data-dir", data)["id"] == 1
    assert run("--json", "stats", "--data-dir", data, "-d", "work")["total_memories"] == 1
    assert run("-d", "work", "--data-dir", data, "stats", "--json")["total_memories"] == 1
    # a flag given after the command wins over the same flag before it
    assert run("--data-dir", "/nonexistent", "-d", "x", "--json", "recent", "--data-dir", data,
               "-d", "work")["memories"][0]["content"] == "in work"  # fmt: skip


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["recent", "--help"])
    out = capsys.readouterr().out
    assert "how many memories (default: 20)" in out
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "findings per check (default: 20)" in out and "orphan_edges" in out


def wait_for(fd: int, needle: bytes, timeout: float = 60) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while needle not in got and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            got += chunk
    assert needle in got, got[-2000:]
    return got


def test_mcp_in_a_terminal_hints_serves_and_exits_on_ctrl_c(tmp_path):
    master, slave = pty.openpty()
    tty.setraw(slave)  # no echo, no line editing: the pty carries the protocol bytes as they are
    err_r, err_w = os.pipe()
    proc = subprocess.Popen(
        command("memory-palace-mcp"),
        stdin=slave,
        stdout=slave,
        stderr=err_w,
        env=env_for(tmp_path / "data"),
        start_new_session=True,
    )
    os.close(slave)
    os.close(err_w)
    try:
        err = wait_for(err_r, b"Ctrl-C exits.")
        assert b"speaks MCP" in err and err.count(b"\n") >= 1
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        }
        os.write(master, orjson.dumps(init) + b"\n")
        reply = wait_for(master, b"\n")
        assert (
            orjson.loads(reply.splitlines()[0])["result"]["serverInfo"]["name"] == "memory-palace"
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
        rest = b""
        while chunk := os.read(err_r, 65536):
            rest += chunk
        no_traceback((err + rest).decode())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(err_r)


def spawn_waiting(script: str, argv: list[str], data: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*command(script), *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_for(data),
    )


def test_bridge_data_dir_ctrl_c_exits_130_and_sigterm_0(tmp_path):
    chosen = tmp_path / "chosen"
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 0)):
        proc = spawn_waiting("memory-palace-bridge", ["--data-dir", str(chosen)], tmp_path / "env")
        ready = orjson.loads(proc.stdout.readline())
        assert ready["ready"] is True
        assert (chosen / "memories.db").exists() and not (tmp_path / "env").exists()
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == code
        no_traceback(proc.stderr.read().decode())
        proc.stdin.close()


def test_cli_ctrl_c_exits_130_quietly(tmp_path):
    proc = spawn_waiting("memory-palace", ["import", "-"], tmp_path / "data")
    time.sleep(0.5)  # interrupted while starting or while waiting on stdin: the same answer
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    out, err = proc.communicate()
    assert out == b""
    no_traceback(err.decode())


def test_every_option_of_every_command_has_help():
    import argparse

    from memory_palace.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
            else:
                yield path, action

    missing = [f"{path}: {a.option_strings or a.dest}" for path, a in walk(build_parser(), "")
               if not a.help]  # fmt: skip
    assert missing == []
