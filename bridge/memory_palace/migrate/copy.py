"""Rows into PostgreSQL: binary COPY encoding by column kind (see the PostgreSQL COPY docs,
"Binary Format", and pgvector's vector_recv), and the batch loop.

Each batch is COPYed into a temporary staging table and moved with INSERT .. ON CONFLICT DO
NOTHING in its own transaction, so an interrupted run leaves whole batches and can be re-run.
Rows are checked before they get here (rows.py); should PostgreSQL still refuse a batch for
its data, the batch is split until the refused rows are found, and only they are left out.
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from struct import Struct
from typing import Any

import numpy as np
import orjson
import psycopg2
from psycopg2 import sql

from ..db.tables import Table

EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)  # PostgreSQL's timestamp epoch
TEXT_OID = 25

_I = Struct(">i")
_INT8 = Struct(">iq")
_INT4 = Struct(">ii")
_F8 = Struct(">id")
_VEC = Struct(">hh")
_ARR1 = Struct(">iiiii")
_ARR0 = _I.pack(12) + Struct(">iii").pack(0, 0, TEXT_OID)
_COUNT = Struct(">h")
NULL = _I.pack(-1)
TRUE = _I.pack(1) + b"\x01"
FALSE = _I.pack(1) + b"\x00"
HEADER = b"PGCOPY\n\xff\r\n\x00" + _I.pack(0) + _I.pack(0)
TRAILER = b"\xff\xff"
JSONB_VERSION = b"\x01"

# SQLSTATE classes of a refusal caused by the data (22 data exception, 23 constraint,
# 54 program limit such as the tsvector size); anything else stops the run.
REFUSED_CLASSES = ("22", "23", "54")


def _text(v: str) -> bytes:
    b = v.encode("utf-8")
    return _I.pack(len(b)) + b


def _strings(v: list[str]) -> bytes:
    if not v:
        return _ARR0
    parts = [_I.pack(len(b)) + b for b in (s.encode("utf-8") for s in v)]
    body = _ARR1.pack(1, 0, TEXT_OID, len(v), 1) + b"".join(parts)
    return _I.pack(len(body)) + body


def _json(v: Any) -> bytes:
    b = orjson.dumps(v)
    return _I.pack(len(b) + 1) + JSONB_VERSION + b


def _time(v: datetime) -> bytes:
    d = v - EPOCH_2000
    return _INT8.pack(8, (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds)


def _vector(v: np.ndarray) -> bytes:
    body = _VEC.pack(len(v), 0) + v.astype(">f4").tobytes()
    return _I.pack(len(body)) + body


#: Column kind (db/tables.py) -> binary COPY encoder of a non-NULL Python value.
ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "id": lambda v: _INT8.pack(8, v),
    "ref": lambda v: _INT8.pack(8, v),
    "int": lambda v: _INT4.pack(4, v),
    "float": lambda v: _F8.pack(8, v),
    "bool": lambda v: TRUE if v else FALSE,
    "text": _text,
    "time": _time,
    "strings": _strings,
    "json": _json,
    "vector": _vector,
}


def encode_copy(table: Table, rows: list[tuple[Any, ...]]) -> bytes:
    """Rows (Python values in the table's column order) as one binary COPY payload."""
    encoders = [ENCODERS[c.kind] for c in table.columns]
    count = _COUNT.pack(len(encoders))
    out = [HEADER]
    append = out.append
    for row in rows:
        append(count)
        for enc, value in zip(encoders, row, strict=True):
            append(NULL if value is None else enc(value))
    append(TRAILER)
    return b"".join(out)


@dataclass
class Moved:
    inserted: int = 0
    conflicts: list[Any] = field(default_factory=list)  # ids taken by different rows
    refused: list[tuple[tuple[Any, ...], str]] = field(default_factory=list)  # (row, why)

    def add(self, other: Moved) -> Moved:
        self.inserted += other.inserted
        self.conflicts += other.conflicts
        self.refused += other.refused
        return self


class Stage:
    """One table's staging table and statements, on a connection that is not autocommit."""

    def __init__(self, conn: Any, table: Table) -> None:
        self.conn = conn
        self.table = table
        stage = sql.Identifier(f"mp_stage_{table.name}")
        target = sql.Identifier(table.name)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.names)
        self.create = sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {s} (LIKE {t}) ON COMMIT DELETE ROWS"
        ).format(s=stage, t=target)
        self.copy = sql.SQL("COPY {s} ({c}) FROM STDIN WITH (FORMAT binary)").format(
            s=stage, c=cols
        )
        self.move_sql = sql.SQL(
            "INSERT INTO {t} ({c}) SELECT {c} FROM {s} ON CONFLICT DO NOTHING"
        ).format(t=target, c=cols, s=stage)
        self.conflict_sql = None
        if table.compare:
            self.conflict_sql = sql.SQL(
                "SELECT s.id FROM {s} s JOIN {t} t ON t.id = s.id "
                "WHERE t.{c} IS DISTINCT FROM s.{c} LIMIT 5"
            ).format(s=stage, t=target, c=sql.Identifier(table.compare))

    def prepare(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute(self.create)
        self.conn.commit()

    def move(self, rows: list[tuple[Any, ...]], payload: bytes | None = None) -> Moved:
        """Copy `rows` in one transaction; on a refusal for the data, split them to find and
        leave out the refused rows."""
        try:
            return self._move(rows, payload or encode_copy(self.table, rows))
        except psycopg2.Error as exc:
            self.conn.rollback()
            if not (exc.pgcode or "").startswith(REFUSED_CLASSES):
                raise
            if len(rows) == 1:
                return Moved(refused=[(rows[0], str(exc).strip().splitlines()[0])])
            half = len(rows) // 2
            return self.move(rows[:half]).add(self.move(rows[half:]))

    def _move(self, rows: list[tuple[Any, ...]], payload: bytes) -> Moved:
        moved = Moved()
        with self.conn.cursor() as cur:
            # One read of the whole payload: psycopg2 reads 8 kB at a time by default, and
            # each read waits for the GIL the reader thread holds.
            cur.copy_expert(self.copy, io.BytesIO(payload), size=len(payload))
            cur.execute(self.move_sql)
            moved.inserted = cur.rowcount
            if self.conflict_sql is not None and cur.rowcount < len(rows):
                cur.execute(self.conflict_sql)
                moved.conflicts = [r[0] for r in cur.fetchall()]
        self.conn.commit()
        return moved


def pipelined(
    batches: Iterator[tuple[list[tuple[Any, ...]], int]], table: Table
) -> Iterator[tuple[list[tuple[Any, ...]], bytes, int]]:
    """(rows, COPY payload, source rows read) per batch of (rows, source rows read). A thread
    reads, checks and encodes the next batches while the caller's COPY runs in PostgreSQL, so
    Python and the server work at the same time. An exception in the thread is raised here."""
    out: queue.Queue[Any] = queue.Queue(maxsize=3)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for rows, seen in batches:
                if not put((rows, encode_copy(table, rows) if rows else b"", seen)):
                    return
            put(None)
        except BaseException as exc:  # handed to the caller, who raises it
            put(exc)

    worker = threading.Thread(target=produce, name=f"migrate-{table.name}", daemon=True)
    worker.start()
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)
