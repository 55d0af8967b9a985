"""What visibility filtering costs memory_recall: latency with scopes against the same data
without them, measured in the same run.

One database per backend holds N synthetic memories (bench/recall_data.py: realistic word
statistics, identifiers, topics) written through memory_set by 10 instances. Two passes over the
same queries, as instance i0:

  baseline   every memory shared (what recall did before scopes)
  scoped     half of the memories private, spread over the 10 instances, so i0 sees the shared
             half plus its own private twentieth (55 % of the rows)

The two passes alternate (ROUNDS times). For each pass: p50 / p95 latency of memory_recall
(limit 10, hybrid, in-process, hash embedder so the query embedding costs the same in both) and
how often the reply was filled to the limit. The scoped pass must stay within 10 % of the
baseline (ratio <= 1.10) and fill every reply.

Usage: python bench/bench_scopes.py [--n 10000] [--queries 200] [--backends sqlite,postgres]
PostgreSQL: MEMORY_PALACE_TEST_PG_URL (a superuser URL) or a pgserver started in a temp dir.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import recall_data as rd
from memory_palace import Palace, load_settings
from memory_palace.db.engine import dispose_engines
from memory_palace.embeddings.hashing import HashingEmbedder
from memory_palace.services.access import Caller
from sqlalchemy import text
from tqdm import tqdm

INSTANCES = [f"i{k}" for k in range(10)]
LIMIT = 10
TARGET = 1.10
ROUNDS = 2


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def make_palace(root: Path, url: str) -> Palace:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = {
        "database": {"url": url},
        "embedder": "hash",
        "instances": INSTANCES,
        "auto_link": {"enabled": False},  # loading speed; recall does not depend on links
    }
    (data / "config.json").write_bytes(orjson.dumps(config))
    return Palace(load_settings(data, env={}), embedder=HashingEmbedder(384))


def load(palace: Palace, corpus: rd.Corpus) -> list[int]:
    """Every memory through memory_set, shared; returns the ids in corpus order."""
    ids = []
    quiet = not sys.stderr.isatty()
    for i in tqdm(range(len(corpus)), desc="memory_set", file=sys.stderr, disable=quiet):
        who = Caller(INSTANCES[i % len(INSTANCES)], "admin")
        out = palace.call(
            "memory_set",
            {
                "content": corpus.contents[i],
                "subject": corpus.subjects[i],
                "keywords": corpus.keywords[i],
            },
            caller=who,
        )
        ids.append(out["id"])
    return ids


def set_visibility(palace: Palace, ids: list[int], visibility: str) -> None:
    """Every other memory private to its writer, or all shared again (the change log keeps the
    SQLite vector index in step)."""
    with palace.database().write() as conn:
        conn.execute(
            text("UPDATE memories SET visibility = :v WHERE id = :i"),
            [{"i": i, "v": visibility} for i in ids if i % 2 == 0],
        )


def measure(palace: Palace, queries: list[str]) -> tuple[list[float], float]:
    me = Caller("i0", "admin")
    for q in queries[:20]:  # warm caches as in steady use
        palace.call("memory_recall", {"query": q, "limit": LIMIT}, caller=me)
    times, filled = [], 0
    for q in queries:
        t = time.perf_counter()
        out = palace.call("memory_recall", {"query": q, "limit": LIMIT}, caller=me)
        times.append((time.perf_counter() - t) * 1000)
        filled += len(out["memories"]) == LIMIT
    return times, filled / len(queries)


def pg_url(workdir: Path) -> tuple[str, Any]:
    if os.environ.get("MEMORY_PALACE_TEST_PG_URL"):
        return os.environ["MEMORY_PALACE_TEST_PG_URL"], None
    import pgserver

    server = pgserver.get_server(workdir / "pg", cleanup_mode="delete")
    return server.get_uri(), server


def run_backend(backend: str, n: int, queries: list[str], corpus: rd.Corpus, root: Path) -> dict:
    server = None
    if backend == "sqlite":
        url = f"sqlite:///{root / 'scopes.db'}"
    else:
        base, server = pg_url(root)
        url = base.split("?", 1)[0].rsplit("/", 1)[0] + f"/mp_bench_scopes_{os.getpid()}"
        if "?" in base:
            url += "?" + base.split("?", 1)[1]
    try:
        palace = make_palace(root / backend, url)
        ids = load(palace, corpus)
        base_times, scoped_times, base_fill, scoped_fill = [], [], [], []
        for _ in range(ROUNDS):  # alternate, so drift in machine load hits both passes alike
            times, fill = measure(palace, queries)
            base_times += times
            base_fill.append(fill)
            set_visibility(palace, ids, "private")
            times, fill = measure(palace, queries)
            scoped_times += times
            scoped_fill.append(fill)
            set_visibility(palace, ids, "shared")
        palace.close()
    finally:
        dispose_engines()
        if server is not None:
            server.cleanup()
    return {
        "backend": backend,
        "n": n,
        "baseline": (pct(base_times, 50), pct(base_times, 95), min(base_fill)),
        "scoped": (pct(scoped_times, 50), pct(scoped_times, 95), min(scoped_fill)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="memories per backend (10000)")
    ap.add_argument("--queries", type=int, default=200, help="recall queries per pass (200)")
    ap.add_argument("--backends", default="sqlite,postgres", help="sqlite,postgres")
    args = ap.parse_args(argv)
    corpus = rd.make_corpus(args.n)
    queries = [q.text for q in rd.make_queries(corpus, args.queries, seed=3)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mp-bench-scopes-") as tmp:
        for backend in args.backends.split(","):
            rows.append(run_backend(backend, args.n, queries, corpus, Path(tmp)))
    print(f"\nmemory_recall as i0, limit {LIMIT}, {args.queries} queries, hash embedder")
    print("| backend | n | pass | p50 ms | p95 ms | filled | p95 ratio | target |")
    print("|---|---|---|---|---|---|---|---|")
    failed = False
    for r in rows:
        b50, b95, bfill = r["baseline"]
        s50, s95, sfill = r["scoped"]
        ratio = s95 / b95
        ok = ratio <= TARGET and sfill == 1.0
        failed |= not ok
        print(
            f"| {r['backend']} | {r['n']} | all shared | {b50:.1f} | {b95:.1f} | {bfill:.0%} "
            "| 1.00 | |"
        )
        print(
            f"| {r['backend']} | {r['n']} | half private | {s50:.1f} | {s95:.1f} | {sfill:.0%} "
            f"| {ratio:.2f} | {'PASS' if ok else 'FAIL'} (<= {TARGET:.2f}, filled 100%) |"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
