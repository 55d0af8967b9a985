"""The PostgreSQL adapter: TEXT[] + GIN, JSONB, pgvector with HNSW, a generated tsvector with
GIN for keyword search, NOTIFY in the writer's transaction, and SQLSTATE-based error mapping."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import orjson
import psycopg2
from psycopg2 import errorcodes, sql
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import QueuePool

from ..config import Postgres, Recall
from ..errors import (
    BackendUnavailable,
    Conflict,
    DatabaseMissing,
    InvalidParams,
    MemoryPalaceError,
    PermissionDenied,
    TransactionAborted,
)
from .backend import Backend, Hits, KeywordHits
from .filters import Filters, like_escape, where
from .search_text import (
    bm25_coverage,
    inverse_frequency,
    memory_fields,
    terms,
    tf_weight,
    weighted_terms,
)
from .tables import NOW
from .urls import mask_url, pg_database_name, sqlalchemy_url
from .values import as_utc, decode_strings, decode_vector

if TYPE_CHECKING:
    from .engine import Database

log = logging.getLogger("memory_palace.db")

CONNECT_TIMEOUT_S = 10
EXACT_SCAN_ROWS = 3000  # estimated matching rows below which an exact scan is cheaper
EF_MIN, EF_MAX = 100, 1000  # hnsw.ef_search bounds (1000 is pgvector's maximum)
OVERFETCH = 1.5  # candidates per wanted row, over the filter's selectivity
HNSW_INDEX = (
    "CREATE INDEX IF NOT EXISTS idx_memories_embedding_hnsw ON memories "
    "USING hnsw (embedding vector_cosine_ops)"
)
PGVECTOR_INSTALL = (
    "install pgvector on the server (Debian/Ubuntu: sudo apt install postgresql-<major>-pgvector "
    "for your server's major version; macOS: brew install pgvector)"
)

SEARCH_DDL = [
    # array_to_string is only STABLE, so a generated column needs an IMMUTABLE wrapper.
    """CREATE OR REPLACE FUNCTION memory_palace_tsv(subject text, content text, keywords text[])
    RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT setweight(to_tsvector('english', coalesce(subject, '')), 'A')
            || to_tsvector('english', coalesce(content, ''))
            || setweight(to_tsvector('english',
                   coalesce(array_to_string(keywords, ' '), '')), 'B')
    $$""",
    """ALTER TABLE memories ADD COLUMN IF NOT EXISTS tsv tsvector
        GENERATED ALWAYS AS (memory_palace_tsv(subject, content, keywords)) STORED""",
    "CREATE INDEX IF NOT EXISTS ix_memories_tsv ON memories USING gin (tsv)",
    HNSW_INDEX,
]

# SQLSTATE classes and codes -> what the caller can do about them.
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58", "XX")  # connection, resources, operator, system
_INVALID_CLASSES = ("22",)  # data exceptions: too long, out of range, bad encoding, ...
_INVALID_CODES = {
    "54000": "a value is too large for the index (e.g. a text over 1 MiB for the keyword index)",
    "54001": "the statement is too complex",
}


def _first_line(exc: BaseException) -> str:
    text_ = str(exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__


NOTIFY = text("SELECT pg_notify(:ch, :payload)")  # parsed once: it runs for every message
LISTENER_APP = "memory-palace-listener"  # application_name of LISTEN connections


def _connect(url: str, dbname: str | None = None, application_name: str | None = None) -> Any:
    u = sqlalchemy_url(url)
    kw: dict[str, Any] = {
        "host": u.host,
        "port": u.port,
        "user": u.username,
        "password": u.password,
        "dbname": dbname or u.database,
    }
    kw.update({k: (v[-1] if isinstance(v, tuple) else v) for k, v in u.query.items()})
    if application_name:
        kw["application_name"] = application_name
    return psycopg2.connect(
        connect_timeout=CONNECT_TIMEOUT_S, **{k: v for k, v in kw.items() if v not in (None, "")}
    )


def connect_error(url: str, exc: BaseException) -> BackendUnavailable:
    return BackendUnavailable(
        f"cannot connect to PostgreSQL at {mask_url(url)}: {_first_line(exc)}. Check that the "
        "server runs (pg_isready) and that the URL, user and password are right."
    )


def pg_connect(
    url: str,
    *,
    autocommit: bool = True,
    dbname: str | None = None,
    application_name: str | None = None,
) -> Any:
    """A raw psycopg2 connection (LISTEN, COPY, admin work). Raises our errors, never the
    driver's: DatabaseMissing when the database does not exist, else BackendUnavailable."""
    try:
        conn = _connect(url, dbname, application_name)
    except psycopg2.Error as exc:
        name = dbname or pg_database_name(url)
        if name != "postgres" and _database_absent(url, name):
            raise DatabaseMissing(
                f"PostgreSQL database {name!r} does not exist at {mask_url(url)}", database=name
            ) from exc
        raise connect_error(url, exc) from exc
    conn.autocommit = autocommit
    return conn


