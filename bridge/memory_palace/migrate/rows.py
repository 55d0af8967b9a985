"""Source rows become target rows: values are decoded by column kind (`db/values.py`), the
layout's rules apply, NOT NULL columns get their declared defaults (`db/tables.py`), and each
row is checked against what PostgreSQL can store. A row that fails is a `BadRow`, never an
exception. A row is bad when:

- a text, strings or json value holds a NUL character (U+0000) or is not valid UTF-8;
- a value cannot be read as its kind: an unparseable time, malformed JSON (json, strings, or
  a JSON-text embedding), a non-integer in an integer column, ...;
- an integer is out of range for its column (INTEGER, BIGINT);
- an embedding is not a flat list of finite numbers, or has a dimension other than the
  target's vector column;
- a NOT NULL column has neither a value nor a declared default;
- it refers to a row that is itself bad (an edge to a skipped memory);
- (memories) its subject, content and keywords would make a keyword-index entry (tsvector)
  over PostgreSQL's 1 MiB limit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import IO, Any

import numpy as np
import orjson

from ..db.tables import NOW, Column, Table
from ..db.values import DECODERS, utcnow
from ..errors import InvalidParams
from .layouts import Part, Record, Source, parent_of

# PostgreSQL's MAXSTRPOS: the most bytes of lexemes and positions one tsvector may hold.
TSV_LIMIT = 1_048_575
# Measured (PostgreSQL 16): a tsvector is at most ~2.5 times its text, for short distinct
# hyphenated words; smaller texts cannot reach the limit, so only larger ones ask PostgreSQL.
TSV_CANDIDATE = TSV_LIMIT // 8
# The arguments of memory_palace_tsv (db/postgres.py): the text of the keyword index.
KEYWORD_TEXT = ("subject", "content", "keywords")

UNREADABLE = {
    "time": "an unparseable time",
    "json": "malformed JSON",
    "strings": "malformed JSON (an array of strings is expected)",
    "vector": "an unreadable embedding",
    "int": "not an integer",
    "id": "not an integer",
    "ref": "not an integer",
    "bool": "not a boolean",
    "float": "not a number",
}
INT_BITS = {"int": 32, "id": 64, "ref": 64}  # INTEGER, BIGINT

TsvCheck = Callable[[str | None, str, list[str] | None], str | None]


@dataclass(frozen=True)
class BadRow:
    table: str
    id: Any  # the row's key as the source holds it; a list for composite keys
    reason: str
    source: str | None = None  # the source table, when it is not `table`

    def to_dict(self) -> dict[str, Any]:
        out = {"table": self.table, "id": self.id, "reason": self.reason}
        if self.source:
            out["source_table"] = self.source
        return out

    def __str__(self) -> str:
        return f"{self.table} {orjson.dumps(self.id).decode()}: {self.reason}"


class BadRowsFound(InvalidParams):
    """The source holds rows PostgreSQL cannot store, and skipping them was not asked for."""

    @classmethod
    def before_copy(cls, bad: list[BadRow]) -> BadRowsFound:
        return cls(
            f"the source holds {len(bad)} row(s) PostgreSQL cannot store (the first: {bad[0]})"
            "; nothing was copied. List them with --dry-run, fix them in the source, or re-run "
            "with --skip-bad-rows to copy everything else and write them to a report file",
            bad_rows=len(bad),
        )

    @classmethod
    def while_copying(cls, bad: BadRow) -> BadRowsFound:
        return cls(
            f"PostgreSQL cannot store {bad}; the batches before it are copied. Re-run with "
            "--skip-bad-rows to copy everything else (the run resumes) and write the refused "
            "rows to a report file",
            bad_rows=1,
        )


class BadRows:
    """Bad rows found so far, and the target keys they leave out per table (rows referring to
    them are bad too). Shared by the reader thread and the COPY loop."""

    def __init__(self, out: IO[bytes] | None = None, strict: bool = False) -> None:
        self.rows: list[BadRow] = []
        self.skipped: dict[str, set[Any]] = {}
        self.out = out  # the JSONL report, written as rows are found
        self.strict = strict  # any bad row stops the run: none was expected
        self._lock = threading.Lock()

    def add(self, bad: BadRow, key: Any) -> None:
        if self.strict:
            raise BadRowsFound.while_copying(bad)
        with self._lock:
            self.rows.append(bad)
            self.skipped.setdefault(bad.table, set()).add(key)
            if self.out is not None:
                self.out.write(orjson.dumps(bad.to_dict()) + b"\n")
                self.out.flush()

    def count(self, table: str) -> int:
        return sum(1 for b in self.rows if b.table == table)


def _text(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")  # invalid UTF-8 is reported, not lost
    return str(value)


def source_decoder(kind: str) -> Callable[[Any], Any]:
    """The decoder of a non-NULL value of `kind` as SQLite returns it. It raises ValueError or
    TypeError when the value cannot be one."""
    if kind == "text":
        return _text
    decoder = DECODERS[kind]
    # The original wrote empty and JSON-null values for missing ones.
    blank = ("", b"", "null") if kind in ("strings", "json", "vector") else ("", b"")

    def decode_source(value: Any) -> Any:
        if type(value) in (str, bytes) and value in blank:
            return None
        if kind == "json" and isinstance(value, (int, float)):
            return value  # SQLite stored a JSON number as a number
        return decoder(value)

    return decode_source


def text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "contains a NUL character (U+0000), which PostgreSQL cannot store"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid UTF-8"
    return None


def _json_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _json_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _json_strings(v)


def _utf8_len(value: str | None) -> int:
    if not value:
        return 0
    return len(value) if value.isascii() else len(value.encode("utf-8"))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class _Plan:
    """Which columns of a table to check, and how."""

    texts: tuple[str, ...]  # text columns
    lists: tuple[str, ...]  # strings columns
    rest: tuple[tuple[str, bool, Any, str | None], ...]  # (column, nullable, check, parent)


class Checks:
    """What a decoded row must satisfy to be stored in PostgreSQL."""

    def __init__(self, bad: BadRows, dim: int | None, tsv: TsvCheck | None) -> None:
        self.bad = bad
        self.dim = dim  # the target's vector dimension (None: no embeddings to check)
        self.tsv = tsv  # asks PostgreSQL; None when it cannot be asked
        self.unchecked_tsv = 0  # large memories that could not be asked about
        # Text and strings are checked a row at a time (_text_problems).
        self.by_kind: dict[str, Callable[[str, Any], str | None]] = {
            "json": self._json,
            "vector": self._vector,
            **{kind: self._int_range(bits) for kind, bits in INT_BITS.items()},
        }
        self._plans: dict[str, _Plan] = {}

    def _text(self, name: str, value: str) -> str | None:
        problem = text_problem(value)
        return f"{name} {problem}" if problem else None

    def _strings(self, name: str, value: list[Any]) -> str | None:
        for i, item in enumerate(value):
            if not isinstance(item, str):
                return f"{name}[{i}] is not a string ({type(item).__name__})"
            if problem := text_problem(item):
                return f"{name}[{i}] {problem}"
        return None

    def _json(self, name: str, value: Any) -> str | None:
        for item in _json_strings(value):
            if problem := text_problem(item):
                return f"{name} (JSON) {problem}"
        return None

    def _vector(self, name: str, value: np.ndarray) -> str | None:
        if value.ndim != 1 or value.size == 0:
            return f"{name} is not a flat list of numbers"
        if self.dim is not None and value.size != self.dim:
            return (
                f"{name} has {value.size} dimensions but the target's vector column has "
                f"{self.dim}; re-embed this memory in the source to keep it"
            )
        if not np.isfinite(value).all():
            return f"{name} holds NaN or infinite values, which pgvector cannot store"
        return None

    @staticmethod
    def _int_range(bits: int) -> Callable[[str, int], str | None]:
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

        def check(name: str, value: int) -> str | None:
            if low <= value <= high:
                return None
            return f"{name} {value} is out of range for a {bits}-bit integer"

        return check

    def _plan(self, table: Table) -> _Plan:
        plan = self._plans.get(table.name)
        if plan is None:
            rest = []
            for col in table.columns:
                check = self.by_kind.get(col.kind)
                parent = parent_of(col.references)[0] if col.references else None
                if check is not None or parent is not None or not col.nullable:
                    rest.append((col.name, col.nullable, check, parent))
            plan = _Plan(
                tuple(c.name for c in table.columns if c.kind == "text"),
                tuple(c.name for c in table.columns if c.kind == "strings"),
                tuple(rest),
            )
            self._plans[table.name] = plan
        return plan

    def _text_problems(self, plan: _Plan, rec: Record) -> list[str]:
        """Problems of the row's text and strings values. Checked all at once; only a row
        with a problem is checked column by column, to name them."""
        texts = [v for v in map(rec.__getitem__, plan.texts) if v is not None]
        for name in plan.lists:
            texts.extend(rec[name] or ())
        if all(type(t) is str for t in texts) and text_problem("".join(texts)) is None:
            return []
        found = [self._text(n, rec[n]) for n in plan.texts if rec[n] is not None]
        found += [self._strings(n, rec[n]) for n in plan.lists if rec[n] is not None]
        return [p for p in found if p]

    def problems(self, table: Table, rec: Record) -> list[str]:
        plan = self._plan(table)
        out = self._text_problems(plan, rec)
        for name, nullable, check, parent in plan.rest:
            value = rec[name]
            if value is None:
                if not nullable:
                    out.append(f"{name} is empty, but the column requires a value")
                continue
            if check is not None and (problem := check(name, value)):
                out.append(problem)
            if parent is not None and value in self.bad.skipped.get(parent, ()):
                out.append(f"{name} {value} refers to a {parent} row that is skipped as bad")
        if not out and table.name == "memories":
            out += self._keyword_index(rec)
        return out

    def _keyword_index(self, rec: Record) -> list[str]:
        subject, content, keywords = (rec[n] for n in KEYWORD_TEXT)
        chars = len(subject or "") + len(content) + sum(map(len, keywords or ()))
        if chars * 4 <= TSV_CANDIDATE:  # a character is at most 4 bytes of UTF-8
            return []
        size = _utf8_len(subject) + _utf8_len(content) + sum(_utf8_len(k) for k in keywords or ())
        if size <= TSV_CANDIDATE:
            return []
        if self.tsv is None:
            self.unchecked_tsv += 1
            return []
        problem = self.tsv(subject, content, keywords)
        return [problem] if problem else []


def _default(col: Column) -> Any:
    if col.default is NOW:
        return utcnow()
    return list(col.default) if col.kind == "strings" else col.default


class Reader:
    """Turns raw source rows of one table into target rows (tuples in the table's column
    order) or BadRows."""

    def __init__(self, table: Table, checks: Checks) -> None:
        self.table = table
        self.checks = checks
        self.row_of = itemgetter(*table.names)  # a record as the table's row
        self.key_of = itemgetter(*table.key)  # a record's key: a value, a tuple if composite
        self.defaults = [c for c in table.columns if not c.nullable and c.default is not None]
        self.key_index = [table.names.index(k) for k in table.key]
        self._columns: dict[str, tuple[list[str], list[str], list[Callable[[Any], Any]]]] = {}

    def _columns_of(self, part: Part) -> tuple[list[str], list[str], list[Callable[[Any], Any]]]:
        columns = self._columns.get(part.sql)
        if columns is None:
            kinds = [(c.name, c.kind) for c in self.table.columns] + list(part.extras)
            columns = (
                [name for name, _ in kinds],
                [kind for _, kind in kinds],
                [source_decoder(kind) for _, kind in kinds],
            )
            self._columns[part.sql] = columns
        return columns

    def _decode(self, part: Part, raw: tuple[Any, ...]) -> tuple[Record, list[str]]:
        names, kinds, decoders = self._columns_of(part)
        try:
            values = [
                v if v is None or (d is _text and type(v) is str) else d(v)
                for d, v in zip(decoders, raw, strict=True)
            ]
            return dict(zip(names, values, strict=True)), []
        except (ValueError, TypeError, OverflowError):
            pass  # decode column by column, to name each value that is unreadable
        rec: Record = {}
        reasons = []
        for name, kind, decoder, value in zip(names, kinds, decoders, raw, strict=True):
            try:
                rec[name] = None if value is None else decoder(value)
            except (ValueError, TypeError, OverflowError):
                rec[name] = None
                reasons.append(f"{name} is {UNREADABLE[kind]}: {_shown(value)}")
        return rec, reasons

    def _source_key(self, raw: tuple[Any, ...]) -> Any:
        key = [_plain(raw[i]) for i in self.key_index]
        return key[0] if len(key) == 1 else key

    def convert(self, part: Part, raw: tuple[Any, ...]) -> tuple[tuple[Any, ...] | BadRow, Any]:
        """(target row or BadRow, the row's key in the target)."""
        rec, reasons = self._decode(part, raw)
        if part.fix is not None:
            part.fix(rec)
        for col in self.defaults:
            if rec[col.name] is None:
                rec[col.name] = _default(col)
        reasons += self.checks.problems(self.table, rec)
        if not reasons:
            return self.row_of(rec), self.key_of(rec)
        source = part.source if part.source != self.table.name else None
        bad = BadRow(self.table.name, self._source_key(raw), "; ".join(reasons), source)
        return bad, self.key_of(rec)


def _plain(value: Any) -> Any:
    """A source value as JSON can show it (invalid UTF-8 as backslash escapes)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value if value is None or isinstance(value, (int, float)) else repr(value)


def read(
    src: Source, table: Table, checks: Checks, batch_size: int
) -> Iterator[tuple[list[tuple[Any, ...]], int]]:
    """(good rows, source rows read) of `table` per source chunk; bad ones go to checks.bad."""
    reader = Reader(table, checks)
    for part, chunk in src.batches(table, batch_size):
        good = []
        for raw in chunk:
            row, key = reader.convert(part, raw)
            if isinstance(row, BadRow):
                checks.bad.add(row, key)
            else:
                good.append(row)
        yield good, len(chunk)
