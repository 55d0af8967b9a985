"""JSONL export and import for any backend: memories with embeddings, edges, messages, message
reads and subscriptions. Lossless both ways: times are UTC ISO-8601 with microseconds, vectors
are float32 values written exactly, JSON keys are sorted, ids are preserved.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import orjson
from sqlalchemy import text

from .db import schema
from .db.engine import Database, get_database
from .db.values import (
    json_out,
    json_param,
    jsonb_sql,
    list_param,
    time_param,
    vector_out,
    vector_param,
    vector_sql,
)
from .errors import Conflict, InvalidParams

if TYPE_CHECKING:
    from .palace import Palace

log = logging.getLogger("memory_palace.transfer")

FORMAT = "memory-palace-jsonl"
VERSION = 1
BATCH = 1000

# record type -> (table, columns, order by, kinds). Kinds: t=time, l=list, j=json, v=vector,
# b=bool; anything else is passed through.
SPECS: dict[str, tuple[str, list[tuple[str, str]], str]] = {
    "memory": (
        "memories",
        [
            ("id", ""),
            ("created_at", "t"),
            ("updated_at", "t"),
            ("last_accessed_at", "t"),
            ("access_count", ""),
            ("instance_id", ""),
            ("projects", "l"),
            ("memory_type", ""),
            ("subject", ""),
            ("content", ""),
            ("content_hash", ""),
            ("keywords", "l"),
            ("tags", "l"),
            ("foundational", "b"),
            ("source_type", ""),
            ("source_context", ""),
            ("source_session_id", ""),
            ("embedding", "v"),
            ("embedding_model", ""),
            ("embedding_dim", ""),
            ("expires_at", "t"),
            ("is_archived", "b"),
        ],
        "id",
    ),
    "edge": (
        "memory_edges",
        [
            ("id", ""),
            ("created_at", "t"),
            ("source_id", ""),
            ("target_id", ""),
            ("relation_type", ""),
            ("strength", "f"),
            ("bidirectional", "b"),
            ("metadata", "j"),
            ("created_by", ""),
            ("auto_linked", "b"),
        ],
        "id",
    ),
    "message": (
        "messages",
        [
            ("id", ""),
            ("created_at", "t"),
            ("from_instance", ""),
            ("to_instance", ""),
            ("message_type", ""),
            ("subject", ""),
            ("content", ""),
            ("channel", ""),
            ("priority", ""),
            ("expires_at", "t"),
            ("delivery_status", ""),
            ("delivered_at", "t"),
        ],
        "id",
    ),
    "message_read": (
        "message_reads",
        [("message_id", ""), ("instance_id", ""), ("read_at", "t")],
        "message_id, instance_id",
    ),
    "subscription": (
        "subscriptions",
        [("instance_id", ""), ("channel", ""), ("created_at", "t")],
        "instance_id, channel",
    ),
}
SERIAL_TABLES = ("memories", "memory_edges", "messages")


def _time(value: Any) -> str | None:
    if value is None:
        return None
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def _out(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "t":
        return _time(value)
    if kind == "l":
        return list(value) if isinstance(value, (list, tuple)) else list(orjson.loads(value))
    if kind == "j":
        return json_out(value)
    if kind == "v":
        return vector_out(value).tolist()
    if kind == "b":
        return bool(value)
    if kind == "f":
        return float(value)
    return value


@contextmanager
def _open(path_or_file: str | os.PathLike[str] | IO[bytes], mode: str) -> Iterator[IO[bytes]]:
    if path_or_file == "-":  # the CLI's stdin/stdout
        yield (sys.stdout.buffer if "w" in mode else sys.stdin.buffer)
    elif isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, mode) as fh:
            yield fh
    else:
        yield path_or_file  # type: ignore[misc]


def export_jsonl(
    palace: Palace, database: str | None, path_or_file: str | os.PathLike[str] | IO[bytes]
) -> dict[str, Any]:
    """Write every row of the named database (None = default) as JSON lines.

    Returns {"database", "counts": {record type: n}}.
    """
    db = palace.database(database)
    counts: dict[str, int] = {}
    with _open(path_or_file, "wb") as fh:
        header = {
            "type": "header",
            "format": FORMAT,
            "version": VERSION,
            "vector_dim": schema.vector_dim(db),
        }
        fh.write(orjson.dumps(header, option=orjson.OPT_SORT_KEYS) + b"\n")
        for rtype, (table, cols, order) in SPECS.items():
            names = ", ".join(
                (
                    "CAST(embedding AS text) AS embedding"
                    if c == "embedding" and db.is_postgres
                    else c
                )
                for c, _ in cols
            )
            n = 0
            with db.snapshot() as conn:
                result = conn.execution_options(stream_results=True).execute(
                    text(f"SELECT {names} FROM {table} ORDER BY {order}")
                )
                for row in result:
                    rec = {"type": rtype}
                    rec.update({c: _out(k, v) for (c, k), v in zip(cols, row)})
                    fh.write(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS) + b"\n")
                    n += 1
            counts[rtype] = n
    return {"database": database or palace.catalog.default, "counts": counts}


def _param(db: Database, kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "t":
        return time_param(db, datetime.fromisoformat(value))
    if kind == "l":
        return list_param(db, [str(v) for v in value])
    if kind == "j":
        return json_param(db, value)
    if kind == "v":
        return vector_param(db, np.asarray(value, dtype=np.float32))
    return value


def _insert_sql(db: Database, table: str, cols: list[tuple[str, str]]) -> str:
    exprs = []
    for c, k in cols:
        if k == "v":
            exprs.append(vector_sql(db, c))
        elif k == "j":
            exprs.append(jsonb_sql(db, c))
        else:
            exprs.append(f":{c}")
    return (
        f"INSERT INTO {table} ({', '.join(c for c, _ in cols)}) VALUES "
        f"({', '.join(exprs)}) ON CONFLICT DO NOTHING"
    )


def _rows(db: Database) -> int:
    with db.read() as conn:
        return sum(
            int(conn.execute(text(f"SELECT count(*) FROM {SPECS[r][0]}")).scalar()) for r in SPECS
        )


def import_jsonl(
    palace: Palace,
    database: str | None,
    path_or_file: str | os.PathLike[str] | IO[bytes],
    force: bool = False,
) -> dict[str, Any]:
    """Load a JSONL export into the named database (created when missing), keeping ids.

    Refuses a database that holds rows unless force=True; rows whose keys exist are kept.
    Returns {"database", "counts": {record type: lines read}, "inserted": {...}}.
    """
    with _open(path_or_file, "rb") as fh:
        data = fh.read()
    lines = data.splitlines()
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
    if not force and _rows(db):
        raise Conflict(
            f"database {name!r} already holds rows; import with force "
            "(`memory-palace import --force`) to add to it (existing ids are kept)"
        )

    batches: dict[str, list[dict[str, Any]]] = {r: [] for r in SPECS}
    counts = {r: 0 for r in SPECS}
    for lineno, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        try:
            rec = orjson.loads(raw)
            rtype = rec["type"]
            cols = SPECS[rtype][1]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise InvalidParams(
                f"line {lineno} is not a valid export record; nothing was "
                "imported past the previous batch"
            ) from None
        batches[rtype].append({c: _param(db, k, rec.get(c)) for c, k in cols})
        counts[rtype] += 1
    inserted = {r: 0 for r in SPECS}
    for rtype, (table, cols, _) in SPECS.items():  # parents before children
        stmt = text(_insert_sql(db, table, cols))
        rows = batches[rtype]
        for start in range(0, len(rows), BATCH):
            with db.write() as conn:
                res = conn.execute(stmt, rows[start : start + BATCH])
                inserted[rtype] += max(res.rowcount, 0)
    if db.is_postgres:
        with db.write() as conn:
            for table in SERIAL_TABLES:
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"COALESCE((SELECT max(id) FROM {table}), 0) + 1, false)"
                    )
                )
    db.cache.clear()  # in-process vector caches must reload
    return {"database": name, "counts": counts, "inserted": inserted}