def _database_absent(url: str, name: str) -> bool:
    """Ask the maintenance database whether `name` exists. libpq reports a failed connect
    without a SQLSTATE, so this is the only exact way to tell 'missing' from 'down'."""
    try:
        admin = _connect(url, "postgres")
    except psycopg2.Error:
        return False  # can't tell: report the original connection error
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is None
    finally:
        admin.close()


CREATE_WAIT_S = 30.0  # how long another process's CREATE DATABASE may take (a busy host)


def ensure_database(url: str) -> bool:
    """Create the database named in `url` if it does not exist. True when it was created.

    Raises PermissionDenied quoting `ALTER USER <user> CREATEDB;` when the role may not.
    """
    try:
        pg_connect(url).close()
        return False
    except DatabaseMissing:
        first: MemoryPalaceError | None = None
    except BackendUnavailable as exc:  # the server is down, or the database is being created
        first = exc
    dbname = pg_database_name(url)
    user = sqlalchemy_url(url).username or "<your_user>"
    try:
        admin = pg_connect(url, dbname="postgres")
    except MemoryPalaceError as exc:
        if first is not None:
            raise first from None  # the server itself is unreachable: say that
        raise DatabaseMissing(
            f"database {dbname!r} does not exist and the maintenance database 'postgres' is not "
            f"reachable to create it ({exc.message}). Create it yourself: createdb {dbname}",
            database=dbname,
        ) from exc
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if cur.fetchone():  # named, perhaps still being created by another process
                _wait_connectable(url)
                return False
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            except psycopg2.Error as exc:
                if exc.pgcode in (errorcodes.DUPLICATE_DATABASE, errorcodes.UNIQUE_VIOLATION):
                    _wait_connectable(url)  # another process is creating it at the same time
                    return False
                if exc.pgcode == errorcodes.INSUFFICIENT_PRIVILEGE:
                    raise PermissionDenied(
                        f"database {dbname!r} does not exist and role {user!r} may not create "
                        f"it (no CREATEDB privilege). Fix: as a superuser run ALTER USER {user} "
                        f"CREATEDB; or create it yourself: createdb -O {user} {dbname}",
                        database=dbname,
                    ) from exc
                raise BackendUnavailable(
                    f"cannot create database {dbname!r}: {_first_line(exc)}"
                ) from exc
        log.info("created PostgreSQL database %s", dbname)
        return True
    finally:
        admin.close()


def _wait_connectable(url: str, timeout: float = CREATE_WAIT_S) -> None:
    """Until the database another process is creating accepts connections (CREATE DATABASE
    makes its name visible before it can be connected to)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pg_connect(url).close()
            return
        except (DatabaseMissing, BackendUnavailable):  # named in the catalog, not yet open
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def ensure_pgvector(url: str) -> str:
    """Make sure the vector extension is enabled; return its version."""
    conn = pg_connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cur.fetchone()
            if row:
                return row[0]
            try:
                cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg2.Error as exc:
                cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
                row = cur.fetchone()
                if row:  # another process enabled it at the same time (a unique violation)
                    return row[0]
                cur.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
                available = cur.fetchone() is not None
                dbname = pg_database_name(url)
                if not available:
                    raise BackendUnavailable(
                        f"pgvector is not installed on the PostgreSQL server of {dbname!r}: "
                        + PGVECTOR_INSTALL
                    ) from exc
                raise PermissionDenied(
                    f"pgvector is installed but not enabled in database {dbname!r}, and this "
                    f"role may not enable it ({_first_line(exc)}). Fix: as a superuser run "
                    f"{psql_command(url, 'CREATE EXTENSION vector;')}"
                ) from exc
            cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            return cur.fetchone()[0]
    finally:
        conn.close()


def psql_command(url: str, statement: str, *, superuser: bool = True) -> str:
    """A psql command line that runs `statement` on the URL's host, port and database."""
    u = make_url(url)
    parts = ["psql"]
    host = u.host or u.query.get("host")  # a unix-socket directory comes as ?host=/path
    if host:
        parts += ["-h", str(host)]
    if u.port:
        parts += ["-p", str(u.port)]
    if not superuser and u.username:
        parts += ["-U", u.username]
    parts += ["-d", u.database or "postgres", "-c", f'"{statement}"']
    return " ".join(parts)


def pg_iterative(version: str | None) -> bool:
    """pgvector >= 0.8 has iterative index scans (filtered HNSW that fills its limit)."""
    parts = tuple(int(p) for p in (version or "0").split(".")[:2] if p.isdigit())
    return parts >= (0, 8)


