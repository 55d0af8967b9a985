"""The human CLI, run in-process through main() and once as a real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from memory_palace.cli import build_parser, main


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("MEMORY_PALACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEMORY_PALACE_EMBEDDER", "hash")

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_init_creates_data_dir_and_database(cli, tmp_path: Path) -> None:
    code, out, _ = cli("init")
    assert code == 0 and "Memory Palace is ready" in out
    assert (tmp_path / "data" / "config.json").exists()
    assert (tmp_path / "data" / "memories.db").exists()


def test_remember_recall_stats_round_trip(cli) -> None:
    assert (
        cli("remember", "Staging deploys fail with ERR_CONN_RESET", "-s", "deploys", "-p", "ops")[0]
        == 0
    )
    assert cli("remember", "Alice prefers green tea", "-s", "alice")[0] == 0
    code, out, _ = cli("remember", "Alice prefers green tea", "-s", "alice")
    assert "already remembered as #2" in out
    code, out, _ = cli("recall", "ERR_CONN_RESET", "--limit", "1")
    assert code == 0 and out.startswith("#1 [fact] deploys") and "both" in out
    code, out, _ = cli("recall", "tea", "--project", "ops", "--json")
    data = json.loads(out)
    assert [m["id"] for m in data["memories"]] == [1]
    code, out, _ = cli("stats", "--json")
    assert json.loads(out)["total_memories"] == 2
    code, out, _ = cli("get", "1", "2", "--json")
    assert json.loads(out)["count"] == 2


def test_archive_is_dry_run_by_default(cli) -> None:
    cli("remember", "temporary note")
    code, out, _ = cli("archive", "1")
    assert code == 0 and "would_archive: 1" in out
    code, out, _ = cli("archive", "1", "--execute", "--reason", "done")
    assert code == 0 and "archived_count: 1" in out
    code, out, _ = cli("recent", "--json")
    assert code == 0 and json.loads(out)["count"] == 0


def test_link_and_unlink(cli) -> None:
    cli("remember", "the api gateway terminates TLS")
    cli("remember", "certificates renew through the gateway's ACME client")
    code, out, _ = cli("link", "2", "refines", "1", "--json")
    assert code == 0 and json.loads(out)["relation_type"] == "refines"
    code, out, _ = cli("link", "2", "refines", "1")
    assert code != 0 and "already exists" in out + _
    code, out, _ = cli("unlink", "2", "1", "--type", "refines", "--json")
    assert code == 0 and json.loads(out)["removed"] == 1
    code, out, err = cli("unlink", "2", "9")
    assert code != 0 and "memory 9 does not exist" in out + err


def test_errors_are_clear_and_exit_nonzero(cli) -> None:
    code, _, err = cli("get", "42")
    assert code == 1 and "memory 42 does not exist" in err
    code, _, err = cli("recall", "x", "--database", "bad name!")
    assert code == 1 and "invalid database name" in err


def test_named_database_routes(cli, tmp_path: Path) -> None:
    cli("remember", "work fact", "--database", "work")
    assert (tmp_path / "data" / "memories_work.db").exists()
    code, out, _ = cli("stats", "--json")
    assert code == 0 and json.loads(out)["total_memories"] == 0
    code, out, _ = cli("stats", "--json", "--database", "work")
    assert code == 0 and json.loads(out)["total_memories"] == 1


def test_every_command_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert p.description, name
        assert p.format_help().startswith(f"usage: memory-palace {name}")


def test_console_script_help(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("memory-palace")
    out = subprocess.run(
        [str(exe), "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MEMORY_PALACE_DATA_DIR": str(tmp_path)},
    )
    assert "remember" in out.stdout and "recall" in out.stdout


def test_export_to_stdout_is_pure_jsonl(cli) -> None:
    cli("remember", "exported fact")
    code, out, err = cli("export", "-")
    assert code == 0 and out.strip()
    for line in out.splitlines():
        json.loads(line)
    assert "counts" in err


def test_readme_cli_examples_run(tmp_path: Path) -> None:
    """The README's 'use it yourself' commands run as written (hash embedder for speed)."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("To use it yourself", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("memory-palace")]
    assert len(lines) >= 4
    env = {**os.environ, "MEMORY_PALACE_DATA_DIR": str(tmp_path), "MEMORY_PALACE_EMBEDDER": "hash"}
    bindir = Path(sys.executable).parent
    outputs = {}
    for line in lines:
        argv = shlex.split(re.sub(r"\s+#.*$", "", line))
        out = subprocess.run(
            [str(bindir / argv[0]), *argv[1:]], capture_output=True, text=True, env=env
        )
        assert out.returncode == 0, f"{line}\n{out.stdout}\n{out.stderr}"
        outputs[line] = out.stdout
    found = json.loads(outputs["memory-palace recall ERR_CONN_RESET --json"])
    assert found["memories"][0]["subject"] == "staging deploys"
