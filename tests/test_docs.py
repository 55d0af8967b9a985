"""docs/postgres.md cannot drift: every CLI example's program and flags exist (--help), and the
examples that can run do run, against the test PostgreSQL."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from tests.fixtures.db import pg_url_for
from tests.fixtures.layouts import this_layout

DOC = Path(__file__).resolve().parents[1] / "docs" / "postgres.md"
BIN = Path(sys.executable).parent
SCRIPTS = ("memory-palace", "memory-palace-sqlite-to-pg", "memory-palace-mcp")
DOC_SOURCE = "sqlite:///~/.memory-palace/memories.db"
DOC_TARGET = "postgresql://localhost:5432/memory_palace"


def doc_commands() -> list[list[str]]:
    """Our CLI invocations in the guide's bash blocks, continuation lines joined."""
    text = DOC.read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            argv = shlex.split(line)
            if argv[0] in SCRIPTS:
                cmds.append(argv)
    return cmds


def help_argv(argv: list[str]) -> list[str]:
    prog = str(BIN / argv[0])
    if argv[0] == "memory-palace":  # the subcommand (and its action, positionals) before flags
        words = [a for a in argv[1:] if not a.startswith("-")][:3]
        return [prog, *words[: 2 if words[0] == "token" else 1], "--help"]
    return [prog, "--help"]


def test_guide_has_the_commands():
    progs = {c[0] for c in doc_commands()}
    assert progs == set(SCRIPTS)
    subs = {c[1] for c in doc_commands() if c[0] == "memory-palace"}
    assert {"doctor", "export", "import"} <= subs


@pytest.mark.parametrize("argv", doc_commands(), ids=lambda a: " ".join(a[:3]))
def test_every_example_program_and_flag_exists(argv):
    res = subprocess.run(help_argv(argv), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for flag in (a for a in argv[1:] if a.startswith("--")):
        assert flag in res.stdout, f"{flag} is in the guide but not in {argv[0]} --help"


@pytest.mark.postgres
def test_runnable_examples_run(tmp_path, pg_server_url):
    target = pg_url_for(pg_server_url, f"mp_docs_{uuid.uuid4().hex[:10]}")
    restored = pg_url_for(pg_server_url, f"mp_docs_r_{uuid.uuid4().hex[:10]}")
    source = tmp_path / "memories.db"
    this_layout(source, memories=25)
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.json").write_bytes(
        orjson.dumps(
            {
                "databases": {"default": {"url": target}, "restored": {"url": restored}},
                "embedder": "hash",
            }
        )
    )
    env = {**os.environ, "MEMORY_PALACE_DATA_DIR": str(data)}
    ran = 0
    token_id = None
    for argv in doc_commands():
        if argv[0] == "memory-palace-mcp":
            continue  # a stdio server: covered by tests/test_mcp.py
        args = [
            a.replace(DOC_SOURCE, f"sqlite:///{source}").replace(DOC_TARGET, target) for a in argv
        ]
        if args[0] == "memory-palace" and args[1] == "doctor" and "--database" in args:
            args[args.index("--database") + 1] = "restored"
        if args[1:3] == ["token", "revoke"]:
            args[3] = token_id  # the guide's placeholder: the token the guide created
        res = subprocess.run(
            [str(BIN / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
        assert res.returncode == 0, f"{' '.join(argv)}\n{res.stdout}\n{res.stderr}"
        if args[1:3] == ["token", "create"]:
            token_id = res.stdout.split("_")[1]
        ran += 1
    assert ran >= 6
    assert (tmp_path / "backup.jsonl").read_bytes().count(b'"type":"memory"') == 25