def pg_ef_search(k: int, matching: float, total: float) -> int | None:
    """ef_search that should leave k rows after a filter keeping matching/total of them, or
    None when that needs more than EF_MAX. Measured at 100k x 384 with a 10 % filter and k=50:
    ef 750 fills every query (ef 600 left 48 of 50 once) with recall@10 0.99."""
    selectivity = max(min(matching / max(total, 1.0), 1.0), 1e-6)
    need = math.ceil(OVERFETCH * k / selectivity)
    return None if need > EF_MAX else max(EF_MIN, need)


def _estimate(conn: Connection, cond: str, params: dict[str, Any]) -> float:
    plan = conn.execute(
        text(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM memories WHERE {cond}"), params
    ).scalar()
    if isinstance(plan, str):
        plan = orjson.loads(plan)
    return float(plan[0]["Plan"]["Plan Rows"])


VECTOR_MEAN_TTL = 60.0  # seconds a filter's mean vector is reused (vector_mean)
VECTOR_MEANS_KEPT = 256  # filters whose mean a database's cache keeps (starts over when full)
LEXEME_STATS_TTL = 300.0  # seconds between re-reads of the planner's lexeme statistics
RARITY_TERMS = 16  # the rarest query lexemes that order capped keyword candidates
LEXEME_WORDS = 50_000  # query words whose lexemes a database's cache keeps


class PostgresBackend(Backend):
    kind = "postgres"
    listen_mode = "listen"
    TYPES: ClassVar[dict[str, str]] = {
        "id": "BIGSERIAL PRIMARY KEY",
        "ref": "BIGINT",
        "int": "INTEGER",
        "float": "DOUBLE PRECISION",
        "bool": "BOOLEAN",
        "text": "TEXT",
        "time": "TIMESTAMPTZ",
        "strings": "TEXT[]",
        "json": "JSONB",
        "vector": "vector",
    }
    _CASTS: ClassVar[dict[str, str]] = {"vector": "vector", "strings": "TEXT[]", "json": "JSONB"}

    # -- DDL --------------------------------------------------------------------------------
    def column_type(self, kind: str, dim: int | None) -> str:
        if kind == "vector":
            if dim is None:
                raise BackendUnavailable(
                    "the PostgreSQL vector column needs the embedder's dimension, and the "
                    "embedder is not available; fix the embedder configuration first"
                )
            return f"vector({int(dim)})"
        return self.TYPES[kind]

    def literal(self, kind: str, value: Any) -> str:
        if value is NOW:
            return "now()"
        if kind == "bool":
            return "true" if value else "false"
        if kind == "strings":
            return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in value) + "]"
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        return repr(value)

    def table_options(self, table: Any) -> str:
        # Room for HOT updates: access-count updates then skip HNSW and GIN upkeep.
        return " WITH (fillfactor = 70)" if table.name == "memories" else ""

    def index_ddl(self, table: Any, index: Any) -> str | None:
        if any(table.column(c).kind == "strings" for c in index.columns):
            return (
                f"CREATE INDEX IF NOT EXISTS {index.name} ON {table.name} "
                f"USING gin ({', '.join(index.columns)})"
            )
        return super().index_ddl(table, index)

    def search_ddl(self, dim: int | None) -> list[str]:
        return list(SEARCH_DDL)

    def existing_columns(self, conn: Connection, table: str) -> set[str]:
        rows = conn.execute(
            text(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = :t"
            ),
            {"t": table},
        )
        return {r[0] for r in rows}

    def resize_vectors(self, conn: Connection, dim: int) -> None:
        conn.exec_driver_sql("DROP INDEX IF EXISTS idx_memories_embedding_hnsw")
        conn.exec_driver_sql(
            f"ALTER TABLE memories ALTER COLUMN embedding TYPE vector({int(dim)}) USING NULL"
        )
        conn.exec_driver_sql(HNSW_INDEX)

    # -- values -----------------------------------------------------------------------------
    def encode_time(self, value: datetime) -> datetime:
        return as_utc(value)

    def encode_strings(self, value: list[str]) -> list[str]:
        return list(value)

    def encode_vector(self, value: np.ndarray) -> str:
        # orjson writes each float32 in its shortest exact form: pgvector reads back the same
        # bits, and it is ~50x faster than formatting Python floats.
        return orjson.dumps(
            np.ascontiguousarray(value, dtype=np.float32), option=orjson.OPT_SERIALIZE_NUMPY
        ).decode()

    def select_list(self, table: Any) -> str:
        # Vectors come back as text: exact float32 values, no driver adapter needed.
        return ", ".join(
            f"CAST({c.name} AS text) AS {c.name}" if c.kind == "vector" else c.name
            for c in table.columns
        )

    def reset_sequences(self, conn: Connection, tables: list[str]) -> None:
        for table in tables:
            conn.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence(:t, 'id'), "
                    f"COALESCE((SELECT max(id) FROM {table}), 0) + 1, false)"
                ),
                {"t": table},
            )

    def bind(self, kind: str, name: str) -> str:
        cast = self._CASTS.get(kind)
        return f"CAST(:{name} AS {cast})" if cast else f":{name}"

    # -- SQL fragments ----------------------------------------------------------------------
    def strings_any(
        self, column: str, values: list[str], params: dict[str, Any], prefix: str
    ) -> str:
        params[prefix] = list(values)
        return f"{column} && CAST(:{prefix} AS TEXT[])"

    def strings_overlap(self, a: str, b: str) -> str:
        return f"{a} && {b}"

    def strings_elements(self, table: str, column: str, alias: str) -> tuple[str, str]:
        return f"unnest({table}.{column}) AS {alias}(value)", f"{alias}.value"

    def strings_remove(self, column: str, param: str) -> str:
        return f"array_remove({column}, :{param})"

    def contains_folded(self, column: str, param: str) -> str:
        return f"{column} ILIKE :{param} ESCAPE '\\'"

    def type_pattern(self, column: str, pattern: str, params: dict[str, Any], name: str) -> str:
        params[name] = "%".join(like_escape(part) for part in pattern.split("*"))
        return f"{column} LIKE :{name} ESCAPE '\\'"

    # -- search -----------------------------------------------------------------------------
    @staticmethod
    def _lexeme_shares(db: Database) -> tuple[dict[str, float], float]:
        """The share of memories holding each common lexeme, from the planner's statistics of
        the tsv column (ANALYZE's sample), and the least share listed (any lexeme not listed
        is rarer). Re-read every LEXEME_STATS_TTL seconds; empty before the first ANALYZE."""
        now = time.monotonic()
        held = db.cache.get("lexeme_shares")
        if held is not None and now - held[0] < LEXEME_STATS_TTL:
            return held[1], held[2]
        with db.read() as conn:
            row = conn.execute(
                text(
                    "SELECT CAST(CAST(most_common_elems AS text) AS text[]), "
                    "most_common_elem_freqs FROM pg_stats WHERE schemaname = current_schema() "
                    "AND tablename = 'memories' AND attname = 'tsv'"
                )
            ).first()
        shares: dict[str, float] = {}
        least = 1.0
        if row is not None and row[0] and row[1]:
            elems, values = list(row[0]), [float(v) for v in row[1]]
            shares = dict(zip(elems, values, strict=False))
            # after one share per element come the least and the greatest of them
            least = values[len(elems)] if len(values) > len(elems) else min(values)
        db.cache["lexeme_shares"] = (now, shares, least)
        return shares, least

    @staticmethod
    def _lexemes(db: Database, words: list[str]) -> dict[str, list[str]]:
        """Each word's lexemes in the tsv column (none for PostgreSQL's stop words). Asked of
        the server once per word and database (it parses them); the cache holds at most
        LEXEME_WORDS words and starts over when full."""
        known: dict[str, list[str]] = db.cache.setdefault("lexemes", {})
        out = {w: known[w] for w in words if w in known}
        missing = [w for w in words if w not in out]
        if missing:
            with db.read() as conn:
                found = {
                    w: list(lexemes or [])
                    for w, lexemes in conn.execute(
                        text(
                            "SELECT w, tsvector_to_array(to_tsvector('english', w)) "
                            "FROM unnest(CAST(:ws AS text[])) AS w"
                        ),
                        {"ws": missing},
                    )
                }
            if len(known) + len(found) > LEXEME_WORDS:
                known.clear()
            known.update(found)
            out.update(found)
        return out

    def _keyword_candidates(
        self,
        db: Database,
        query: str,
        lexemes: list[str],
        f: Filters,
        cfg: Recall,
        total: float,
    ) -> list[tuple[int, Any]]:
        """(id, updated_at) of memories matching `f` with any query word, at most one more
        than `cfg.keyword_candidates`. When more match, those kept hold the rarest query
        `lexemes` in sum (each one's IDF among the `total` memories of the filter, from the
        planner's statistics; a match in the subject or keywords weighs as BM25 weighs their
        field weight), the most frequent (ts_rank) first among equals: nearer to BM25 than
        ts_rank_cd alone, which knows no IDF (bench_recall --keyword-agreement)."""
        cond, params = where(db, f, "m")
        shares, least = self._lexeme_shares(db)
        idf = {x: inverse_frequency(total, shares.get(x, least / 2) * total) for x in lexemes}
        # the subject and keywords (tsv weights A, B) against the content
        subject, content, keywords = cfg.fields
        params["boost"] = tf_weight(max(subject, keywords) / (content or 1.0), cfg.bm25.k1)
        rarity = []
        for i, lexeme in enumerate(sorted(idf, key=lambda x: -idf[x])[:RARITY_TERMS]):
            params[f"lx{i}"], params[f"lw{i}"] = lexeme, idf[lexeme]
            rarity.append(
                f"CASE WHEN m.tsv @@ CAST(quote_literal(:lx{i}) || '\\:AB' AS tsquery) "
                f"THEN :lw{i} * :boost "
                f"WHEN m.tsv @@ CAST(quote_literal(:lx{i}) AS tsquery) THEN :lw{i} ELSE 0 END"
            )
        order = ", ".join(
            [f"{' + '.join(rarity)} DESC"] * bool(rarity) + ["ts_rank(m.tsv, q) DESC", "m.id"]
        )
        # websearch_to_tsquery ANDs the words (and drops stop words); OR them, so a memory
        # with any query word is a candidate. Built from the parsed query, never from text.
        sql_ = (
            "SELECT m.id, m.updated_at FROM memories m, "
            "CAST(replace(CAST(websearch_to_tsquery('english', :q) AS text), ' & ', ' | ') "
            f"AS tsquery) AS q WHERE m.tsv @@ q AND {cond} "
            f"ORDER BY {order} LIMIT :k"
        )
        with db.read() as conn:
            return [
                (int(r[0]), r[1])
                for r in conn.execute(
                    text(sql_), {**params, "q": query, "k": cfg.keyword_candidates + 1}
                )
            ]

    def _holders(
        self, db: Database, words: dict[str, list[str]], f: Filters, total: int
    ) -> dict[str, int]:
        """How many memories of the filter hold each word (given with its lexemes). Without a
        selective filter, a word common enough to be in the planner's statistics is estimated
        from them (counting a common word is what costs: 15 ms for a query at 100k); the
        others are counted."""
        estimated = {}
        if not f.selective:
            shares, _ = self._lexeme_shares(db)
            for w, lexemes in words.items():
                if all(x in shares for x in lexemes):
                    estimated[w] = round(min(shares[x] for x in lexemes) * total)
        return estimated | self._word_counts(db, [w for w in words if w not in estimated], f)

    @staticmethod
    def _word_counts(db: Database, words: list[str], f: Filters) -> dict[str, int]:
        cond, params = where(db, f, "m")
        sql_ = text(
            "SELECT count(*) FROM memories m WHERE "
            f"m.tsv @@ plainto_tsquery('english', :w) AND {cond}"
        )
        with db.read() as conn:
            return {w: int(conn.execute(sql_, {**params, "w": w}).scalar()) for w in words}

    @staticmethod
    def _documents(
        db: Database, cfg: Recall, found: list[tuple[int, Any]]
    ) -> dict[int, tuple[Counter[str], float]]:
        """Weighted term counts and length of each candidate, cached by (id, updated_at)."""
        cache: dict[tuple[int, Any], tuple[Counter[str], float]] = db.cache.setdefault(
            ("documents", cfg.fields), {}
        )
        missing = [mid for mid, stamp in found if (mid, stamp) not in cache]
        if missing:
            stmt = text(
                "SELECT id, updated_at, subject, content, keywords FROM memories "
                "WHERE id = ANY(:ids)"
            )
            with db.read() as conn:
                for r in conn.execute(stmt, {"ids": missing}):
                    fields = memory_fields(r.subject, r.content, decode_strings(r.keywords))
                    cache[(int(r.id), r.updated_at)] = weighted_terms(fields, cfg.fields)
            if len(cache) > cfg.document_cache:
                for key in list(cache)[: len(cache) - cfg.document_cache]:
                    cache.pop(key, None)
        return {mid: cache[(mid, stamp)] for mid, stamp in found if (mid, stamp) in cache}

    def keyword_scores(
        self, db: Database, query: str, f: Filters, cfg: Recall, whole: Sequence[Sequence[str]]
    ) -> KeywordHits:
        # The GIN index finds candidates; they are scored here with statistics of the filter:
        # its size from the planner, and exact counts of the query's words when the
        # candidates were capped (they then miss some holders of common words).
        cap = cfg.keyword_candidates
        raw = [w for w in dict.fromkeys(query.lower().split()) if terms(w)]
        lexemes = self._lexemes(db, raw) if raw else {}
        cond, params = where(db, f)
        with db.read() as conn:
            estimated = _estimate(conn, cond, params)
        found = self._keyword_candidates(
            db, query, [x for w in raw for x in lexemes.get(w, ())], f, cfg, max(estimated, 1.0)
        )
        docs = self._documents(db, cfg, found[:cap])
        total = max(int(estimated), len(docs))
        df: dict[str, int] = {}
        if len(found) > cap:
            visible = {w: lexemes[w] for w in raw if lexemes.get(w)}
            df = {terms(w)[0]: n for w, n in self._holders(db, visible, f, total).items()}
        # A word PostgreSQL drops (its stop words are more than ours: "her", "all", ...) finds
        # no candidate and cannot be counted; its holders among the candidates would make it
        # look rare. Its frequency is taken as its share of the candidates instead.
        unseen = {t for w in raw if not lexemes.get(w) for t in terms(w)}
        ids = list(docs)
        lengths = np.array([docs[i][1] for i in ids], np.float64)
        postings = []
        for t in dict.fromkeys(terms(query)):
            rows = [r for r, i in enumerate(ids) if t in docs[i][0]]
            tf = np.array([docs[ids[r]][0][t] for r in rows], np.float64)
            held = max(len(rows), df.get(t, 0)) if rows else 0
            if rows and t in unseen:
                held = max(held, round(len(rows) / len(ids) * total))
            postings.append((np.array(rows, np.int64), tf, held))
        avg = float(lengths.mean()) if len(ids) else 0.0
        rows, coverage = bm25_coverage(cfg.bm25.k1, cfg.bm25.b, total, avg, lengths, postings)
        scored = sorted(
            ((ids[r], float(c)) for r, c in zip(rows, coverage, strict=True)),
            key=lambda kv: (-kv[1], kv[0]),
        )
        holding = {
            i for i, _ in scored if any(all(t in docs[i][0] for t in need) for need in whole)
        }
        return KeywordHits(scored, total, holding)

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
        cond, params = where(db, f)
        cond += " AND embedding IS NOT NULL AND embedding_model = :model"
        params.update(model=model, q=self.encode_vector(q), k=k)
        qv = self.bind("vector", "q")
        exact = (
            f"SELECT id, 1 - d AS sim FROM (SELECT id, embedding <=> {qv} AS d FROM "
            f"memories WHERE {cond} OFFSET 0) s ORDER BY d, id LIMIT :k"
        )
        ann = (
            f"SELECT id, 1 - (embedding <=> {qv}) AS sim FROM memories WHERE {cond} "
            f"ORDER BY embedding <=> {qv} LIMIT :k"
        )

        def run(conn: Connection, statement: str) -> Hits:
            return [(int(r[0]), float(r[1])) for r in conn.execute(text(statement), params)]

        with db.read() as conn:  # the caller's connection: one per request
            total = _estimate(conn, "true", {})
            matching = _estimate(conn, cond, params) if f.selective else total
            iterative = pg_iterative(db.facts.get("pgvector_version"))
            need = min(need or k, k)
            ef = pg_ef_search(k, matching, total)
            # Without iterative scans (pgvector < 0.8) HNSW returns at most ef_search candidates
            # before the filter: when even the largest ef cannot return `need`, the exact scan
            # is cheaper than an ANN pass that is bound to fall back to it. When it can, the
            # ANN pass runs at the largest ef and may return fewer than k (but >= need).
            if matching <= EXACT_SCAN_ROWS or (
                pg_ef_search(need, matching, total) is None and not iterative
            ):
                return run(conn, exact)
            # SET LOCAL needs a transaction: on this autocommit connection, statements sent in
            # one query string run as one implicit transaction.
            settings = f"SELECT set_config('hnsw.ef_search', '{int(ef or EF_MAX)}', true); "
            if iterative:
                settings += "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true); "
            hits = run(conn, settings + ann)
            if len(hits) < need:  # post-filtering dropped rows: an exact scan fills the limit
                hits = run(conn, exact)
            hits.sort(key=lambda h: -h[1])
            return hits

    def vector_mean(
        self, db: Database, model: str, dim: int, f: Filters, sample: int
    ) -> tuple[np.ndarray, int] | None:
        # Kept VECTOR_MEAN_TTL seconds per filter: averaging the sample reads up to `sample`
        # vectors (~10 ms at 1,000); a scope's centre moves slowly as memories arrive.
        cond, params = where(db, f)
        params.update(model=model, n=sample)
        means: dict[str, tuple[float, Any]] = db.cache.setdefault("vector_means", {})
        # the expiry cutoff (now) changes on every call and the set it admits rarely
        key = repr((model, sample, cond, sorted(i for i in params.items() if i[0] != "f_now")))
        now = time.monotonic()
        held = means.get(key)
        if held is not None and now - held[0] < VECTOR_MEAN_TTL:
            return held[1]
        stmt = text(
            "SELECT CAST(avg(embedding) AS text), count(*) FROM (SELECT embedding FROM memories "
            f"WHERE {cond} AND embedding IS NOT NULL AND embedding_model = :model "
            "ORDER BY id DESC LIMIT :n) s"
        )
        with db.read() as conn:
            mean, count = conn.execute(stmt, params).one()
        out = None if not count else (decode_vector(mean), int(count))
        if len(means) >= VECTOR_MEANS_KEPT:
            means.clear()
        means[key] = (now, out)
        return out

    def similarities(
        self, db: Database, model: str, dim: int, q: np.ndarray, ids: list[int]
    ) -> dict[int, float]:
        if not ids:
            return {}
        with db.read() as conn:
            rows = conn.execute(
                text(
                    f"SELECT id, 1 - (embedding <=> {self.bind('vector', 'q')}) FROM memories "
                    "WHERE id = ANY(:ids) AND embedding_model = :model AND embedding IS NOT NULL"
                ),
                {"q": self.encode_vector(q), "ids": list(ids), "model": model},
            )
            return {int(r[0]): float(r[1]) for r in rows}

    def similar_pairs(
        self, db: Database, model: str, dim: int, threshold: float, f: Filters, limit: int
    ) -> list[tuple[int, int, float]]:
        cond, params = where(db, f, "a")
        inner, _ = where(db, f, "b")
        # Each memory asks the HNSW index for its nearest neighbour: n index probes, not n^2.
        sql_ = (
            f"SELECT a.id AS a, nb.id AS b, 1 - nb.d AS sim FROM memories a "
            f"CROSS JOIN LATERAL (SELECT b.id, b.embedding <=> a.embedding AS d FROM "
            f"memories b WHERE b.id <> a.id AND b.embedding IS NOT NULL AND "
            f"b.embedding_model = :model AND {inner} ORDER BY b.embedding <=> a.embedding "
            f"LIMIT 1) nb WHERE a.embedding IS NOT NULL AND a.embedding_model = :model AND "
            f"{cond} AND 1 - nb.d >= :th AND a.id < nb.id ORDER BY sim DESC LIMIT :lim"
        )
        with db.snapshot() as conn:
            conn.execute(text("SELECT set_config('hnsw.ef_search', '100', true)"))
            rows = conn.execute(
                text(sql_), {**params, "model": model, "th": threshold, "lim": limit}
            )
            return [(int(r.a), int(r.b), float(r.sim)) for r in rows]

    def lock(self, conn: Connection, key: int) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})

    def try_lock(self, conn: Connection, key: int) -> bool:
        return bool(conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar())

    # -- messaging --------------------------------------------------------------------------
    def notify(self, conn: Connection, channels: list[str], payload: str) -> list[str]:
        for channel in channels:  # bind parameters: channel names are data, never SQL
            conn.execute(NOTIFY, {"ch": channel, "payload": payload})
        return list(channels)

    def open_listen(self, url: str) -> ListenConnection:
        return ListenConnection(url)

    # -- administration ---------------------------------------------------------------------
    def prepare(self, url: str) -> dict[str, Any]:
        created = ensure_database(url)
        return {"created": created, "pgvector_version": ensure_pgvector(url)}

    def discover(self, default_url: str) -> list[str]:
        try:
            conn = pg_connect(default_url, dbname="postgres")
        except MemoryPalaceError:
            return []
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE %s ESCAPE '!' "
                    "ORDER BY datname",
                    ("memory!_palace!_%",),
                )
                names = [r[0] for r in cur.fetchall()]
        except psycopg2.Error:
            return []
        finally:
            conn.close()
        base = make_url(default_url)
        return [base.set(database=n).render_as_string(hide_password=False) for n in names]

    def create_engine(self, url: str, options: Postgres) -> Engine:
        # No session state is kept on pooled connections (settings are SET LOCAL, locks are
        # xact locks, psycopg2 prepares nothing server-side), so PgBouncer in transaction mode
        # can sit in front. LIFO reuse keeps the idle connections few and warm.
        return create_engine(
            sqlalchemy_url(url),
            poolclass=QueuePool,
            pool_size=options.pool_size,
            max_overflow=options.max_overflow,
            pool_timeout=options.pool_timeout,
            pool_pre_ping=True,
            pool_use_lifo=True,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
        )

    def lock_rows(self, conn: Connection, table: str, ids: list[int]) -> None:
        # FOR NO KEY UPDATE, like the UPDATE itself: it does not block foreign-key checks
        # (edge inserts take KEY SHARE on the memories they link).
        conn.execute(
            text(f"SELECT id FROM {table} WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE"),
            {"ids": sorted(ids)},
        )

    def probe(self, url: str, tables: tuple[str, ...]) -> dict[str, Any]:
        try:
            conn = pg_connect(url)
        except DatabaseMissing as exc:
            return {"status": "missing", "error": exc.message, "table_counts": {}}
        except MemoryPalaceError as exc:
            return {"status": "down", "error": exc.message, "table_counts": {}}
        try:
            counts: dict[str, int] = {}
            with conn.cursor() as cur:
                for table in tables:
                    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
                    if cur.fetchone()[0]:
                        # Table names come from the caller's constant tuple, never from input.
                        cur.execute(
                            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
                        )
                        counts[table] = int(cur.fetchone()[0])
            return {"status": "connected", "table_counts": counts}
        except psycopg2.Error as exc:
            return {"status": "down", "error": _first_line(exc), "table_counts": {}}
        finally:
            conn.close()

    def translate(self, exc: BaseException, db: Database | None) -> Exception | None:
        where_ = f" at {db.masked_url}" if db is not None else ""
        if isinstance(exc, ValueError) and "NUL" in str(exc):
            # psycopg2 refuses NUL before sending: PostgreSQL text cannot hold U+0000.
            return InvalidParams(
                "a text value contains a NUL character (\\u0000), which "
                "PostgreSQL cannot store; remove it"
            )
        if not isinstance(exc, psycopg2.Error):
            return None
        code = exc.pgcode or ""
        detail = _first_line(exc)
        if not code:  # no SQLSTATE: the connection itself failed or was lost
            return BackendUnavailable(
                f"PostgreSQL{where_} is not reachable: {detail}. Check that the server runs "
                "(pg_isready); the call can be retried once it is back"
            )
        if code in (errorcodes.SERIALIZATION_FAILURE, errorcodes.DEADLOCK_DETECTED):
            return TransactionAborted(
                f"PostgreSQL{where_} aborted the transaction ({detail}, SQLSTATE {code}); "
                "nothing was written and the call can be retried"
            )
        if code == errorcodes.INVALID_CATALOG_NAME:
            return DatabaseMissing(f"PostgreSQL database{where_} does not exist: {detail}")
        if code == errorcodes.INSUFFICIENT_PRIVILEGE:
            return PermissionDenied(
                f"PostgreSQL{where_}: {detail}. " + privilege_fix(detail, db.url if db else None)
            )
        if code in _INVALID_CODES or code.startswith(_INVALID_CLASSES):
            what = _INVALID_CODES.get(code, "a value is not acceptable")
            return InvalidParams(f"PostgreSQL refused the data: {what} ({detail})")
        if code.startswith("23"):
            return Conflict(f"PostgreSQL{where_}: a constraint was violated ({detail})")
        if code.startswith(_UNAVAILABLE_CLASSES) or code in (
            errorcodes.READ_ONLY_SQL_TRANSACTION,
            errorcodes.ADMIN_SHUTDOWN,
        ):
            return BackendUnavailable(
                f"PostgreSQL{where_} cannot serve the call now: {detail} (SQLSTATE {code}); "
                "the call can be retried"
            )
        return None


