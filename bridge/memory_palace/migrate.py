"""memory-palace-sqlite-to-pg: copy a SQLite palace (this project's layout or the original Memory
Palace's v2/v3 layouts) into PostgreSQL with batched binary COPY, then verify it.

Each batch is COPYed into a temporary staging table and moved with INSERT .. ON CONFLICT DO
NOTHING in its own transaction, so an interrupted run leaves whole batches and can be re-run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from struct import Struct
from typing import Any

import numpy as np
import orjson
from psycopg2 import sql

from .config import Settings, load_settings, type_from_url
from .db import schema
from .db.engine import get_database
from .db.postgres import pg_connect
from .db.urls import mask_url, sqlite_path
from .errors import BackendUnavailable, Conflict, DatabaseMissing, InvalidParams, MemoryPalaceError
from .services.memories import content_hash

log = logging.getLogger("memory_palace.migrate")

EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)
DEFAULT_TARGET = "postgresql://localhost:5432/memory_palace"
DEFAULT_BATCH = 5000
HNSW_INDEX = (
    "CREATE INDEX IF NOT EXISTS idx_memories_embedding_hnsw ON memories "
    "USING hnsw (embedding vector_cosine_ops)"
)
STATE_KEY = "migration_in_progress"
LAYOUTS = {
    "memory-palace": "this project's SQLite schema",
    "original": "original Memory Palace v3 (JSON-text embeddings and arrays)",
    "original-v2": "original Memory Palace v2 (importance, handoff_messages, single project)",
}

# ---------------------------------------------------------------------------------------------
# Target tables: column -> binary COPY kind. Keys identify a row for verification.


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...] = ("id",)
    compare: str | None = None  # a column whose difference under the same key is a conflict
    serial: bool = True

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]

    @property
    def kinds(self) -> list[str]:
        return [k for _, k in self.columns]


TABLES: tuple[Table, ...] = (
    Table(
        "memories",
        (
            ("id", "int8"),
            ("created_at", "tstz"),
            ("updated_at", "tstz"),
            ("last_accessed_at", "tstz"),
            ("access_count", "int4"),
            ("instance_id", "text"),
            ("projects", "text[]"),
            ("memory_type", "text"),
            ("subject", "text"),
            ("content", "text"),
            ("content_hash", "text"),
            ("keywords", "text[]"),
            ("tags", "text[]"),
            ("foundational", "bool"),
            ("source_type", "text"),
            ("source_context", "text"),
            ("source_session_id", "text"),
            ("embedding", "vector"),
            ("embedding_model", "text"),
            ("embedding_dim", "int4"),
            ("expires_at", "tstz"),
            ("is_archived", "bool"),
        ),
        compare="content",
    ),
    Table(
        "memory_edges",
        (
            ("id", "int8"),
            ("created_at", "tstz"),
            ("source_id", "int8"),
            ("target_id", "int8"),
            ("relation_type", "text"),
            ("strength", "float8"),
            ("bidirectional", "bool"),
            ("metadata", "jsonb"),
            ("created_by", "text"),
            ("auto_linked", "bool"),
        ),
        compare="relation_type",
    ),
    Table(
        "messages",
        (
            ("id", "int8"),
            ("created_at", "tstz"),
            ("from_instance", "text"),
            ("to_instance", "text"),
            ("message_type", "text"),
            ("subject", "text"),
            ("content", "text"),
            ("channel", "text"),
            ("priority", "int4"),
            ("expires_at", "tstz"),
            ("delivery_status", "text"),
            ("delivered_at", "tstz"),
        ),
        compare="content",
    ),
    Table(
        "message_reads",
        (("message_id", "int8"), ("instance_id", "text"), ("read_at", "tstz")),
        key=("message_id", "instance_id"),
        serial=False,
    ),
    Table(
        "subscriptions",
        (("instance_id", "text"), ("channel", "text"), ("created_at", "tstz")),
        key=("instance_id", "channel"),
        serial=False,
    ),
)
BY_TABLE = {t.name: t for t in TABLES}

# ---------------------------------------------------------------------------------------------
# Value conversion


def to_us(value: Any) -> int | None:
    """A stored time (ISO text, naive = UTC, or datetime) as microseconds since 2000-01-01 UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip()
        try:
            dt = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
        except ValueError:
            return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - EPOCH_2000
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def us_to_iso(us: int | None) -> str | None:
    if us is None:
        return None
    from datetime import timedelta

    return (EPOCH_2000 + timedelta(microseconds=us)).isoformat(timespec="microseconds")


