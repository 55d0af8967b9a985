"""Benchmark memory-palace-sqlite-to-pg: 100k memories (384-d) with edges and messages.

Compares, in the same run, against a row-by-row INSERT baseline (the original's method: one
INSERT per row with a '[..]' vector literal, one commit per page of 100) on a subset.

    python bench/bench_migrate.py [--memories 100000] [--baseline 5000] [--pg-url URL]
Uses MEMORY_PALACE_TEST_PG_URL when set, else starts a throwaway pgserver.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
from memory_palace import migrate as mig
from memory_palace.db import schema
from memory_palace.db.engine import dispose_engines, get_database
from memory_palace.db.postgres import pg_connect
from memory_palace.db.tables import MEMORIES
from sqlalchemy.engine import make_url


def build_source(
    path: Path,
    memories: int,
    dim: int = 384,
    edges_per: float = 1.0,
    messages: int = 10_000,
    seed: int = 7,
) -> None:
    """A SQLite file in this project's layout, filled with raw executemany (fast)."""
    url = f"sqlite:///{path}"
    db = get_database(url)
    schema.migrate(db, dim)
    dispose_engines(url)
    rng = np.random.default_rng(seed)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    base = datetime(2025, 1, 1, tzinfo=UTC)
    words = ["cat", "dog", "deploy", "postgres", "vector", "memory", "agent", "graph", "docs"]
    chunk = 10_000
    with conn:
        for start in range(0, memories, chunk):
            n = min(chunk, memories - start)
            vecs = rng.standard_normal((n, dim), dtype=np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            rows = []
            for j in range(n):
                i = start + j + 1
                t = (base + timedelta(seconds=i)).isoformat()
                content = f"memory {i}: " + " ".join(
                    words[(i * k) % len(words)] for k in range(1, 12)
                )
                rows.append(
                    (
                        i,
                        t,
                        t,
                        None,
                        i % 5,
                        f"agent{i % 4}",
                        orjson.dumps(["life", f"p{i % 10}"]).decode(),
                        "fact",
                        f"subject {i}",
                        content,
                        f"{i:064x}",
                        orjson.dumps([words[i % 9]]).decode(),
                        None,
                        int(i % 50 == 0),
                        "explicit",
                        None,
                        None,
                        vecs[j].astype("<f4").tobytes(),
                        "hash:v1-384",
                        dim,
                        None,
                        0,
                    )
                )
            conn.executemany(
                "INSERT INTO memories (id, created_at, updated_at, last_accessed_at, "
                "access_count, instance_id, projects, memory_type, subject, content, "
                "content_hash, keywords, tags, foundational, source_type, source_context, "
                "source_session_id, embedding, embedding_model, embedding_dim, expires_at, "
                "is_archived) VALUES (" + ",".join("?" * 22) + ")",
                rows,
            )
        n_edges = int(memories * edges_per)
        src = rng.integers(1, memories + 1, n_edges)
        off = rng.integers(1, min(memories, 1000), n_edges)
        tgt = (src - 1 + off) % memories + 1
        seen = set()
        rows = []
        for k, (s, t) in enumerate(zip(src.tolist(), tgt.tolist(), strict=True)):
            if (s, t) in seen or s == t:
                continue
            seen.add((s, t))
            rows.append(
                (
                    k + 1,
                    base.isoformat(),
                    s,
                    t,
                    "relates_to",
                    0.8,
                    0,
                    orjson.dumps({"auto_linked": True, "method": "bench"}).decode(),
                    "bench",
                    1,
                )
            )
        conn.executemany(
            "INSERT INTO memory_edges (id, created_at, source_id, target_id, "
            "relation_type, strength, bidirectional, metadata, created_by, "
            "auto_linked) VALUES (?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO messages (id, created_at, from_instance, to_instance, message_type, "
            "subject, content, channel, priority, delivery_status) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    i,
                    base.isoformat(),
                    f"agent{i % 4}",
                    "all" if i % 7 == 0 else f"agent{i % 3}",
                    "handoff",
                    f"msg {i}",
                    f"content of message {i}",
                    None,
                    i % 10,
                    "delivered",
                )
                for i in range(1, messages + 1)
            ],
        )
        conn.executemany(
            "INSERT INTO message_reads (message_id, instance_id, read_at) VALUES (?,?,?)",
            [(i, f"agent{i % 3}", base.isoformat()) for i in range(1, messages + 1, 2)],
        )
    conn.close()