def privilege_fix(detail: str, url: str | None) -> str:
    """The GRANT that fixes a 'permission denied' message, naming the role."""
    user = (make_url(url).username if url else None) or "<role>"
    lowered = detail.lower()
    if "for schema" in lowered:
        schema = lowered.split("for schema", 1)[1].split()[0].strip('"') or "public"
        return f"Fix: as the schema owner run GRANT CREATE, USAGE ON SCHEMA {schema} TO {user};"
    if "for table" in lowered or "for sequence" in lowered or "for relation" in lowered:
        return (
            "Fix: as the tables' owner run GRANT SELECT, INSERT, UPDATE, DELETE ON ALL "
            f"TABLES IN SCHEMA public TO {user}; GRANT USAGE ON ALL SEQUENCES IN SCHEMA "
            f"public TO {user};"
        )
    if "create database" in lowered:
        return f"Fix: as a superuser run ALTER USER {user} CREATEDB;"
    return f"Fix: grant role {user} the privilege named above."


BACKEND = PostgresBackend()


class ListenConnection:
    """A dedicated autocommit connection that LISTENs. `fileno()` makes it select()-able;
    every method raises BackendUnavailable (never a driver error) when the connection fails."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = pg_connect(url, application_name=LISTENER_APP)

    def fileno(self) -> int:
        return int(self._conn.fileno())

    def _run(self, statement: Any) -> None:
        try:
            with self._conn.cursor() as cur:
                cur.execute(statement)
        except (psycopg2.Error, OSError) as exc:
            raise connect_error(self.url, exc) from exc

    def listen(self, channel: str) -> None:
        # LISTEN takes no bind parameters: the channel is quoted as an identifier instead.
        self._run(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def unlisten(self, channel: str) -> None:
        self._run(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))

    def ping(self) -> None:
        self._run("SELECT 1")

    def channels(self) -> list[str]:
        """The channels this connection LISTENs to, as the server reports them."""
        try:
            with self._conn.cursor() as cur:
                cur.execute("SELECT pg_listening_channels()")
                return sorted(r[0] for r in cur.fetchall())
        except (psycopg2.Error, OSError) as exc:
            raise connect_error(self.url, exc) from exc

    def payloads(self) -> list[str]:
        """Notification payloads received since the last call."""
        try:
            self._conn.poll()
        except (psycopg2.Error, OSError) as exc:
            raise connect_error(self.url, exc) from exc
        out = [n.payload for n in self._conn.notifies]
        self._conn.notifies.clear()
        return out

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:  # closing a dead connection may raise anything; it is gone either way
            log.debug("closing a LISTEN connection failed", exc_info=True)