def str_list(value: Any) -> list[str] | None:
    """JSON-text array (or a bare string, or a list) as a list of strings."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    text = str(value).strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            return [str(v) for v in orjson.loads(text) if v is not None]
        except orjson.JSONDecodeError:
            pass
    return [text]


def json_bytes(value: Any) -> bytes | None:
    if value is None or value == "":
        return None
    if isinstance(value, (dict, list)):
        return orjson.dumps(value)
    try:
        return orjson.dumps(orjson.loads(value))
    except orjson.JSONDecodeError:
        return orjson.dumps({"text": str(value)})  # keep unparseable metadata, as a string


def vector(value: Any) -> np.ndarray | None:
    """A BLOB (float32 LE, this project) or JSON text (the original) embedding."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return np.frombuffer(raw, dtype="<f4") if raw else None
    text = str(value).strip()
    if not text or text == "null":
        return None
    return np.asarray(orjson.loads(text), dtype=np.float32)


def as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "t", "yes")
    return bool(value)


# ---------------------------------------------------------------------------------------------
# PostgreSQL binary COPY encoding (see the PostgreSQL COPY docs, "Binary Format")

_I = Struct(">i")
_H2 = Struct(">hh")
_INT8 = Struct(">iq")
_INT4 = Struct(">ii")
_F8 = Struct(">id")
_ARR1 = Struct(">iiiii")
_ARR0 = _I.pack(12) + Struct(">iii").pack(0, 0, 25)
NULL = _I.pack(-1)
TRUE = _I.pack(1) + b"\x01"
FALSE = _I.pack(1) + b"\x00"
HEADER = b"PGCOPY\n\xff\r\n\x00" + _I.pack(0) + _I.pack(0)
TRAILER = b"\xff\xff"
TEXT_OID = 25


def _text(v: str) -> bytes:
    b = v.encode("utf-8")
    return _I.pack(len(b)) + b


def _array(v: list[str]) -> bytes:
    if not v:
        return _ARR0
    parts = [_I.pack(len(b)) + b for b in (s.encode("utf-8") for s in v)]
    body = _ARR1.pack(1, 0, TEXT_OID, len(v), 1) + b"".join(parts)
    return _I.pack(len(body)) + body


def _vector(v: np.ndarray) -> bytes:
    body = _H2.pack(len(v), 0) + v.astype(">f4").tobytes()
    return _I.pack(len(body)) + body


ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "int8": lambda v: _INT8.pack(8, v),
    "int4": lambda v: _INT4.pack(4, v),
    "float8": lambda v: _F8.pack(8, v),
    "bool": lambda v: TRUE if v else FALSE,
    "text": _text,
    "text[]": _array,
    "tstz": lambda v: _INT8.pack(8, v),
    "jsonb": lambda v: _I.pack(len(v) + 1) + b"\x01" + v,
    "vector": _vector,
}


def encode_copy(rows: list[tuple[Any, ...]], kinds: list[str]) -> bytes:
    """Rows (already converted to Python values) as one binary COPY payload."""
    encoders = [ENCODERS[k] for k in kinds]
    count = Struct(">h").pack(len(kinds))
    out = [HEADER]
    append = out.append
    for row in rows:
        append(count)
        for enc, value in zip(encoders, row, strict=False):
            append(NULL if value is None else enc(value))
    append(TRAILER)
    return b"".join(out)


# ---------------------------------------------------------------------------------------------
# Source: a SQLite file in one of three layouts


class MigrationError(MemoryPalaceError):
    """The migration cannot proceed; the message names the fix."""


def _open_sqlite(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise InvalidParams(
            f"source {path} does not exist; pass --source sqlite:///path/to/"
            "memories.db (the default is the configured SQLite database)"
        )
    conn = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False
    )  # read by the pipeline thread
    conn.row_factory = None
    return conn