def baseline(source: Path, target_url: str, limit: int, dim: int = 384) -> float:
    """The original's method on the first `limit` memories: one INSERT per row, a commit per
    page of 100, vectors bound as '[..]' text. Returns memories/s."""
    db = get_database(target_url)
    schema.migrate(db, dim)
    src = mig.Source(source)
    conn = pg_connect(target_url, autocommit=False)
    cur = conn.cursor()
    cols = MEMORIES.names
    vec = cols.index("embedding")
    stmt = (
        f"INSERT INTO memories ({', '.join(cols)}) VALUES ("
        + ", ".join("%s::vector" if c == "embedding" else "%s" for c in cols)
        + ") ON CONFLICT (id) DO NOTHING"
    )
    started = time.perf_counter()
    done = 0
    for batch in mig.source_rows(src, "memories", 100):
        for row in batch:
            vals = list(row)
            vals[vec] = "[" + ",".join(map(str, vals[vec].tolist())) + "]"
            cur.execute(stmt, vals)
            done += 1
            if done >= limit:
                break
        conn.commit()
        if done >= limit:
            break
    elapsed = time.perf_counter() - started
    conn.close()
    src.close()
    return done / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memories", type=int, default=100_000)
    ap.add_argument("--baseline", type=int, default=5_000)
    ap.add_argument("--batch-size", type=int, default=mig.DEFAULT_BATCH)
    ap.add_argument("--pg-url", default=os.environ.get("MEMORY_PALACE_TEST_PG_URL"))
    args = ap.parse_args()

    server = None
    pg = args.pg_url
    if not pg:
        import pgserver

        server = pgserver.get_server(
            Path(tempfile.mkdtemp(prefix="mp-bench-pg-")), cleanup_mode="delete"
        )
        pg = server.get_uri()
    work = Path(tempfile.mkdtemp(prefix="mp-bench-"))
    source = work / "memories.db"
    t0 = time.perf_counter()
    build_source(source, args.memories)
    print(
        f"built source: {args.memories} memories in {time.perf_counter() - t0:.1f} s "
        f"({source.stat().st_size / 1e6:.0f} MB)"
    )

    def fresh() -> str:
        return (
            make_url(pg)
            .set(database=f"mp_bench_{uuid.uuid4().hex[:8]}")
            .render_as_string(hide_password=False)
        )

    report = mig.migrate(
        f"sqlite:///{source}", fresh(), batch_size=args.batch_size, progress=sys.stderr.isatty()
    )
    rows = report["source_rows"]
    mem_rate = report["memories_per_s"]
    mem_seconds = rows["memories"] / mem_rate if mem_rate else 0.0
    total_mem_rate = rows["memories"] / (mem_seconds + report["index_seconds"])
    print(
        f"migration ok={report['ok']}: {sum(rows.values())} rows "
        f"({rows['memories']} memories, {rows['memory_edges']} edges, {rows['messages']} "
        f"messages, {rows['message_reads']} reads)"
    )
    for name, t in report["tables"].items():
        print(f"  {name:<14} {t['source']:>8} rows  {t['rows_per_s'] or 0:>9} rows/s")
    print(
        f"  copy {report['copy_seconds']} s = {report['rows_per_s']} rows/s; HNSW build + "
        f"setval {report['index_seconds']} s"
    )
    print(f"  check of every row before copying {report['check_seconds']} s")
    print(f"memories/s (copy): {mem_rate}")
    whole = report["copy_seconds"] + report["index_seconds"]
    print(f"all rows incl. HNSW index build: {sum(rows.values()) / whole:.0f} rows/s")

    base_rate = baseline(source, fresh(), args.baseline)
    print(f"baseline (row-by-row INSERT, {args.baseline} memories): {base_rate:.0f} memories/s")
    print(
        f"ratio COPY/baseline: {mem_rate / base_rate:.1f}x (memories copy phase); "
        f"{total_mem_rate / base_rate:.1f}x counting the whole run incl. the index build"
    )
    print(
        f"target >= 20000 memories/s: {'met' if mem_rate >= 20000 else 'NOT met'}; "
        f">= 10x baseline: {'met' if mem_rate >= 10 * base_rate else 'NOT met'}"
    )
    dispose_engines()
    if server is not None:
        server.cleanup()
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
