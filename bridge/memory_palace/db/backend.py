"""The backend interface: everything that differs between SQLite and PostgreSQL.

Services never branch on the backend; they call `db.backend`. The two adapters are
`db/sqlite.py` and `db/postgres.py`. This module holds the interface and what both share:
DDL generated from `tables.py`, and the codec dispatch by column kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import orjson
from sqlalchemy.engine import Connection

from .tables import Column, Index, Table

if TYPE_CHECKING:
    from ..config import Recall
    from .engine import Database
    from .filters import Filters

Hits = list[tuple[int, float]]


@dataclass
class KeywordHits:
    """The best keyword matches among the memories a filter allows."""

    scored: Hits  # (id, BM25 coverage), best first
    total: int  # memories searched
    holding: set[int]  # scored ids holding every term of one of the `whole` term lists


class Backend(ABC):
    """One database kind. Instances are stateless apart from what `Database` passes in."""

    kind: str = ""
    #: Column kind -> DDL type; "vector" takes the dimension.
    TYPES: ClassVar[dict[str, str]] = {}

    # -- DDL --------------------------------------------------------------------------------
    def column_ddl(self, col: Column, dim: int | None) -> str:
        if col.kind == "id":
            return f"{col.name} {self.TYPES['id']}"
        ddl = f"{col.name} {self.column_type(col.kind, dim)}"
        if not col.nullable:
            ddl += " NOT NULL"
        if col.default is not None:
            ddl += f" DEFAULT {self.literal(col.kind, col.default)}"
        if col.references:
            ddl += f" REFERENCES {col.references} ON DELETE CASCADE"
        return ddl

    def column_type(self, kind: str, dim: int | None) -> str:
        return self.TYPES[kind]

    def create_table(self, table: Table, dim: int | None) -> list[str]:
        parts = [self.column_ddl(c, dim) for c in table.columns]
        if not table.serial:
            parts.append(f"PRIMARY KEY ({', '.join(table.key)})")
        parts += [f"UNIQUE ({', '.join(u)})" for u in table.unique]
        parts += [f"CHECK ({c})" for c in table.checks]
        body = ",\n    ".join(parts)
        stmts = [
            f"CREATE TABLE IF NOT EXISTS {table.name} (\n    {body}\n){self.table_options(table)}"
        ]
        stmts += [s for ix in table.indexes if (s := self.index_ddl(table, ix))]
        return stmts

    def table_options(self, table: Table) -> str:
        return ""

    def index_ddl(self, table: Table, index: Index) -> str | None:
        where = f" WHERE {index.where}" if index.where else ""
        return (
            f"CREATE INDEX IF NOT EXISTS {index.name} ON {table.name}"
            f"({', '.join(index.columns)}){where}"
        )

    def add_column(self, table: Table, col: Column, dim: int | None) -> str:
        return f"ALTER TABLE {table.name} ADD COLUMN {self.column_ddl(col, dim)}"

    @abstractmethod
    def literal(self, kind: str, value: Any) -> str:
        """A DDL DEFAULT literal."""

    @abstractmethod
    def search_ddl(self, dim: int | None) -> list[str]:
        """Keyword and vector index objects (FTS5 and its triggers; tsvector, GIN, HNSW)."""

    def upgrade(self, conn: Connection, version: int) -> None:
        """Backend-specific part of schema step `version` (see schema.STEPS)."""

    @abstractmethod
    def existing_columns(self, conn: Connection, table: str) -> set[str]:
        """Columns of an existing table (empty when the table does not exist)."""

    # -- values -----------------------------------------------------------------------------
    def encode(self, kind: str, value: Any) -> Any:
        """A Python value as the bind value for a column of `kind`."""
        if value is None:
            return None
        return getattr(self, "encode_" + kind, _same)(value)

    def encode_row(self, table: Table, values: dict[str, Any]) -> dict[str, Any]:
        kinds = table.kinds(tuple(values))
        return {k: self.encode(kinds[k], v) for k, v in values.items()}

    def bind(self, kind: str, name: str) -> str:
        """The SQL for a bind parameter of a column kind (PostgreSQL needs some casts)."""
        return f":{name}"

    def insert_sql(
        self,
        table: Table,
        names: Iterable[str],
        returning: str | None = None,
        on_conflict: str = "",
    ) -> str:
        names = list(names)
        kinds = table.kinds(names)
        values = ", ".join(self.bind(kinds[n], n) for n in names)
        sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({values}){on_conflict}"
        return sql + (f" RETURNING {returning}" if returning else "")

    def select_list(self, table: Table) -> str:
        """Every column of a table, as a SELECT list whose values `values.decode` reads."""
        return ", ".join(c.name for c in table.columns)

    def reset_sequences(self, conn: Connection, tables: list[str]) -> None:
        """After rows were inserted with explicit ids: new ids continue after the largest.
        (SQLite's AUTOINCREMENT does this by itself.)"""

    @abstractmethod
    def encode_time(self, value: datetime) -> Any: ...

    @abstractmethod
    def encode_strings(self, value: list[str]) -> Any: ...

    def encode_json(self, value: Any) -> str:
        return orjson.dumps(value).decode()

    @abstractmethod
    def encode_vector(self, value: np.ndarray) -> Any: ...

    def encode_bool(self, value: Any) -> bool:
        return bool(value)

    # -- SQL fragments that differ ----------------------------------------------------------
    @abstractmethod
    def strings_any(
        self, column: str, values: list[str], params: dict[str, Any], prefix: str
    ) -> str:
        """Condition: the strings column holds any of `values` (binds params under prefix)."""

    @abstractmethod
    def strings_overlap(self, a: str, b: str) -> str:
        """Condition: two strings columns share an element."""

    @abstractmethod
    def strings_elements(self, table: str, column: str, alias: str) -> tuple[str, str]:
        """(FROM item, element expression) that unnests a strings column, for GROUP BY."""

    @abstractmethod
    def strings_remove(self, column: str, param: str) -> str:
        """An expression: the strings column without the value bound to :param."""

    @abstractmethod
    def contains_folded(self, column: str, param: str) -> str:
        """Condition: case-insensitive substring match of :param (a LIKE pattern, \\ escape)."""

    @abstractmethod
    def type_pattern(self, column: str, pattern: str, params: dict[str, Any], name: str) -> str:
        """Condition: column matches a pattern whose only wildcard is '*', case-sensitively."""

    # -- search -----------------------------------------------------------------------------
    @abstractmethod
    def keyword_scores(
        self, db: Database, query: str, f: Filters, cfg: Recall, whole: Sequence[Sequence[str]]
    ) -> KeywordHits:
        """The `cfg.keyword_candidates` memories matching `f` with the best BM25 coverage for
        `query` (search_text.bm25_coverage over subject, content and keywords weighted
        `cfg.fields`, statistics of the memories `f` allows), and which of them hold every
        term of one of the `whole` term lists (identifier candidates)."""

    @abstractmethod
    def vector_search(
        self,
        db: Database,
        model: str,
        dim: int,
        q: np.ndarray,
        k: int,
        f: Filters,
        need: int | None = None,
    ) -> Hits:
        """Top-k (id, cosine similarity) among memories embedded by `model` matching `f`.
        With `need` < k an approximate index may return fewer than k, never fewer than
        `need` (when that many match)."""

    @abstractmethod
    def vector_mean(
        self, db: Database, model: str, dim: int, f: Filters, sample: int
    ) -> tuple[np.ndarray, int] | None:
        """(mean, rows averaged) of the `model` vectors of the newest `sample` memories
        matching `f`; None when none match."""

    @abstractmethod
    def similarities(
        self, db: Database, model: str, dim: int, q: np.ndarray, ids: list[int]
    ) -> dict[int, float]:
        """Cosine similarity of q to each listed memory that has a `model` vector."""

    @abstractmethod
    def similar_pairs(
        self, db: Database, model: str, dim: int, threshold: float, f: Filters, limit: int
    ) -> list[tuple[int, int, float]]:
        """Pairs (a, b, sim), a < b, with sim >= threshold, most similar first."""

    @abstractmethod
    def resize_vectors(self, conn: Connection, dim: int) -> None:
        """Change the stored vector size (the caller clears the vectors)."""

    def lock(self, conn: Connection, key: int) -> None:
        """Hold a lock on `key` until the caller's write transaction ends. SQLite's write
        transactions (BEGIN IMMEDIATE) already exclude each other."""

    def scrub_begin(self, conn: Connection) -> None:
        """In a write transaction about to delete content for good: make the deletes leave no
        recoverable copy where the backend can. (PostgreSQL: VACUUM, run by autovacuum,
        reclaims dead rows; nothing to do in the transaction.)"""

    def scrub_end(self, conn: Connection) -> None:
        """In the same transaction, after the deletes."""

    def scrub_after(self, db: Database) -> None:
        """After the transaction committed."""

    def try_lock(self, conn: Connection, key: int) -> bool:
        """Take the lock on `key` for the caller's write transaction if nobody holds it;
        False if another transaction does (SQLite: the write transaction is the lock)."""
        return True

    # -- messaging --------------------------------------------------------------------------
    #: "listen" (pushed by the server) or "poll" (read every tick).
    listen_mode: str = "poll"

    def open_listen(self, url: str) -> Any:
        """A dedicated connection that LISTENs (only where listen_mode is "listen")."""
        raise NotImplementedError(f"{self.kind} has no LISTEN; it is polled")

    def change_probe(self, url: str) -> Any:
        """Where listen_mode is "poll": an object whose `changed()` says whether anything was
        committed to the database since its last call (True when it cannot tell), so an idle
        poller skips its queries; None: poll every tick."""
        return None

    def notify(self, conn: Connection, channels: list[str], payload: str) -> list[str]:
        """Notify `channels` inside the caller's transaction; returns the channels notified
        (none where the backend polls)."""
        return []

    # -- administration ---------------------------------------------------------------------
    @abstractmethod
    def prepare(self, url: str) -> dict[str, Any]:
        """Make the database usable before the engine opens (create it, enable extensions).
        Returns facts for `Database` (e.g. the pgvector version)."""

    @abstractmethod
    def create_engine(self, url: str, options: Any) -> Any:
        """The SQLAlchemy engine; `options` is config `postgres` (pool sizes, timeout)."""

    def lock_rows(self, conn: Connection, table: str, ids: list[int]) -> None:
        """Lock rows about to be updated in id order, so two transactions updating an
        overlapping set of rows cannot deadlock. A no-op where writers are serialised."""

    @abstractmethod
    def probe(self, url: str, tables: tuple[str, ...]) -> dict[str, Any]:
        """{status: connected|missing|down, error?, table_counts} without creating anything."""

    @abstractmethod
    def discover(self, default_url: str) -> list[str]:
        """URLs of existing databases that derived names lead to (memory_palace_* databases
        on the server, memories_*.db files), without creating anything."""

    @abstractmethod
    def translate(self, exc: BaseException, db: Database | None) -> Exception | None:
        """Our error for a driver exception, or None when it is not a database error."""


def _same(value: Any) -> Any:
    return value


__all__ = ["Backend", "Hits"]