class Source:
    """Reads a SQLite palace and yields rows already converted to this project's schema."""

    def __init__(self, path: Path, embedding_model: str | None = None) -> None:
        self.path = path
        self.conn = _open_sqlite(path)
        self.tables = {
            r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "memories" not in self.tables:
            raise InvalidParams(
                f"{path} has no memories table: it is not a Memory Palace database. Check --source."
            )
        self.cols = {t: self._columns(t) for t in self.tables}
        mem = self.cols["memories"]
        if "palace_meta" in self.tables or "embedding_dim" in mem:
            self.layout = "memory-palace"
        elif (
            "importance" in mem
            or "handoff_messages" in self.tables
            or ("project" in mem and "projects" not in mem)
        ):
            self.layout = "original-v2"
        else:
            self.layout = "original"
        self.embedding_model = embedding_model
        self.message_tables = [t for t in ("messages", "handoff_messages") if t in self.tables]
        self._handoff_ids: dict[int, int] = {}
        self._plan_handoff_ids()
        self.dims = self._dims()

    def _columns(self, table: str) -> list[str]:
        return [r[1] for r in self.conn.execute("SELECT * FROM pragma_table_info(?)", (table,))]

    def close(self) -> None:
        self.conn.close()

    def _plan_handoff_ids(self) -> None:
        """When both messages and handoff_messages exist, merge them; a handoff id that is
        already taken gets a new id after the largest one (as the original's merge did)."""
        if self.message_tables != ["messages", "handoff_messages"]:
            return
        taken = {r[0] for r in self.conn.execute("SELECT id FROM messages")}
        top = max(
            taken | {r[0] for r in self.conn.execute("SELECT id FROM handoff_messages")}, default=0
        )
        for (hid,) in self.conn.execute("SELECT id FROM handoff_messages ORDER BY id"):
            if hid in taken:
                top += 1
                self._handoff_ids[hid] = top

    def _dims(self) -> dict[int, int]:
        """Embedding dimensions in the source with their row counts (checked before copying)."""
        if "embedding" not in self.cols["memories"]:
            return {}
        rows = self.conn.execute(
            "SELECT CASE WHEN typeof(embedding) = 'blob' THEN length(embedding) / 4 "
            "ELSE json_array_length(embedding) END AS d, count(*) FROM memories "
            "WHERE embedding IS NOT NULL AND embedding NOT IN ('', 'null') GROUP BY d"
        ).fetchall()
        return {int(d): int(n) for d, n in rows if d}

    @property
    def dim(self) -> int | None:
        if len(self.dims) > 1:
            listed = ", ".join(f"{d}-d ({n} memories)" for d, n in sorted(self.dims.items()))
            raise Conflict(
                f"the source holds embeddings of several dimensions: {listed}. pgvector needs "
                "one dimension per column. Re-embed the source with one model first "
                "(memory-palace reembed --all --execute on the SQLite database), then migrate."
            )
        return next(iter(self.dims), None)

    # -- queries per target table ------------------------------------------------------------

    def _select(self, table: str, wanted: list[str], where: str = "") -> str:
        have = self.cols.get(table, [])
        exprs = [c if c in have else "NULL" for c in wanted]
        return f"SELECT {', '.join(exprs)} FROM {table} {where} ORDER BY 1"

    def queries(self, table: str) -> list[tuple[str, Callable[[tuple[Any, ...]], tuple]]]:
        """(SQL, row converter) pairs whose rows together make up `table`."""
        if table == "memories":
            wanted = [
                "id",
                "created_at",
                "updated_at",
                "last_accessed_at",
                "access_count",
                "instance_id",
                "projects",
                "project",
                "memory_type",
                "subject",
                "content",
                "content_hash",
                "keywords",
                "tags",
                "foundational",
                "importance",
                "source_type",
                "source_context",
                "source_session_id",
                "embedding",
                "embedding_model",
                "expires_at",
                "is_archived",
            ]
            return [(self._select("memories", wanted), self._memory)]
        if table == "memory_edges":
            if "memory_edges" not in self.tables:
                return []
            have = self.cols["memory_edges"]
            meta = (
                "metadata"
                if "metadata" in have
                else ("edge_metadata" if "edge_metadata" in have else "NULL")
            )
            wanted = [
                "id",
                "created_at",
                "source_id",
                "target_id",
                "relation_type",
                "strength",
                "bidirectional",
                "created_by",
                "auto_linked",
            ]
            cols = [c if c in have else "NULL" for c in wanted] + [meta]
            # EXISTS, not IN (SELECT ..): with IN the planner probes every id pair.
            q = (
                f"SELECT {', '.join('e.' + c if c != 'NULL' else c for c in cols)} "
                "FROM memory_edges e WHERE EXISTS (SELECT 1 FROM memories m WHERE m.id = "
                "e.source_id) AND EXISTS (SELECT 1 FROM memories m WHERE m.id = e.target_id) "
                "AND e.source_id <> e.target_id ORDER BY 1"
            )
            return [(q, self._edge)]
        if table == "messages":
            wanted = [
                "id",
                "created_at",
                "from_instance",
                "to_instance",
                "message_type",
                "subject",
                "content",
                "channel",
                "priority",
                "expires_at",
                "delivery_status",
                "delivered_at",
            ]
            out = []
            for t in self.message_tables:
                conv = self._message if t == "messages" else self._handoff
                out.append((self._select(t, wanted), conv))
            return out
        if table == "message_reads":
            if "message_reads" in self.tables:
                return [
                    (
                        "SELECT r.message_id, r.instance_id, r.read_at FROM message_reads r WHERE "
                        "EXISTS (SELECT 1 FROM messages m WHERE m.id = r.message_id) "
                        "ORDER BY 1, 2",
                        self._read,
                    )
                ]
            out = []
            for t in self.message_tables:
                have = self.cols[t]
                if "read_at" not in have and "read_by" not in have:
                    continue
                by = "read_by" if "read_by" in have else "NULL"
                at = "read_at" if "read_at" in have else "NULL"
                q = (
                    f"SELECT id, {by}, {at}, to_instance, created_at FROM {t} "
                    f"WHERE {at} IS NOT NULL OR {by} IS NOT NULL ORDER BY 1"
                )
                out.append((q, self._legacy_read if t == "messages" else self._legacy_handoff_read))
            return out
        if table == "subscriptions":
            if "subscriptions" not in self.tables:
                return []
            return [
                (
                    "SELECT instance_id, channel, created_at FROM subscriptions ORDER BY 1, 2",
                    self._subscription,
                )
            ]
        raise KeyError(table)

    def count(self, table: str) -> int:
        total = 0
        for q, _ in self.queries(table):
            total += int(self.conn.execute(f"SELECT count(*) FROM ({q})").fetchone()[0])
        return total

    def orphans(self) -> dict[str, int]:
        """Rows the source holds but cannot be copied (edges to missing memories, ...)."""
        out = {}
        if "memory_edges" in self.tables:
            allq = int(self.conn.execute("SELECT count(*) FROM memory_edges").fetchone()[0])
            out["memory_edges"] = allq - self.count("memory_edges")
        if "message_reads" in self.tables:
            allq = int(self.conn.execute("SELECT count(*) FROM message_reads").fetchone()[0])
            out["message_reads"] = allq - self.count("message_reads")
        return {k: v for k, v in out.items() if v}

    def rows(self, table: str, batch_size: int) -> Iterator[list[tuple[Any, ...]]]:
        for q, conv in self.queries(table):
            cur = self.conn.execute(q)
            while True:
                chunk = cur.fetchmany(batch_size)
                if not chunk:
                    break
                yield [conv(r) for r in chunk]

    # -- converters --------------------------------------------------------------------------

    def _memory(self, r: tuple[Any, ...]) -> tuple[Any, ...]:
        (
            mid,
            created,
            updated,
            accessed,
            access_count,
            instance,
            projects,
            project,
            mtype,
            subject,
            content,
            digest,
            keywords,
            tags,
            foundational,
            importance,
            stype,
            sctx,
            ssid,
            emb,
            emodel,
            expires,
            archived,
        ) = r
        content = "" if content is None else str(content)
        if projects is not None:
            plist = str_list(projects) or ["life"]
        elif project:
            plist = [str(project)]
        else:
            plist = ["life"]
        if foundational is None and importance is not None:
            found = int(importance) >= 8
        else:
            found = as_bool(foundational)
        vec = vector(emb)
        dim = None
        model = None
        if vec is not None:
            dim = len(vec)
            model = (
                emodel
                if self.layout == "memory-palace" and emodel
                else (emodel or self.embedding_model or "unknown")
            )
        return (
            int(mid),
            to_us(created) or to_us(datetime.now(UTC)),
            to_us(updated),
            to_us(accessed),
            int(access_count or 0),
            instance,
            plist,
            mtype,
            subject,
            content,
            digest or content_hash(content),
            str_list(keywords),
            str_list(tags),
            found,
            stype,
            sctx,
            ssid,
            vec,
            model,
            dim,
            to_us(expires),
            as_bool(archived),
        )

    def _edge(self, r: tuple[Any, ...]) -> tuple[Any, ...]:
        eid, created, src, tgt, rel, strength, bidi, by, auto, meta = r
        meta_b = json_bytes(meta)
        if auto is None:
            parsed = orjson.loads(meta_b) if meta_b else None
            auto = bool(parsed.get("auto_linked")) if isinstance(parsed, dict) else False
        s = 1.0 if strength is None else min(1.0, max(0.0, float(strength)))
        return (
            int(eid),
            to_us(created) or to_us(datetime.now(UTC)),
            int(src),
            int(tgt),
            rel or "relates_to",
            s,
            as_bool(bidi),
            meta_b,
            by,
            as_bool(auto),
        )

    def _message(self, r: tuple[Any, ...], mid: int | None = None) -> tuple[Any, ...]:
        (
            i,
            created,
            frm,
            to,
            mtype,
            subject,
            content,
            channel,
            priority,
            expires,
            status,
            delivered,
        ) = r
        prio = min(10, max(0, int(priority or 0)))
        return (
            int(mid if mid is not None else i),
            to_us(created) or to_us(datetime.now(UTC)),
            frm or "unknown",
            to or "all",
            mtype or "message",
            subject,
            "" if content is None else content,
            channel,
            prio,
            to_us(expires),
            status or "pending",
            to_us(delivered),
        )

    def _handoff(self, r: tuple[Any, ...]) -> tuple[Any, ...]:
        return self._message(r, self._handoff_ids.get(int(r[0]), int(r[0])))

    def _read(self, r: tuple[Any, ...]) -> tuple[Any, ...]:
        return (int(r[0]), str(r[1]), to_us(r[2]) or to_us(datetime.now(UTC)))

    def _legacy_read(self, r: tuple[Any, ...], mid: int | None = None) -> tuple[Any, ...]:
        i, by, at, to, created = r
        reader = by or (to if to and to != "all" else "unknown")
        return (int(mid if mid is not None else i), str(reader), to_us(at) or to_us(created))

    def _legacy_handoff_read(self, r: tuple[Any, ...]) -> tuple[Any, ...]:
        return self._legacy_read(r, self._handoff_ids.get(int(r[0]), int(r[0])))

    def _subscription(self, r: tuple[Any, ...]) -> tuple[Any, ...]:
        return (str(r[0]), str(r[1]), to_us(r[2]) or to_us(datetime.now(UTC)))


# ---------------------------------------------------------------------------------------------
# Canonical form for the sample checksum (same for source rows and rows read back from PG)


def canonical(table: Table, row: tuple[Any, ...]) -> bytes:
    out = []
    for (_, kind), v in zip(table.columns, row, strict=False):
        if v is None:
            out.append(None)
        elif kind == "tstz":
            out.append(v if isinstance(v, int) else to_us(v))
        elif kind == "vector":
            arr = np.asarray(orjson.loads(v) if isinstance(v, str) else v, dtype=np.float32)
            out.append(hashlib.sha256(arr.astype("<f4").tobytes()).hexdigest())
        elif kind == "jsonb":
            obj = orjson.loads(v) if isinstance(v, (bytes, str)) else v
            out.append(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode())
        elif kind == "bool":
            out.append(bool(v))
        elif kind == "float8":
            out.append(float(v))
        elif kind == "text[]":
            out.append(list(v))
        else:
            out.append(v)
    return orjson.dumps(out)


# ---------------------------------------------------------------------------------------------
# The migration


@dataclass
class TableReport:
    source: int = 0
    inserted: int = 0
    present: int = 0
    conflicts: list[Any] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.present == self.source and not self.conflicts


def _sample_positions(count: int, sample: int) -> set[int]:
    if count <= 0 or sample <= 0:
        return set()
    if count <= sample:
        return set(range(count))
    step = count / sample
    return {int(i * step) for i in range(sample)}


def _target_rows(cur: Any) -> dict[str, int]:
    out = {}
    for t in TABLES:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (t.name,))
        if cur.fetchone()[0]:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t.name)))
            out[t.name] = int(cur.fetchone()[0])
    return out


