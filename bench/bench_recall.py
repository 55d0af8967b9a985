"""Recall latency at 10k and 100k memories (384-d) on SQLite and PostgreSQL, against the original's
baseline (JSON-decode every filtered row, pure-Python cosine, sort), with PostgreSQL recall@10.

Usage: python bench/bench_recall.py [--quick] [--backends sqlite,postgres] [--queries N]
PostgreSQL: MEMORY_PALACE_TEST_PG_URL (a superuser URL) or a pgserver started in a temp dir.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from memory_palace import Palace, load_settings
from memory_palace.db.engine import Database, dispose_engines, pg_connect
from memory_palace.errors import EmbedderUnavailable
from memory_palace.services import vectors
from memory_palace.services.filters import Filters
from sqlalchemy import text
from sqlalchemy.engine import make_url

DIM = 384
CLUSTERS = 100
MODEL = "bench:clustered-384"
K = 50  # what memory_recall asks the vector search for (recall.CANDIDATES)
LIMIT = 10  # memory_recall limit
FILTERS = {"none": None, "10%": "p10", "1%": "p1"}


class QueryEmbedder:
    """Returns a precomputed query vector (set before each call): no model in the timings."""

    id = MODEL
    dim = DIM

    def __init__(self) -> None:
        self.vector = np.zeros(DIM, np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.vector

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        raise EmbedderUnavailable("the benchmark writes rows directly")


@dataclass
class Data:
    """Clustered unit vectors; row i is in project p10 if i % 10 == 0 and p1 if i % 100 == 0."""

    vecs: np.ndarray
    cluster: np.ndarray
    queries: np.ndarray = field(default_factory=lambda: np.zeros((0, DIM), np.float32))
    qcluster: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def make(cls, n: int, nq: int, seed: int = 42) -> Data:
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(CLUSTERS, DIM)).astype(np.float32)
        cluster = rng.integers(0, CLUSTERS, n)
        vecs = centres[cluster] + 0.9 * rng.normal(size=(n, DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        qcluster = rng.integers(0, CLUSTERS, nq)
        queries = centres[qcluster] + 0.9 * rng.normal(size=(nq, DIM)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        return cls(vecs, cluster, queries, qcluster)

    def mask(self, project: str | None, n: int) -> np.ndarray:
        i = np.arange(n)
        if project is None:
            return np.ones(n, bool)
        return i % (10 if project == "p10" else 100) == 0


def projects_of(i: int) -> list[str]:
    return ["p1", "p10"] if i % 100 == 0 else ["p10"] if i % 10 == 0 else ["main"]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(milliseconds, result) of fn(*args)."""
    t = time.perf_counter()
    out = fn(*args)
    return (time.perf_counter() - t) * 1000, out


def make_palace(url: str, root: Path, embedder: Any) -> Palace:
    data_dir = Path(tempfile.mkdtemp(dir=root, prefix="data"))
    (data_dir / "config.json").write_bytes(
        orjson.dumps({"database": {"url": url}, "embedder": "hash"})
    )
    return Palace(load_settings(data_dir, env={}), embedder=embedder)


# --- bulk loading -----------------------------------------------------------------------------


def sqlite_load(db: Database, data: Data, start: int, stop: int, baseline: bool) -> None:
    """Rows [start, stop) with float32 BLOBs, plus the original's JSON-text copy (baseline)."""
    path = make_url(db.url).database
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS baseline_rows (id INTEGER PRIMARY KEY, "
            "projects TEXT NOT NULL, is_archived INTEGER NOT NULL, embedding TEXT)"
        )
        now = "2025-01-01T00:00:00+00:00"
        with conn:
            conn.executemany(
                "INSERT INTO memories (created_at, updated_at, instance_id, projects, "
                "memory_type, subject, content, embedding, embedding_model, embedding_dim) "
                "VALUES (?, ?, 'bench', ?, 'fact', ?, ?, ?, ?, ?)",
                (
                    (
                        now,
                        now,
                        json.dumps(projects_of(i)),
                        f"bench {i}",
                        f"synthetic memory {i} about topic{data.cluster[i]}",
                        data.vecs[i].astype("<f4").tobytes(),
                        MODEL,
                        DIM,
                    )
                    for i in range(start, stop)
                ),
            )
            if baseline:
                conn.executemany(
                    "INSERT INTO baseline_rows (id, projects, is_archived, embedding) "
                    "VALUES (?, ?, 0, ?)",
                    (
                        (
                            i,
                            json.dumps(projects_of(i)),
                            orjson.dumps(data.vecs[i].tolist()).decode(),
                        )
                        for i in range(start, stop)
                    ),
                )
    finally:
        conn.close()


