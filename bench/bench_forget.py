"""memory_forget at scale on PostgreSQL: forget 10 % of 100k memories by a project filter, then
check that nothing of them is left and that the HNSW index still finds the true neighbours.

What it does:
  1. Bulk-loads n memories (384-d clustered unit vectors, 10 projects, `edges` random edges and
     a version row for every fifth memory) into a fresh database by binary COPY, and builds the
     product's search indexes (tsvector GIN, HNSW).
  2. recall@10 of `services.vectors.search` against an exact numpy scan, before.
  3. `memory_forget` with project=p3 as a dry run, then for real (one call); wall times.
  4. Checks by SQL that no row of p3, no edge touching it and no version of it is left.
  5. recall@10 against an exact scan of the rows left, after.
  6. Baseline: the same delete done as one `memory_forget` call per id (memory_ids=[id]) on
     `--baseline` ids of project p4, extrapolated to the same count; ratio = baseline / bulk.

Usage:
  python bench/bench_forget.py                 # 100k, ~2 min (HNSW build included)
  python bench/bench_forget.py --n 20000       # quicker
PostgreSQL: MEMORY_PALACE_TEST_PG_URL (a superuser URL) or a pgserver in a temp dir.
Targets (from issue 15, 2 cores): forgetting 10k of 100k < 10 s; recall@10 after >= 0.95.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recall_data as rd
from memory_palace import Palace, load_settings
from memory_palace.db.filters import Filters
from memory_palace.db.postgres import pg_connect
from memory_palace.embeddings import HashingEmbedder
from memory_palace.services import vectors
from sqlalchemy import text
from sqlalchemy.engine import make_url

DIM = 384
PROJECTS = 10
QUERIES = 100
# Noise norm ~0.6 around 100 centres: neighbourhoods as tight as text embeddings' (pure noise
# in 384-d makes every vector equidistant, the worst case for any ANN index).
NOISE = 0.03


def server_url(workdir: Path) -> tuple[str, Any]:
    url = os.environ.get("MEMORY_PALACE_TEST_PG_URL")
    if url:
        return url, None
    import pgserver

    server = pgserver.get_server(workdir / "pg", cleanup_mode="stop")
    return server.get_uri(), server


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def load(palace: Palace, vecs: np.ndarray, edges: int, model: str) -> float:
    db = palace.database()
    n = len(vecs)
    rng = np.random.default_rng(5)
    conn = pg_connect(db.url, autocommit=False)
    t0 = time.perf_counter()
    try:
        with conn.cursor() as cur:
            cur.execute("DROP INDEX IF EXISTS idx_memories_embedding_hnsw")
            cur.execute(
                "CREATE TEMP TABLE stage (id int8, project text, content text, "
                f"embedding vector({DIM}))"
            )
            rows = ((i + 1, f"p{i % PROJECTS}", f"memory {i} note", vecs[i]) for i in range(n))
            cur.copy_expert(
                "COPY stage FROM STDIN WITH (FORMAT binary)",
                rd.copy_binary(rows, ["int8", "text", "text", "vector"]),
            )
            cur.execute(
                "INSERT INTO memories (id, created_at, updated_at, instance_id, projects, "
                "memory_type, content, embedding, embedding_model, embedding_dim) "
                "SELECT id, now(), now(), 'bench', ARRAY[project], 'fact', content, embedding, "
                "%s, %s FROM stage ORDER BY id",
                (model, DIM),
            )
            src = rng.integers(1, n + 1, edges)
            dst = rng.integers(1, n + 1, edges)
            pairs = {(int(a), int(b)) for a, b in zip(src, dst, strict=True) if a != b}
            cur.execute("CREATE TEMP TABLE estage (s int8, t int8)")
            cur.copy_expert(
                "COPY estage FROM STDIN WITH (FORMAT binary)",
                rd.copy_binary(sorted(pairs), ["int8", "int8"]),
            )
            cur.execute(
                "INSERT INTO memory_edges (source_id, target_id, relation_type) "
                "SELECT s, t, 'relates_to' FROM estage"
            )
            cur.execute(
                "INSERT INTO memory_versions (memory_id, version, changed_by, old_values) "
                "SELECT id, 2, 'bench', '{\"tags\": []}' FROM memories WHERE id % 5 = 4"
            )
            for table in ("memories", "memory_edges", "memory_versions"):
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET maintenance_work_mem = '512MB'")
            for stmt in db.backend.search_ddl(DIM):
                cur.execute(stmt)
            cur.execute("VACUUM ANALYZE")
    finally:
        conn.close()
    return time.perf_counter() - t0


def recall_at_10(palace: Palace, embedder: HashingEmbedder, queries: np.ndarray) -> float:
    """Mean overlap of the index's top 10 with an exact scan of the rows stored now."""
    db = palace.database()
    with db.read() as conn:
        rows = conn.execute(text("SELECT id, embedding::text FROM memories ORDER BY id")).all()
    ids = np.array([r[0] for r in rows])
    mat = np.array([orjson.loads(r[1]) for r in rows], np.float32)
    hits = 0
    for q in queries:
        exact = set(ids[np.argsort(-(mat @ q))[:10]].tolist())
        found = {i for i, _ in vectors.search(db, embedder, q, 10, Filters())}
        hits += len(exact & found)
    return hits / (10 * len(queries))