def _progress(total: int, enabled: bool | None) -> Any:
    from tqdm import tqdm

    enabled = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(
        total=total,
        unit=" rows",
        unit_scale=True,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def migrate(
    source_url: str,
    target_url: str,
    *,
    batch_size: int = DEFAULT_BATCH,
    force: bool = False,
    dry_run: bool = False,
    embedding_model: str | None = None,
    sample: int = 500,
    progress: bool | None = None,
    default_dim: int = 384,
) -> dict[str, Any]:
    """Copy `source_url` (SQLite) into `target_url` (PostgreSQL) and verify. Returns a report;
    report["ok"] is True only when every table's rows are all present and the sample matches.
    """
    if type_from_url(source_url) != "sqlite":
        raise InvalidParams(
            f"--source must be a SQLite URL (sqlite:///path/memories.db), got "
            f"{mask_url(source_url)}"
        )
    if type_from_url(target_url) != "postgres":
        raise InvalidParams(
            f"--target must be a PostgreSQL URL (postgresql://user:pass@host:"
            f"5432/memory_palace), got {mask_url(target_url)}"
        )
    if batch_size < 1:
        raise InvalidParams("--batch-size must be at least 1")
    path = sqlite_path(source_url).resolve()
    src = Source(path, embedding_model)
    try:
        return _run(
            src,
            target_url,
            batch_size=batch_size,
            force=force,
            dry_run=dry_run,
            sample=sample,
            progress=progress,
            default_dim=default_dim,
        )
    finally:
        src.close()


def _dry_run(
    src: Source, target_url: str, counts: dict[str, int], report: dict[str, Any]
) -> dict[str, Any]:
    try:
        conn = pg_connect(target_url)
    except DatabaseMissing:
        report["target_state"] = "missing: it will be created"
        report["ok"] = True
        return report
    except BackendUnavailable as exc:
        report["target_state"] = f"unreachable: {exc.message}"
        report["ok"] = False
        return report
    try:
        with conn.cursor() as cur:
            rows = _target_rows(cur)
    finally:
        conn.close()
    report["target_rows"] = rows
    report["target_state"] = "has rows: --force is needed" if any(rows.values()) else "empty: ready"
    report["ok"] = True
    return report


def _run(
    src: Source,
    target_url: str,
    *,
    batch_size: int,
    force: bool,
    dry_run: bool,
    sample: int,
    progress: bool | None,
    default_dim: int,
) -> dict[str, Any]:
    dim = src.dim  # raises on mixed dimensions
    counts = {t.name: src.count(t.name) for t in TABLES}
    report: dict[str, Any] = {
        "source": str(src.path),
        "target": mask_url(target_url),
        "layout": src.layout,
        "layout_description": LAYOUTS[src.layout],
        "dimension": dim,
        "source_rows": counts,
        "skipped_orphans": src.orphans(),
        "dry_run": dry_run,
        "notes": [],
    }
    if src.layout != "memory-palace" and dim:
        model = src.embedding_model or "unknown"
        report["embedding_model"] = model
        report["notes"].append(
            f"embeddings from the original carry embedding_model={model!r}. If that is not the "
            "embedder configured here, run `memory-palace reembed --all --execute` (tool "
            "memory_reembed with all_memories=true, dry_run=false) against the target."
        )
    if dry_run:
        return _dry_run(src, target_url, counts, report)

    db = get_database(target_url)  # creates the database and enables pgvector when missing
    stored = schema.vector_dim(db) if schema.schema_version(db) else None
    if stored is not None and dim is not None and stored != dim:
        raise Conflict(
            f"the source's embeddings are {dim}-d but the target {db.masked_url} stores "
            f"{stored}-d vectors. Migrate into a new database (--target .../memory_palace_new), "
            "or re-embed the source with the target's model first."
        )
    schema.migrate(db, stored or dim or default_dim)

    conn = pg_connect(target_url, autocommit=False)
    started = time.perf_counter()
    try:
        cur = conn.cursor()
        cur.execute("SELECT value FROM palace_meta WHERE key = %s", (STATE_KEY,))
        row = cur.fetchone()
        resuming = row is not None and row[0] == str(src.path)
        before = _target_rows(cur)
        if any(before.values()) and not (force or resuming):
            raise Conflict(
                f"the target {db.masked_url} already holds rows ({before}). Re-run with --force "
                "to copy into it anyway: rows whose ids exist are kept, the rest are added."
            )
        cur.execute(
            "INSERT INTO palace_meta(key, value) VALUES (%s, %s) ON CONFLICT (key) "
            "DO UPDATE SET value = excluded.value",
            (STATE_KEY, str(src.path)),
        )
        fresh_memories = before.get("memories", 0) == 0
        if fresh_memories and counts["memories"]:
            # Building the HNSW index once after the copy is far faster than per row.
            cur.execute("DROP INDEX IF EXISTS idx_memories_embedding_hnsw")
        conn.commit()

        bar = _progress(sum(counts.values()), progress)
        tables: dict[str, TableReport] = {}
        samples: dict[str, list[tuple[Any, ...]]] = {}
        keys: dict[str, list[tuple[Any, ...]]] = {}
        try:
            for table in TABLES:
                bar.set_description(table.name)
                tables[table.name], samples[table.name], keys[table.name] = _copy_table(
                    conn, src, table, counts[table.name], batch_size, sample, bar
                )
        finally:
            bar.close()
        copy_seconds = time.perf_counter() - started

        index_started = time.perf_counter()
        conn.autocommit = True
        cur.execute("SET maintenance_work_mem = '512MB'")
        # pgvector >= 0.6 builds HNSW in parallel; the setting is ignored where unsupported.
        cur.execute(
            "SET max_parallel_maintenance_workers = %s",
            (max(1, min(4, (os.cpu_count() or 2) - 1)),),
        )
        cur.execute(HNSW_INDEX)
        for table in TABLES:
            if table.serial:
                cur.execute(
                    sql.SQL(
                        "SELECT setval(pg_get_serial_sequence({t}, 'id'), "
                        "COALESCE((SELECT max(id) FROM {i}), 0) + 1, false)"
                    ).format(t=sql.Literal(table.name), i=sql.Identifier(table.name))
                )
        index_seconds = time.perf_counter() - index_started

        checks = {}
        for table in TABLES:
            tables[table.name].present = _count_present(cur, table, keys[table.name])
            checks[table.name] = _checksum(cur, table, samples[table.name])
        ok = all(t.ok for t in tables.values()) and all(c["ok"] for c in checks.values())
        if ok:
            cur.execute("DELETE FROM palace_meta WHERE key = %s", (STATE_KEY,))
        total_rows = sum(counts.values())
        report.update(
            {
                "tables": {
                    n: {
                        "source": t.source,
                        "inserted": t.inserted,
                        "present": t.present,
                        "conflicts": t.conflicts,
                        "ok": t.ok,
                        "rows_per_s": round(t.source / t.seconds) if t.seconds else None,
                    }
                    for n, t in tables.items()
                },
                "checksums": checks,
                "ok": ok,
                "resumed": resuming,
                "forced": force,
                "copy_seconds": round(copy_seconds, 3),
                "index_seconds": round(index_seconds, 3),
                "total_seconds": round(time.perf_counter() - started, 3),
                "rows_per_s": round(total_rows / copy_seconds) if copy_seconds else None,
                "memories_per_s": (
                    round(counts["memories"] / tables["memories"].seconds)
                    if tables["memories"].seconds
                    else None
                ),
            }
        )
        return report
    finally:
        conn.close()


def _copy_table(
    conn: Any, src: Source, table: Table, count: int, batch_size: int, sample: int, bar: Any
) -> tuple[TableReport, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    rep = TableReport(source=count)
    wanted = _sample_positions(count, sample)
    samples: list[tuple[Any, ...]] = []
    keys: list[tuple[Any, ...]] = []
    key_idx = [table.names.index(k) for k in table.key]
    stage = sql.Identifier(f"mp_stage_{table.name}")
    target = sql.Identifier(table.name)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.names)
    copy_sql = sql.SQL("COPY {s} ({c}) FROM STDIN WITH (FORMAT binary)").format(s=stage, c=cols)
    move_sql = sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM {s} ON CONFLICT DO NOTHING").format(
        t=target, c=cols, s=stage
    )
    conflict_sql = None
    if table.compare:
        conflict_sql = sql.SQL(
            "SELECT s.id FROM {s} s JOIN {t} t ON t.id = s.id "
            "WHERE t.{c} IS DISTINCT FROM s.{c} LIMIT 5"
        ).format(s=stage, t=target, c=sql.Identifier(table.compare))
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {s} (LIKE {t}) ON COMMIT DELETE ROWS").format(
                s=stage, t=target
            )
        )
        conn.commit()
        for batch, payload in _pipelined(src, table, batch_size, wanted, samples, keys, key_idx):
            cur.copy_expert(copy_sql, io.BytesIO(payload))
            cur.execute(move_sql)
            rep.inserted += cur.rowcount
            if conflict_sql is not None and cur.rowcount < batch:
                cur.execute(conflict_sql)
                rep.conflicts.extend(r[0] for r in cur.fetchall())
            conn.commit()
            bar.update(batch)
    rep.seconds = time.perf_counter() - started
    return rep, samples, keys


