"""The source: a SQLite palace in one of three layouts, read as parts of the target tables.

Detected from the tables and columns present:

    memory-palace   this project's schema (`palace_meta`, `embedding_dim`)
    original        the original Memory Palace v3: JSON-text embeddings, `edge_metadata`,
                    a read flag (`read_at`, `read_by`) on each message
    original-v2     the original's v2: `importance` instead of `foundational`,
                    `handoff_messages`, a single `project`

Each target table (`db/tables.py`, exported tables) comes from one or more `Part`s: a query that
selects the table's columns in order (NULL where the source lacks one) plus extra columns, and a
`fix` that applies the layout's rules to the decoded values (importance 8+ is foundational, a
single project becomes a list, a message's read flag becomes a read record, ...). Decoding and
checking values is `rows.py`'s job; this module knows only what the layouts look like.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..db.tables import EXPORTED, Table
from ..errors import BackendUnavailable, InvalidParams
from ..services.memories import content_hash

LAYOUTS = {
    "memory-palace": "this project's SQLite schema",
    "original": "original Memory Palace v3 (JSON-text embeddings and arrays)",
    "original-v2": "original Memory Palace v2 (importance, handoff_messages, single project)",
}

Record = dict[str, Any]


@dataclass(frozen=True)
class Part:
    """One source query whose rows, after `fix`, are rows of a target table."""

    source: str  # the source table, named in bad-row reports
    sql: str  # the target table's columns in order, then `extras`
    extras: tuple[tuple[str, str], ...] = ()  # (name, kind) of columns only `fix` reads
    fix: Callable[[Record], None] | None = None


def _tolerant_text(raw: bytes) -> str:
    # Invalid UTF-8 survives as lone surrogates, which rows.py reports as a bad row.
    return raw.decode("utf-8", "surrogateescape")


def open_sqlite(path: Path) -> sqlite3.Connection:
    """The source file, read-only. InvalidParams when it is missing or not SQLite."""
    if not path.exists():
        raise InvalidParams(
            f"source {path} does not exist; pass --source sqlite:///path/to/memories.db "
            "(the default is the configured SQLite database)"
        )
    if path.is_dir():
        raise InvalidParams(f"source {path} is a directory; pass the SQLite file with --source")
    try:
        # Read by the pipeline's reader thread, hence check_same_thread=False.
        conn = sqlite3.connect(
            f"{path.as_uri()}?mode=ro", uri=True, timeout=30, check_same_thread=False
        )
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise InvalidParams(
            f"source {path} is not a SQLite database ({exc}); check --source"
        ) from exc
    return conn


def detect(tables: set[str], memory_columns: list[str]) -> str:
    if "palace_meta" in tables or "embedding_dim" in memory_columns:
        return "memory-palace"
    if (
        "importance" in memory_columns
        or "handoff_messages" in tables
        or ("project" in memory_columns and "projects" not in memory_columns)
    ):
        return "original-v2"
    return "original"


def parent_of(reference: str) -> tuple[str, str]:
    """'memories(id)' -> ('memories', 'id')."""
    table, _, column = reference.partition("(")
    return table, column.rstrip(")")


def _hash(content: str) -> str | None:
    try:
        return content_hash(content)
    except UnicodeEncodeError:  # invalid UTF-8: the row is reported as bad anyway
        return None


class Source:
    """A SQLite palace, read as parts of this project's tables."""

    def __init__(self, path: Path, embedding_model: str | None = None) -> None:
        self.path = path
        self.conn = open_sqlite(path)
        with self.reading():
            self.tables = {
                r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if "memories" not in self.tables:
                raise InvalidParams(
                    f"{path} has no memories table: it is not a Memory Palace database. "
                    "Check --source."
                )
            self.cols = {t: self._columns(t) for t in self.tables}
            self.layout = detect(self.tables, self.cols["memories"])
            self.message_tables = [t for t in ("messages", "handoff_messages") if t in self.tables]
            self.handoff_ids = self._plan_handoff_ids()
        self.embedding_model = embedding_model

    def meta(self, key: str) -> str | None:
        """A palace_meta value of this project's layout (None elsewhere)."""
        if "palace_meta" not in self.tables:
            return None
        with self.reading():
            row = self.conn.execute(
                "SELECT value FROM palace_meta WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else str(row[0])

    def _columns(self, table: str) -> list[str]:
        return [r[1] for r in self.conn.execute("SELECT * FROM pragma_table_info(?)", (table,))]

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def reading(self) -> Iterator[None]:
        """sqlite3 errors while reading the source as ours, naming the file."""
        try:
            yield
        except sqlite3.Error as exc:
            raise BackendUnavailable(
                f"reading the source {self.path} failed: {exc}. Check the file with "
                f"sqlite3 {self.path} 'PRAGMA integrity_check'"
            ) from exc

    def _plan_handoff_ids(self) -> dict[int, int]:
        """When both messages and handoff_messages exist, merge them; a handoff id that is
        already taken gets a new id after the largest one (as the original's merge did)."""
        if self.message_tables != ["messages", "handoff_messages"]:
            return {}
        taken = {r[0] for r in self.conn.execute("SELECT id FROM messages")}
        handoff = [r[0] for r in self.conn.execute("SELECT id FROM handoff_messages ORDER BY id")]
        top = max(taken | set(handoff), default=0)
        moved = {}
        for hid in handoff:
            if hid in taken:
                top += 1
                moved[hid] = top
        return moved

    def dims(self) -> dict[int, int]:
        """Embedding dimensions in the source with their row counts (unreadable ones left out:
        those rows are reported as bad)."""
        if "embedding" not in self.cols["memories"]:
            return {}
        with self.reading():
            rows = self.conn.execute(
                "SELECT CASE WHEN typeof(embedding) = 'blob' THEN length(embedding) / 4 "
                "WHEN json_valid(embedding) THEN json_array_length(embedding) END AS d, "
                "count(*) FROM memories WHERE embedding IS NOT NULL "
                "AND embedding NOT IN ('', 'null', x'') GROUP BY d"
            ).fetchall()
        return {int(d): int(n) for d, n in rows if d}

    # -- queries -------------------------------------------------------------------------------

    def parts(self, table: Table) -> list[Part]:
        """The parts whose rows together make up `table`."""
        special = {
            "memories": self._memories,
            "memory_edges": self._edges,
            "messages": self._messages,
            "message_reads": self._reads,
        }
        return special.get(table.name, self._plain)(table)

    def _select(
        self,
        source: str,
        table: Table,
        rename: dict[str, str] | None = None,
        extras: tuple[tuple[str, str], ...] = (),
        where: list[str] | None = None,
    ) -> str:
        have = self.cols.get(source, [])
        rename = rename or {}

        def expr(name: str) -> str:
            column = rename.get(name, name)
            return f"t.{column}" if column in have else "NULL"

        exprs = [expr(n) for n in table.names] + [expr(n) for n, _ in extras]
        cond = f" WHERE {' AND '.join(where)}" if where else ""
        order = ", ".join(str(table.names.index(k) + 1) for k in table.key)
        return f"SELECT {', '.join(exprs)} FROM {source} t{cond} ORDER BY {order}"

    def _exists(self, table: Table) -> list[str]:
        """Conditions keeping rows whose references point at rows the source holds."""
        conds = []
        for col in table.columns:
            if col.references:
                parent, key = parent_of(col.references)
                # EXISTS, not IN (SELECT ..): with IN the planner probes every id pair.
                conds.append(f"EXISTS (SELECT 1 FROM {parent} p WHERE p.{key} = t.{col.name})")
        return conds

    def _plain(self, table: Table) -> list[Part]:
        if table.name not in self.tables:
            return []
        return [Part(table.name, self._select(table.name, table, where=self._exists(table)))]

    def _memories(self, table: Table) -> list[Part]:
        extras = (("project", "text"), ("importance", "int"))
        sql = self._select("memories", table, extras=extras)
        return [Part("memories", sql, extras, self._fix_memory)]

    def _edges(self, table: Table) -> list[Part]:
        if "memory_edges" not in self.tables:
            return []
        have = self.cols["memory_edges"]
        rename = {"metadata": "edge_metadata"} if "metadata" not in have else {}
        where = [*self._exists(table), "t.source_id <> t.target_id"]
        sql = self._select("memory_edges", table, rename, where=where)
        return [Part("memory_edges", sql, fix=_fix_edge)]

    def _messages(self, table: Table) -> list[Part]:
        return [
            Part(t, self._select(t, table), fix=partial(self._fix_message, handoff=t != "messages"))
            for t in self.message_tables
        ]

    def _reads(self, table: Table) -> list[Part]:
        if "message_reads" in self.tables:
            return self._plain(table)
        parts = []
        rename = {"message_id": "id", "instance_id": "read_by"}
        extras = (("to_instance", "text"), ("created_at", "time"))
        for t in self.message_tables:  # the original: one read flag on each message
            flags = [c for c in ("read_at", "read_by") if c in self.cols[t]]
            if not flags:
                continue
            where = ["(" + " OR ".join(f"t.{c} IS NOT NULL" for c in flags) + ")"]
            sql = self._select(t, table, rename, extras, where)
            fix = partial(self._fix_legacy_read, handoff=t != "messages")
            parts.append(Part(t, sql, extras, fix))
        return parts

    # -- layout rules, on decoded values ----------------------------------------------------------

    def _fix_memory(self, r: Record) -> None:
        if not r["projects"]:
            r["projects"] = [r["project"]] if r["project"] else None  # None: the default
        if r["foundational"] is None and r["importance"] is not None:
            r["foundational"] = r["importance"] >= 8
        if r["content"] is None:
            r["content"] = ""
        if r["content_hash"] is None:
            r["content_hash"] = _hash(r["content"])
        vec = r["embedding"]
        r["embedding_dim"] = None if vec is None else int(vec.size)
        r["embedding_model"] = (
            None if vec is None else (r["embedding_model"] or self.embedding_model or "unknown")
        )

    def _fix_message(self, r: Record, handoff: bool = False) -> None:
        if handoff and r["id"] is not None:
            r["id"] = self.handoff_ids.get(r["id"], r["id"])
        if r["priority"] is not None:
            r["priority"] = min(10, max(0, r["priority"]))
        r["from_instance"] = r["from_instance"] or "unknown"
        r["to_instance"] = r["to_instance"] or "all"
        if r["content"] is None:
            r["content"] = ""

    def _fix_legacy_read(self, r: Record, handoff: bool = False) -> None:
        if handoff and r["message_id"] is not None:
            r["message_id"] = self.handoff_ids.get(r["message_id"], r["message_id"])
        if r["instance_id"] is None:
            to = r["to_instance"]
            r["instance_id"] = to if to and to != "all" else "unknown"
        if r["read_at"] is None:
            r["read_at"] = r["created_at"]

    # -- reading -------------------------------------------------------------------------------

    def count(self, table: Table) -> int:
        with self.reading():
            return sum(
                int(self.conn.execute(f"SELECT count(*) FROM ({p.sql})").fetchone()[0])
                for p in self.parts(table)
            )

    def orphans(self) -> dict[str, int]:
        """Rows left out because their references point at rows the source lacks (and edges
        from a memory to itself)."""
        out = {}
        for table in EXPORTED:
            if table.name in self.tables and any(c.references for c in table.columns):
                with self.reading():
                    every = self.conn.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0]
                left_out = int(every) - self.count(table)
                if left_out:
                    out[table.name] = left_out
        return out

    def batches(self, table: Table, size: int) -> Iterator[tuple[Part, list[tuple[Any, ...]]]]:
        """Raw rows of every part of `table`, `size` at a time."""
        for part in self.parts(table):
            done = 0
            with self.reading():
                while True:
                    try:
                        for chunk in self._chunks(part.sql, done, size):
                            done += len(chunk)
                            yield part, chunk
                        break
                    except sqlite3.OperationalError as exc:
                        if "decode" not in str(exc) or self.conn.text_factory is _tolerant_text:
                            raise
                        # Text that is not UTF-8: read on from this row, keeping it decodable.
                        self.conn.text_factory = _tolerant_text

    def _chunks(self, sql: str, offset: int, size: int) -> Iterator[list[tuple[Any, ...]]]:
        cur = self.conn.execute(f"{sql} LIMIT -1 OFFSET {int(offset)}")
        while chunk := cur.fetchmany(size):
            yield chunk


def _fix_edge(r: Record) -> None:
    if r["auto_linked"] is None:  # the original kept it in the metadata
        meta = r["metadata"]
        r["auto_linked"] = bool(meta.get("auto_linked")) if isinstance(meta, dict) else False
    if r["strength"] is not None:
        r["strength"] = min(1.0, max(0.0, r["strength"]))
    r["relation_type"] = r["relation_type"] or "relates_to"