def pg_copy_binary(rows: np.ndarray, cluster: np.ndarray, vecs: np.ndarray) -> bytes:
    """COPY BINARY stream for (i bigint, c int, embedding vector), built with numpy."""
    n = len(rows)
    dt = np.dtype(
        [
            ("nf", ">i2"),
            ("l1", ">i4"),
            ("i", ">i8"),
            ("l2", ">i4"),
            ("c", ">i4"),
            ("l3", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("v", ">f4", (DIM,)),
        ]
    )
    buf = np.zeros(n, dt)
    buf["nf"], buf["l1"], buf["i"], buf["l2"], buf["c"] = 3, 8, rows, 4, cluster
    buf["l3"], buf["dim"], buf["v"] = 4 + 4 * DIM, DIM, vecs
    return (
        b"PGCOPY\n\xff\r\n\x00"
        + (0).to_bytes(4, "big")
        + (0).to_bytes(4, "big")
        + buf.tobytes()
        + (-1).to_bytes(2, "big", signed=True)
    )


def pg_load(db: Database, data: Data, start: int, stop: int) -> float:
    """Insert rows [start, stop) through a binary COPY and rebuild the HNSW index; returns the
    index build time in seconds."""
    import io

    conn = pg_connect(db.url, autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute("DROP INDEX IF EXISTS idx_memories_embedding_hnsw")
            cur.execute(f"CREATE TEMP TABLE stage (i bigint, c int, embedding vector({DIM}))")
            rows = np.arange(start, stop)
            cur.copy_expert(
                "COPY stage FROM STDIN WITH (FORMAT binary)",
                io.BytesIO(pg_copy_binary(rows, data.cluster[start:stop], data.vecs[start:stop])),
            )
            cur.execute(
                "INSERT INTO memories (created_at, updated_at, instance_id, projects, memory_type, "
                "subject, content, embedding, embedding_model, embedding_dim) "
                "SELECT now(), now(), 'bench', CASE WHEN i %% 100 = 0 THEN ARRAY['p1', 'p10'] "
                "WHEN i %% 10 = 0 THEN ARRAY['p10'] ELSE ARRAY['main'] END, 'fact', 'bench ' || i, "
                "'synthetic memory ' || i || ' about topic' || c, embedding, %s, %s "
                "FROM stage ORDER BY i",
                (MODEL, DIM),
            )
            cur.execute("DROP TABLE stage")
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET maintenance_work_mem = '512MB'")
            t = time.perf_counter()
            cur.execute(
                "CREATE INDEX idx_memories_embedding_hnsw ON memories "
                "USING hnsw (embedding vector_cosine_ops)"
            )
            build = time.perf_counter() - t
            cur.execute("VACUUM ANALYZE memories")
        return build
    finally:
        conn.close()


def id_map(db: Database) -> dict[int, int]:
    """memory id -> synthetic row number (from the subject 'bench <i>')."""
    with db.read() as conn:
        return {
            int(r[0]): int(r[1].split()[1])
            for r in conn.execute(
                text("SELECT id, subject FROM memories WHERE subject LIKE 'bench %'")
            )
        }


# --- the original's way -----------------------------------------------------------------------


def baseline_search(path: str, q: list[float], project: str | None, k: int) -> list[int]:
    """What the original does on SQLite: load every filtered row, json-decode the embedding,
    cosine in pure Python, sort."""
    conn = sqlite3.connect(path)
    try:
        sql = "SELECT id, embedding FROM baseline_rows WHERE is_archived = 0"
        args: tuple[Any, ...] = ()
        if project is not None:
            sql += " AND EXISTS (SELECT 1 FROM json_each(projects) WHERE value = ?)"
            args = (project,)
        rows = conn.execute(sql, args).fetchall()
    finally:
        conn.close()
    qn = math.sqrt(sum(x * x for x in q))
    scored = []
    for mid, emb in rows:
        v = json.loads(emb)
        dot = sum(a * b for a, b in zip(q, v, strict=True))
        norm = math.sqrt(sum(b * b for b in v))
        scored.append((dot / (qn * norm) if norm and qn else -1.0, mid))
    scored.sort(reverse=True)
    return [mid for _, mid in scored[:k]]


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Row:
    backend: str
    n: int
    filter: str
    vec: list[float]
    recall: list[float]
    base: list[float]
    recall_at_10: float | None
    filled: str


def measure(
    palace: Palace,
    embedder: QueryEmbedder,
    db: Database,
    data: Data,
    n: int,
    backend: str,
    nq: int,
    nbase: int,
    ids: dict[int, int],
) -> Iterator[Row]:
    for label, project in FILTERS.items():
        f = Filters.make(project=project)
        mask = data.mask(project, n)
        allowed = np.nonzero(mask)[0]
        vec_ms, rec_ms, base_ms, overlaps = [], [], [], []
        filled = 0
        for j in range(nq):
            q = data.queries[j]
            ms, hits = timed(vectors.search, db, MODEL, DIM, q, K, f)
            vec_ms.append(ms)
            filled += len(hits) == min(K, len(allowed))
            exact = allowed[np.argsort(-(data.vecs[allowed] @ q))[:10]]
            overlaps.append(len({ids[h] for h, _ in hits[:10]} & set(exact.tolist())) / 10)
            embedder.vector = q
            params = {"query": f"topic{data.qcluster[j]}", "limit": LIMIT}
            if project:
                params["project"] = project
            ms, out = timed(palace.call, "memory_recall", params)
            rec_ms.append(ms)
            if out["count"] != min(LIMIT, len(allowed)):
                raise SystemExit(f"memory_recall returned {out['count']} of {LIMIT} ({label})")
        if backend == "sqlite":
            path = make_url(db.url).database
            for j in range(nbase):
                ms, _ = timed(baseline_search, path, data.queries[j].tolist(), project, K)
                base_ms.append(ms)
        yield Row(
            backend,
            n,
            label,
            vec_ms,
            rec_ms,
            base_ms,
            statistics.fmean(overlaps) if backend == "postgres" else None,
            f"{filled}/{nq}",
        )


def print_row(r: Row) -> None:
    base = statistics.median(r.base) if r.base else None
    vp50 = statistics.median(r.vec)
    ratio = f"{base / vp50:8.0f}x" if base else f"{'-':>9}"
    rat = f"{r.recall_at_10:.3f}" if r.recall_at_10 is not None else "exact"
    print(
        f"{r.backend:<9}{r.n:>7} {r.filter:>5} | {vp50:7.2f} {pct(r.vec, 95):7.2f} | "
        f"{statistics.median(r.recall):7.2f} {pct(r.recall, 95):7.2f} | "
        f"{(f'{base:9.1f}' if base else '-'):>9} {ratio} | {rat:>6} {r.filled:>8}",
        flush=True,
    )


HEADER = (
    f"{'backend':<9}{'n':>7} {'filt':>5} | {'vec p50':>7} {'p95':>7} | {'recall':>7} "
    f"{'p95':>7} | {'baseline':>9} {'speedup':>9} | {'r@10':>6} {'filled':>8}\n"
    f"{'':<22}| {'ms (services.vectors.search k=50)':<15} | {'ms (memory_recall)':<15} | "
    f"{'ms p50':>9} {'vs vec':>9} |"
)


def run_backend(
    backend: str,
    url: str,
    root: Path,
    data: Data,
    sizes: list[int],
    nq: int,
    nbase: dict[int, int],
    notes: list[str],
) -> list[Row]:
    embedder = QueryEmbedder()
    palace = make_palace(url, root, embedder)
    db = palace.database()
    rows: list[Row] = []
    loaded = 0
    for n in sizes:
        t = time.perf_counter()
        if backend == "sqlite":
            sqlite_load(db, data, loaded, n, baseline=nbase.get(n, 0) > 0)
            load = time.perf_counter() - t
            ms, _ = timed(
                lambda: vectors.search(db, MODEL, DIM, data.queries[0], K, Filters.make())
            )
            notes.append(
                f"sqlite {n}: bulk insert {load:.1f} s; vector cache (re)load "
                f"on the first query {ms:.0f} ms"
            )
        else:
            build = pg_load(db, data, loaded, n)
            notes.append(
                f"postgres {n}: load {time.perf_counter() - t:.1f} s, of which HNSW "
                f"build {build:.1f} s (pgvector {db.pgvector_version})"
            )
        loaded = n
        ids = id_map(db)
        for row in measure(palace, embedder, db, data, n, backend, nq, nbase.get(n, 0), ids):
            print_row(row)
            rows.append(row)
    palace.close()
    return rows


def pg_server(root: Path) -> tuple[str, Any]:
    url = os.environ.get("MEMORY_PALACE_TEST_PG_URL")
    if url:
        return url, None
    import pgserver

    server = pgserver.get_server(root / "pg", cleanup_mode="delete")
    return server.get_uri(), server


def real_query_embedding() -> str:
    try:
        from memory_palace.embeddings.local import LocalEmbedder

        emb = LocalEmbedder()
        emb.embed_query("warm up the model")
        times = [
            timed(lambda: emb.embed_query("what port does the build server use?"))[0]
            for _ in range(20)
        ]
        return (
            f"real query embedding (local all-MiniLM-L6-v2 int8): p50 "
            f"{statistics.median(times):.1f} ms, p95 {pct(times, 95):.1f} ms; add it to the "
            "memory_recall column for an end-to-end figure"
        )
    except Exception as exc:
        return f"real query embedding not measured: {exc}"


def check_targets(rows: list[Row]) -> list[str]:
    out = []
    for r in rows:
        if r.backend == "sqlite" and r.n == 10_000 and r.base:
            ratio = statistics.median(r.base) / statistics.median(r.vec)
            ok = ratio >= 50 and pct(r.vec, 95) <= 20 and pct(r.recall, 95) <= 20
            out.append(
                f"{'PASS' if ok else 'FAIL'} sqlite 10k {r.filter}: {ratio:.0f}x baseline "
                f"(>= 50x), vector p95 {pct(r.vec, 95):.2f} ms, recall p95 "
                f"{pct(r.recall, 95):.2f} ms (<= 20 ms)"
            )
        if r.backend == "postgres" and r.n == 100_000 and r.filter != "none":
            full = r.filled.split("/")
            ok = pct(r.vec, 95) <= 20 and (r.recall_at_10 or 0) >= 0.95 and full[0] == full[1]
            out.append(
                f"{'PASS' if ok else 'FAIL'} postgres 100k {r.filter}: vector p95 "
                f"{pct(r.vec, 95):.2f} ms (<= 20), recall@10 {r.recall_at_10:.3f} "
                f"(>= 0.95), limit filled {r.filled}"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k only, fewer queries")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--queries", type=int, default=None, help="queries per row (100; quick 30)")
    args = ap.parse_args(argv)
    sizes = [10_000] if args.quick else [10_000, 100_000]
    nq = args.queries or (30 if args.quick else 100)
    nbase = {10_000: 5 if args.quick else 10, 100_000: 2}
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    data = Data.make(max(sizes), nq)
    root = Path(tempfile.mkdtemp(prefix="mp-bench-"))
    notes: list[str] = []
    rows: list[Row] = []
    server = None
    started = time.perf_counter()
    print(
        f"{DIM}-d clustered unit vectors ({CLUSTERS} clusters); filters: none, 10% and 1% of "
        f"rows by project; {nq} queries per row; the query vector is precomputed (no model)\n"
    )
    print(HEADER, flush=True)
    try:
        for backend in backends:
            if backend == "sqlite":
                url = f"sqlite:///{root / 'bench.db'}"
            else:
                server_url, server = pg_server(root)
                url = (
                    make_url(server_url)
                    .set(database=f"mp_bench_{os.getpid()}")
                    .render_as_string(hide_password=False)
                )
            rows += run_backend(backend, url, root, data, sizes, nq, nbase, notes)
            dispose_engines()
    finally:
        dispose_engines()
        if server is not None:
            server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    print()
    for note in notes:
        print(note)
    print(real_query_embedding())
    print(
        f"baseline: the original's SQLite path (json.loads per row, pure-Python cosine, sort), "
        f"{nbase[10_000]} queries at 10k, {nbase[100_000]} at 100k; PostgreSQL r@10 is against "
        "an exact numpy scan of the same filtered rows"
    )
    for line in check_targets(rows):
        print(line)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