def _pipelined(
    src: Source,
    table: Table,
    batch_size: int,
    wanted: set[int],
    samples: list[tuple[Any, ...]],
    keys: list[tuple[Any, ...]],
    key_idx: list[int],
) -> Iterator[tuple[int, bytes]]:
    """(rows, COPY payload) per batch. A thread reads and encodes the next batches while the
    caller's COPY runs in PostgreSQL, so Python and the server work at the same time."""
    out: queue.Queue[Any] = queue.Queue(maxsize=3)
    stop = threading.Event()

    def produce() -> None:
        position = 0
        try:
            for batch in src.rows(table.name, batch_size):
                for row in batch:
                    if position in wanted:
                        samples.append(row)
                    position += 1
                keys.extend(tuple(row[i] for i in key_idx) for row in batch)
                item = (len(batch), encode_copy(batch, table.kinds))
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            out.put(None)
        except BaseException as exc:
            out.put(exc)

    worker = threading.Thread(target=produce, name=f"migrate-{table.name}", daemon=True)
    worker.start()
    try:
        while True:
            item = out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def _count_present(cur: Any, table: Table, keys: list[tuple[Any, ...]]) -> int:
    if not keys:
        return 0
    if table.key == ("id",):
        cur.execute(
            sql.SQL(
                "SELECT count(*) FROM {t} JOIN unnest(%s::bigint[]) AS k(id) USING (id)"
            ).format(t=sql.Identifier(table.name)),
            ([k[0] for k in keys],),
        )
    else:
        a, b = table.key
        types = [
            ("bigint" if table.columns[table.names.index(c)][1] == "int8" else "text")
            for c in table.key
        ]
        cur.execute(
            sql.SQL(
                "SELECT count(*) FROM {t} x JOIN unnest(%s::{ta}[], %s::{tb}[]) AS k(a, b) "
                "ON x.{a} = k.a AND x.{b} = k.b"
            ).format(
                t=sql.Identifier(table.name),
                ta=sql.SQL(types[0]),
                tb=sql.SQL(types[1]),
                a=sql.Identifier(a),
                b=sql.Identifier(b),
            ),
            ([k[0] for k in keys], [k[1] for k in keys]),
        )
    return int(cur.fetchone()[0])


