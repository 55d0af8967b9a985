"""JSONL export and import for any backend: every exported table of `db/tables.py` (memories
with embeddings, edges, messages, read receipts, subscriptions). Lossless both ways: times are
UTC ISO-8601 with microseconds, vectors are float32 values written exactly, JSON keys are
sorted, ids are preserved. Columns and value kinds come from the table specs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import IO, Any

import numpy as np
import orjson
from sqlalchemy import text

from .db import schema
from .db.engine import Database, get_database
from .db.tables import EXPORTED, Table
from .db.values import decode, decode_time
from .errors import Conflict, InvalidParams
from .palace import Palace
from .services import messages

log = logging.getLogger("memory_palace.transfer")

FORMAT = "memory-palace-jsonl"
VERSION = 1
BATCH = 1000
BY_RECORD: dict[str, Table] = {t.record: t for t in EXPORTED if t.record}


def to_json(kind: str, value: Any) -> Any:
    """A stored value as its JSONL value."""
    value = decode(kind, value)
    if value is None:
        return None
    if kind == "time":
        return value.isoformat(timespec="microseconds")
    if kind == "vector":
        return value.tolist()
    return value


def from_json(kind: str, value: Any) -> Any:
    """A JSONL value as the Python value services use for a column of `kind`."""
    if value is None:
        return None
    if kind == "time":
        return decode_time(datetime.fromisoformat(value))
    if kind == "vector":
        return np.asarray(value, dtype=np.float32)
    if kind == "strings":
        return [str(v) for v in value]
    return value


@contextmanager
def _open(path_or_file: str | os.PathLike[str] | IO[bytes], mode: str) -> Iterator[IO[bytes]]:
    if path_or_file == "-":  # the CLI's stdin/stdout
        yield (sys.stdout.buffer if "w" in mode else sys.stdin.buffer)
    elif isinstance(path_or_file, (str, os.PathLike)):
        try:
            with open(path_or_file, mode) as fh:
                yield fh
        except FileNotFoundError as exc:
            raise InvalidParams(f"{exc.filename}: no such file or directory") from exc
        except OSError as exc:
            raise InvalidParams(f"cannot open {exc.filename}: {exc.strerror}") from exc
    else:
        yield path_or_file


def export_jsonl(
    palace: Palace, database: str | None, path_or_file: str | os.PathLike[str] | IO[bytes]
) -> dict[str, Any]:
    """Write every row of the named database (None = default) as JSON lines.

    Returns {"database", "counts": {record type: n}}. Needs the admin role: the file holds
    every instance's memories and messages (tokens are never exported).
    """
    palace.caller.check_role("admin", "export")
    db = palace.database(database)
    counts: dict[str, int] = {}
    with _open(path_or_file, "wb") as fh:
        header = {
            "type": "header",
            "format": FORMAT,
            "version": VERSION,
            "vector_dim": schema.vector_dim(db),
        }
        with db.read() as conn:
            header["delivery_floor"] = messages.read_floor(conn)
        fh.write(orjson.dumps(header, option=orjson.OPT_SORT_KEYS) + b"\n")
        for table in EXPORTED:
            kinds = table.kinds()
            n = 0
            with db.snapshot() as conn:
                result = conn.execution_options(stream_results=True).execute(
                    text(
                        f"SELECT {db.backend.select_list(table)} FROM {table.name} "
                        f"ORDER BY {', '.join(table.key)}"
                    )
                )
                for row in result:
                    rec: dict[str, Any] = {"type": table.record}
                    rec.update({c: to_json(kinds[c], v) for c, v in row._mapping.items()})
                    fh.write(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS) + b"\n")
                    n += 1
            counts[str(table.record)] = n
    return {"database": database or palace.catalog.default, "counts": counts}


def _row_count(db: Database) -> int:
    with db.read() as conn:
        return sum(
            int(conn.execute(text(f"SELECT count(*) FROM {t.name}")).scalar()) for t in EXPORTED
        )


def _read_header(lines: list[bytes]) -> dict[str, Any]:
    if not lines:
        raise InvalidParams(
            "the import file is empty; pass a file written by `memory-palace export`"
        )
    try:
        header = orjson.loads(lines[0])
    except orjson.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise InvalidParams(
            f"line 1 is not a {FORMAT} header: the file was not written by `memory-palace export`"
        )
    if header.get("version") != VERSION:
        raise InvalidParams(
            f"export format version {header.get('version')} is not supported "
            f"(this code reads version {VERSION}); upgrade memory-palace"
        )
    return header


def _parse_records(lines: list[bytes]) -> dict[str, list[dict[str, Any]]]:
    batches: dict[str, list[dict[str, Any]]] = {r: [] for r in BY_RECORD}
    for lineno, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        try:
            rec = orjson.loads(raw)
            table = BY_RECORD[rec["type"]]
            kinds = table.kinds()
            batches[rec["type"]].append({c: from_json(k, rec.get(c)) for c, k in kinds.items()})
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise InvalidParams(
                f"line {lineno} is not a valid export record; nothing was imported"
            ) from None
    return batches


def import_jsonl(
    palace: Palace,
    database: str | None,
    path_or_file: str | os.PathLike[str] | IO[bytes],
    force: bool = False,
) -> dict[str, Any]:
    """Load a JSONL export into the named database (created when missing), keeping ids.

    Refuses a database that holds rows unless force=True; rows whose keys exist are kept.
    Returns {"database", "counts": {record type: lines read}, "inserted": {...}}. Needs the
    admin role.
    """
    palace.caller.check_role("admin", "import")
    with _open(path_or_file, "rb") as fh:
        lines = fh.read().splitlines()
    header = _read_header(lines)
    batches = _parse_records(lines)
    dim = header.get("vector_dim")
    name, url = palace.catalog.resolve(database)
    db = get_database(url)
    schema.migrate(db, dim or palace.embedder.dim)
    stored = schema.vector_dim(db)
    if dim and stored and dim != stored:
        raise Conflict(
            f"the export holds {dim}-d vectors but database {name!r} stores "
            f"{stored}-d ones; import into a new database name instead"
        )
    if not force and _row_count(db):
        raise Conflict(
            f"database {name!r} already holds rows; import with force "
            "(`memory-palace import --force`) to add to it (existing ids are kept)"
        )
    if isinstance(header.get("delivery_floor"), int):
        with db.write() as conn:
            messages.adopt_floor(conn, header["delivery_floor"])
    inserted = {r: 0 for r in BY_RECORD}
    for record, table in BY_RECORD.items():  # parents before children
        stmt = text(
            db.backend.insert_sql(table, table.names, on_conflict=" ON CONFLICT DO NOTHING")
        )
        rows = [db.backend.encode_row(table, r) for r in batches[record]]
        for start in range(0, len(rows), BATCH):
            with db.write() as conn:
                res = conn.execute(stmt, rows[start : start + BATCH])
                inserted[record] += max(res.rowcount, 0)
    with db.write() as conn:
        db.backend.reset_sequences(conn, [t.name for t in EXPORTED if t.serial])
    db.cache.clear()  # in-process vector caches must reload
    return {
        "database": name,
        "counts": {r: len(b) for r, b in batches.items()},
        "inserted": inserted,
    }
