"""Concurrent access: threads counting accesses on both backends, and several processes sharing
one SQLite file (no 'database is locked', no stale vector cache)."""

from __future__ import annotations

import multiprocessing as mp
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from memory_palace import Palace, load_settings
from memory_palace.db.filters import Filters
from memory_palace.embeddings import HashingEmbedder
from memory_palace.services import vectors

THREADS = 12
WRITES = 30


def run_together(n: int, fn: Callable[[], Any]) -> list[Any]:
    """Run fn in n threads released at the same moment; re-raise the first error."""
    barrier = threading.Barrier(n)

    def task() -> Any:
        barrier.wait(timeout=30)
        return fn()

    with ThreadPoolExecutor(n) as pool:
        return [f.result() for f in [pool.submit(task) for _ in range(n)]]


def access_count(palace: Palace, mid: int) -> int:
    return palace.call(
        "memory_get", {"memory_ids": mid, "include_graph": False, "detail_level": "verbose"}
    )["memory"]["access_count"]


def test_concurrent_recalls_count_nothing_and_gets_are_all_counted(palace: Palace) -> None:
    target = palace.call("memory_set", {"content": "the canary deploy goes out at 9am"})["id"]
    palace.call("memory_set", {"content": "unrelated shopping list"})
    before = access_count(palace, target)  # this get counts one
    results = run_together(
        THREADS,
        lambda: palace.call(
            "memory_recall", {"query": "canary deploy 9am", "limit": 1, "include_graph": False}
        ),
    )
    assert all(r["memories"][0]["id"] == target for r in results)
    after_recall = access_count(palace, target)
    assert after_recall == before + 1  # the check's own get; recalls are not deliberate reads
    run_together(THREADS, lambda: palace.call("memory_get", {"memory_ids": [target]}))
    assert access_count(palace, target) == after_recall + 1 + THREADS


def _palace(data_dir: str) -> Palace:
    return Palace(load_settings(Path(data_dir), env={}), embedder=HashingEmbedder(384))


def _writer(data_dir: str, name: str, reading: Any, out: Any) -> None:
    try:
        palace = _palace(data_dir)
        if not reading.wait(120):  # write only while the reader is reading
            raise RuntimeError("the reader never made its first recall")
        ids = []
        for i in range(WRITES):
            r = palace.call(
                "memory_set",
                {"content": f"widget note {i} from writer {name}", "project": "shared"},
            )
            ids.append(r["id"])
            if i % 10 == 9:  # archives change the vector index too
                palace.call("memory_archive", {"memory_ids": [ids[-5]], "dry_run": False})
        final = palace.call(
            "memory_set", {"content": f"sentinel zebra{name} written last", "project": "shared"}
        )["id"]
        out.put(("writer", name, final, None))
    except Exception:
        out.put(("writer", name, None, traceback.format_exc()))


def _recaller(data_dir: str, reading: Any, done: Any, out: Any) -> None:
    try:
        palace = _palace(data_dir)
        db = palace.database()
        calls = 0
        first: list[int] = []
        while not done.is_set() or calls < 3:
            hits = palace.call(
                "memory_recall",
                {
                    "query": "widget note from writer",
                    "limit": 5,
                    "project": "shared",
                    "include_graph": False,
                },
            )["memories"]
            if not calls:
                first = [m["id"] for m in hits]
                reading.set()
            calls += 1
        found = {}
        for name in ("A", "B"):
            query = f"sentinel zebra{name} written last"
            hits = palace.call(
                "memory_recall", {"query": query, "limit": 2, "include_graph": False}
            )["memories"]
            vec = vectors.search(
                db, palace.embedder, palace.embedder.embed_query(query), 1, Filters.make()
            )
            exact = [(m["id"], m["found_by"]) for m in hits if m["similarity_score"] > 0.999]
            found[name] = (exact, vec[0][0])
        active = palace.call("memory_stats", {})["active_memories"]
        out.put(("recaller", calls, {"first": first, "found": found, "active": active}, None))
    except Exception:
        out.put(("recaller", None, None, traceback.format_exc()))


def test_two_writer_processes_and_a_reader_share_sqlite(
    make_palace: Callable[..., Palace], sqlite_url: str
) -> None:
    parent = make_palace(sqlite_url)
    seed = parent.call("memory_set", {"content": "widget note seed", "project": "shared"})["id"]
    # the parent's cache is built now; it must see the children's writes later
    assert parent.call("memory_recall", {"query": "widget"})["memories"][0]["id"] == seed
    data_dir = str(parent.settings.data_dir)
    assert orjson.loads(Path(data_dir, "config.json").read_bytes())["database"]["url"] == sqlite_url
    ctx = mp.get_context("spawn")
    out, reading, done = ctx.Queue(), ctx.Event(), ctx.Event()
    reader = ctx.Process(target=_recaller, args=(data_dir, reading, done, out))
    reader.start()
    writers = [ctx.Process(target=_writer, args=(data_dir, n, reading, out)) for n in ("A", "B")]
    for w in writers:
        w.start()
    reports = [out.get(timeout=120) for _ in writers]
    done.set()
    reports.append(out.get(timeout=120))
    for p in [*writers, reader]:
        p.join(timeout=30)
        assert p.exitcode == 0
    errors = [r[3] for r in reports if r[3]]
    assert not errors, "\n".join(errors)
    finals = {r[1]: r[2] for r in reports if r[0] == "writer"}
    info = next(r[2] for r in reports if r[0] == "recaller")
    # the reader's first recall came before any write, so the rest of its loop overlapped them
    assert info["first"] == [seed]
    for name in ("A", "B"):  # found by the reader's vector index, not only by keywords
        assert info["found"][name] == ([(finals[name], "both")], finals[name])
    # 1 seed + 2 x (WRITES + sentinel) written, 2 x 3 archived
    assert info["active"] == 1 + 2 * (WRITES + 1) - 6
    q = parent.embedder.embed_query("sentinel zebraB written last")
    assert vectors.search(parent.database(), parent.embedder, q, 1, Filters.make()) == [
        (finals["B"], pytest.approx(1.0, abs=1e-5))
    ]
    listed = parent.call(
        "memory_recall", {"query": "widget note from writer", "project": "shared", "limit": 100}
    )
    contents = {m["content"] for m in listed["memories"]}
    assert len(contents) == info["active"]
    assert not contents & {f"widget note {i} from writer {n}" for i in (5, 15, 25) for n in "AB"}