def _checksum(cur: Any, table: Table, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Compare a sample of source rows with the same rows read back from the target."""
    if not rows:
        return {"ok": True, "sampled": 0}
    key_idx = [table.names.index(k) for k in table.key]
    cols = sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(c)) if k == "vector" else sql.Identifier(c)
        for c, k in table.columns
    )
    cond = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in table.key)
    query = sql.SQL("SELECT {c} FROM {t} WHERE {w}").format(
        c=cols, t=sql.Identifier(table.name), w=cond
    )
    src_digest = hashlib.sha256()
    dst_digest = hashlib.sha256()
    mismatched: list[Any] = []
    for row in rows:
        key = tuple(row[i] for i in key_idx)
        cur.execute(query, key)
        got = cur.fetchone()
        a = canonical(table, row)
        b = canonical(table, tuple(got)) if got else b"<missing>"
        src_digest.update(a)
        dst_digest.update(b)
        if a != b and len(mismatched) < 5:
            mismatched.append(key[0] if len(key) == 1 else list(key))
    ok = src_digest.digest() == dst_digest.digest()
    return {
        "ok": ok,
        "sampled": len(rows),
        "sha256": src_digest.hexdigest()[:16],
        **({} if ok else {"mismatched": mismatched}),
    }


# ---------------------------------------------------------------------------------------------
# CLI


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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="memory-palace-sqlite-to-pg",
        description="Copy a SQLite Memory Palace (this project's or the original's layout) into "
        "PostgreSQL + pgvector, then verify row counts and a checksum of a sample. "
        "The target database, extension and tables are created when missing.",
    )
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
        "--dry-run",
        action="store_true",
        help="detect the layout, count rows and check the target; write nothing",
    )
    ap.add_argument(
        "--force",
        action="store_true",
        help="copy even when the target already holds rows (existing ids are kept)",
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
        default=500,
        help="rows per table compared by checksum after the copy (default 500)",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument(
        "--data-dir",
        help="Memory Palace data dir holding config.json "
        "(default: $MEMORY_PALACE_DATA_DIR or ~/.memory-palace)",
    )
    return ap


def _print_report(report: dict[str, Any], out: Any) -> None:
    w = out.write
    w(f"source: {report['source']} ({report['layout_description']})\n")
    w(f"target: {report['target']}\n")
    if report.get("dimension"):
        w(f"embedding dimension: {report['dimension']}\n")
    if report["dry_run"]:
        w("dry run: nothing written\n")
        for name, n in report["source_rows"].items():
            w(f"  {name:<14} {n:>9} rows to copy\n")
        w(f"target: {report.get('target_state')}\n")
    else:
        for name, t in report["tables"].items():
            mark = "✓" if t["ok"] else "✗"
            chk = report["checksums"][name]
            w(
                f"{mark} {name:<14} source {t['source']:>9}  in target {t['present']:>9}  "
                f"new {t['inserted']:>9}  sample {chk['sampled']} "
                f"{'matches' if chk['ok'] else 'DIFFERS ' + str(chk.get('mismatched'))}\n"
            )
            if t["conflicts"]:
                w(f"    ids already used in the target by different rows: {t['conflicts']}\n")
        w(
            f"copied in {report['copy_seconds']} s ({report['rows_per_s']} rows/s, "
            f"{report['memories_per_s']} memories/s); index and sequences "
            f"{report['index_seconds']} s\n"
        )
    for name, n in report.get("skipped_orphans", {}).items():
        w(f"note: {n} {name} rows point at rows that do not exist and were skipped\n")
    for note in report.get("notes", []):
        w(f"note: {note}\n")
    if not report["dry_run"]:
        w(
            "migration verified\n"
            if report["ok"]
            else "verification FAILED: see the ✗ lines above\n"
        )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.data_dir)
        src_default, dst_default = default_urls(settings)
        source = _as_url(args.source) if args.source else src_default
        target = args.target or dst_default
        report = migrate(
            source,
            target,
            batch_size=args.batch_size,
            force=args.force,
            dry_run=args.dry_run,
            embedding_model=args.embedding_model,
            sample=args.sample,
            progress=False if args.no_progress else None,
            default_dim=settings.embedding_dimension or 384,
        )
    except MemoryPalaceError as exc:
        sys.stderr.write(f"memory-palace-sqlite-to-pg: {exc.code}: {exc.message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(
            "interrupted: the target holds whole batches only; re-run the same command to finish\n"
        )
        return 130
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        _print_report(report, sys.stdout)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