def count(palace: Palace, sql: str) -> int:
    with palace.database().read() as conn:
        return int(conn.execute(text(sql)).scalar())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--edges", type=int, default=100_000)
    ap.add_argument("--baseline", type=int, default=300, help="ids forgotten one call each")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mp-forget-"))
    url, server = server_url(workdir)
    try:
        db_url = (
            make_url(url)
            .set(database=f"mp_forget_{uuid.uuid4().hex[:8]}")
            .render_as_string(hide_password=False)
        )
        (workdir / "config.json").write_bytes(orjson.dumps({"database": {"url": db_url}}))
        embedder = HashingEmbedder(DIM)
        palace = Palace(load_settings(workdir, env={}), embedder=embedder)
        rng = np.random.default_rng(7)
        centres = unit(rng.normal(size=(100, DIM)))
        vecs = unit(centres[rng.integers(0, 100, args.n)] + NOISE * rng.normal(size=(args.n, DIM)))
        queries = unit(
            centres[rng.integers(0, 100, QUERIES)] + NOISE * rng.normal(size=(QUERIES, DIM))
        )
        loaded = load(palace, vecs, args.edges, embedder.id)
        print(f"loaded {args.n} memories, edges and versions, indexes built: {loaded:.0f} s")
        before = recall_at_10(palace, embedder, queries)

        t0 = time.perf_counter()
        dry = palace.call("memory_forget", {"project": "p3"})
        dry_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        done = palace.call("memory_forget", {"project": "p3", "dry_run": False})
        forget_s = time.perf_counter() - t0
        left = {
            "memories": count(palace, "SELECT count(*) FROM memories WHERE 'p3' = ANY(projects)"),
            "edges": count(
                palace,
                "SELECT count(*) FROM memory_edges e WHERE NOT EXISTS (SELECT 1 FROM memories m "
                "WHERE m.id = e.source_id) OR NOT EXISTS (SELECT 1 FROM memories m "
                "WHERE m.id = e.target_id)",
            ),
            "versions": count(
                palace,
                "SELECT count(*) FROM memory_versions v WHERE NOT EXISTS "
                "(SELECT 1 FROM memories m WHERE m.id = v.memory_id)",
            ),
        }
        after = recall_at_10(palace, embedder, queries)

        with palace.database().read() as conn:
            ids = [
                int(r[0])
                for r in conn.execute(
                    text("SELECT id FROM memories WHERE 'p4' = ANY(projects) ORDER BY id LIMIT :k"),
                    {"k": args.baseline},
                )
            ]
        t0 = time.perf_counter()
        for mid in ids:
            palace.call("memory_forget", {"memory_ids": [mid], "dry_run": False})
        per_id = (time.perf_counter() - t0) / max(len(ids), 1)
        baseline_s = per_id * done["forgotten"]

        print()
        print(
            "| n | forgotten | edges | versions | dry run | forget | one call per id "
            "(extrapolated) | ratio | recall@10 before | after | left behind |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        print(
            f"| {args.n} | {done['forgotten']} | {done['edges']} | {done['versions']} | "
            f"{dry_s:.2f} s | {forget_s:.2f} s | {baseline_s:.1f} s | "
            f"{baseline_s / forget_s:.0f}x | {before:.3f} | {after:.3f} | "
            f"{sum(left.values())} |"
        )
        ok = forget_s < 10 and after >= 0.95 and not any(left.values())
        ok = ok and dry["would_forget"] == done["forgotten"]
        print(
            f"\ntarget forget < 10 s, recall@10 >= 0.95, nothing left: {'PASS' if ok else 'FAIL'}"
        )
        palace.close()
        return 0 if ok else 1
    finally:
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    sys.exit(main())
