"""memory-palace-sqlite-to-pg: the command line. Parses arguments, runs `run.migrate` and prints
its report; every MemoryPalaceError becomes one `error:` line and exit code 2 (fix the command:
arguments, source, flags) or 1 (fix the environment: server, privileges), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

import orjson

from .. import __version__
from ..config import Settings, load_settings
from ..errors import ConfigError, Conflict, InvalidParams, MemoryPalaceError
from .plan import DEFAULT_BATCH, DEFAULT_SAMPLE
from .run import migrate

PROG = "memory-palace-sqlite-to-pg"
DEFAULT_TARGET = "postgresql://localhost:5432/memory_palace"
USAGE_ERRORS = (InvalidParams, ConfigError, Conflict)  # exit 2: the command must change
SHOWN_BAD_ROWS = 50


def default_urls(settings: Settings) -> tuple[str, str]:
    """(source, target): the configured URLs where they fit, else the conventional ones."""
    sqlite_urls = [d.url for d in settings.databases.values() if d.type == "sqlite"]
    pg_urls = [d.url for d in settings.databases.values() if d.type == "postgres"]
    default = settings.databases[settings.default_database]
    source = (
        default.url
        if default.type == "sqlite"
        else (sqlite_urls[0] if sqlite_urls else f"sqlite:///{settings.data_dir / 'memories.db'}")
    )
    target = (
        default.url if default.type == "postgres" else (pg_urls[0] if pg_urls else DEFAULT_TARGET)
    )
    return source, target


def _as_url(value: str) -> str:
    return value if "://" in value else f"sqlite:///{Path(value).expanduser().resolve()}"


def _where_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--source",
        help="SQLite URL or file (default: the configured SQLite "
        "database, else <data dir>/memories.db)",
    )
    ap.add_argument(
        "--target",
        help=f"PostgreSQL URL (default: the configured PostgreSQL database, else {DEFAULT_TARGET})",
    )
    ap.add_argument(
        "--data-dir",
        help="Memory Palace data dir holding config.json "
        "(default: $MEMORY_PALACE_DATA_DIR or ~/.memory-palace)",
    )


def _how_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="detect the layout, count and check every row, check the target; write nothing",
    )
    ap.add_argument(
        "--force",
        action="store_true",
        help="copy even when the target already holds rows (existing ids are kept)",
    )
    ap.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="copy everything else when some rows cannot be stored in PostgreSQL (a NUL "
        "character, malformed JSON or time, a wrong embedding dimension, ...) and list them "
        "in a report file",
    )
    ap.add_argument(
        "--bad-rows-file",
        type=Path,
        help="where --skip-bad-rows writes the skipped rows as JSON lines (table, id, reason) "
        "(default: <source name>-bad-rows.jsonl next to the source)",
    )
    ap.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH,
        help=f"rows per COPY batch and transaction (default {DEFAULT_BATCH})",
    )
    ap.add_argument(
        "--embedding-model",
        default=None,
        help="model name recorded for embeddings from the original layout, which "
        "did not store it (default: 'unknown')",
    )
    ap.add_argument(
        "--sample",
        type=int,
        default=DEFAULT_SAMPLE,
        help=f"rows per table compared by checksum after the copy (default {DEFAULT_SAMPLE})",
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG,
        description="Copy a SQLite Memory Palace (this project's or the original's layout) into "
        "PostgreSQL + pgvector, then verify row counts and a checksum of a sample. "
        "The target database, extension and tables are created when missing.",
    )
    ap.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _where_arguments(ap)
    _how_arguments(ap)
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    return ap


def _print_bad_rows(report: dict[str, Any], w: Any) -> None:
    bad = report.get("bad_rows") or []
    if not bad:
        return
    w(f"bad rows: {len(bad)} row(s) PostgreSQL cannot store\n")
    for row in bad[:SHOWN_BAD_ROWS]:
        w(f"  {row['table']} {orjson.dumps(row['id']).decode()}: {row['reason']}\n")
    if len(bad) > SHOWN_BAD_ROWS:
        w(f"  ... and {len(bad) - SHOWN_BAD_ROWS} more (--json lists them all)\n")


def _print_dry_run(report: dict[str, Any], w: Any) -> None:
    w("dry run: nothing written\n")
    for name, n in report["source_rows"].items():
        w(f"  {name:<14} {n:>9} rows to copy\n")
    w(f"target: {report.get('target_state')}\n")
    _print_bad_rows(report, w)
    if report.get("bad_rows"):
        w(
            "a run copies everything else and lists them in a report file\n"
            if report["skip_bad_rows"]
            else "a run refuses to start while they exist: fix them in the source, or add "
            "--skip-bad-rows to copy everything else and list them in a report file\n"
        )


def _print_run(report: dict[str, Any], w: Any) -> None:
    for name, t in report["tables"].items():
        chk = report["checksums"][name]
        skipped = f"  skipped {t['skipped']} bad" if t["skipped"] else ""
        w(
            f"{'✓' if t['ok'] else '✗'} {name:<14} source {t['source']:>9}  in target "
            f"{t['present']:>9}  new {t['inserted']:>9}{skipped}  sample {chk['sampled']} "
            f"{'matches' if chk['ok'] else 'DIFFERS ' + str(chk.get('mismatched'))}\n"
        )
        if t["conflicts"]:
            w(f"    ids already used in the target by different rows: {t['conflicts']}\n")
    w(
        f"copied in {report['copy_seconds']} s ({report['rows_per_s']} rows/s, "
        f"{report['memories_per_s']} memories/s); index and sequences "
        f"{report['index_seconds']} s\n"
    )
    if report.get("bad_rows_file"):
        w(f"skipped {len(report['bad_rows'])} bad row(s), listed in {report['bad_rows_file']}\n")


def print_report(report: dict[str, Any], out: TextIO) -> None:
    w = out.write
    w(f"source: {report['source']} ({report['layout_description']})\n")
    w(f"target: {report['target']}\n")
    if report.get("dimension"):
        w(f"embedding dimension: {report['dimension']}\n")
    (_print_dry_run if report["dry_run"] else _print_run)(report, w)
    for name, n in report.get("skipped_orphans", {}).items():
        w(f"note: {n} {name} rows point at rows that do not exist and were skipped\n")
    for note in report.get("notes", []):
        w(f"note: {note}\n")
    if not report["dry_run"]:
        verdict = (
            "migration verified" if report["ok"] else "verification FAILED: see the ✗ lines above"
        )
        w(verdict + "\n")


def _migrate(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings(args.data_dir)
    src_default, dst_default = default_urls(settings)
    return migrate(
        _as_url(args.source) if args.source else src_default,
        args.target or dst_default,
        batch_size=args.batch_size,
        force=args.force,
        dry_run=args.dry_run,
        embedding_model=args.embedding_model,
        sample=args.sample,
        progress=False if args.no_progress else None,
        default_dim=settings.embedding_dimension or 384,
        skip_bad_rows=args.skip_bad_rows,
        bad_rows_file=args.bad_rows_file,
    )


def fail(exc: MemoryPalaceError) -> int:
    message = " ".join(exc.message.split())  # one line, whatever the message holds
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return 2 if isinstance(exc, USAGE_ERRORS) else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and --version exit here, touching nothing
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        report = _migrate(args)
    except MemoryPalaceError as exc:
        return fail(exc)
    except KeyboardInterrupt:
        sys.stderr.write(
            "interrupted: the target holds whole batches only; re-run the same command to finish\n"
        )
        return 130
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print_report(report, sys.stdout)
    return 0 if report["ok"] else 1
