"""Many agents on one PostgreSQL: throughput and p95 of a mixed load at 1, 4 and 16 concurrent
agents (one process each), directly and through PgBouncer in transaction mode.

Each agent loops for `--seconds`: memory_set (auto-linked to a shared hot set), memory_recall of
the hot set, memory_get of 4 hot ids in a random order (each counts an access), a message to
another agent, and reading + marking read its own messages. After the run the database is
checked: every memory and message an agent was told was stored exists, and every hot memory's
access_count equals the number of memory_get calls that returned it (no lost counts).

Usage: python bench/bench_scale.py [--agents 1,4,16] [--seconds 20] [--no-pgbouncer] [--json]
Uses MEMORY_PALACE_TEST_PG_URL (a superuser URL), or starts a throwaway pgserver in a temp dir.
PgBouncer is the Debian `pgbouncer` binary (skipped with a note when it is not installed).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

TOPICS = [
    "canary deploy window",
    "postgres vacuum schedule",
    "flaky login test",
    "release checklist owner",
    "billing export format",
    "cache eviction policy",
    "oncall rotation swap",
    "feature flag cleanup",
]
OPS = ("set", "recall", "get", "send", "read")


def write_config(data_dir: Path, url: str, **config: Any) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"database": {"url": url}, "embedder": "hash", "instances": ["default"], **config}
    (data_dir / "config.json").write_bytes(orjson.dumps(cfg))


def _agent(
    data_dir: str, name: str, peers: list[str], seconds: float, start: Any, out: Any
) -> None:
    """One agent process: a mixed load until `seconds` after `start` is set; reports counts,
    latencies (ms) by operation, errors by code, and what it was told was stored."""
    report: dict[str, Any] = {
        "name": name,
        "lat": {op: [] for op in OPS},
        "errors": Counter(),
        "samples": {},
        "memories": [],
        "messages": [],
        "gets": Counter(),
    }
    try:
        from memory_palace import Palace, load_settings
        from memory_palace.embeddings import HashingEmbedder
        from memory_palace.errors import MemoryPalaceError

        settings = load_settings(Path(data_dir), env={"MEMORY_PALACE_INSTANCE_ID": name})
        palace = Palace(settings, embedder=HashingEmbedder(384))
        rng = random.Random(name)
        # The schema race: every agent migrates and writes at once, then waits for the start.
        first = palace.call(
            "memory_set", {"content": f"{name} starts work on {rng.choice(TOPICS)}"}
        )
        report["memories"].append(first["id"])
        start.wait(300)
        t_end = time.monotonic() + seconds
        hot: list[int] = []
        i = 0

        def timed(op: str, tool: str, params: dict[str, Any]) -> Any:
            t0 = time.perf_counter()
            try:
                result = palace.call(tool, params)
            except MemoryPalaceError as exc:
                report["errors"][exc.code] += 1
                report["samples"].setdefault(exc.code, exc.message[:300])
                return None
            except Exception as exc:  # a bug: counted by type, the load goes on
                kind = type(exc).__name__
                report["errors"][kind] += 1
                report["samples"].setdefault(kind, traceback.format_exc()[-600:])
                return None
            report["lat"][op].append((time.perf_counter() - t0) * 1000)
            return result

        while time.monotonic() < t_end:
            i += 1
            topic = rng.choice(TOPICS)
            r = timed("set", "memory_set", {"content": f"{name} note {i}: {topic} update"})
            if r is not None and not r.get("duplicate"):
                report["memories"].append(r["id"])
            r = timed(
                "recall", "memory_recall", {"query": topic, "limit": 8, "include_graph": True}
            )
            if r is not None:
                hot = sorted({*hot, *(m["id"] for m in r["memories"])})[-64:]
            if hot:
                ids = rng.sample(hot, min(4, len(hot)))  # a random order every time
                r = timed(
                    "get",
                    "memory_get",
                    {"memory_ids": ids, "include_graph": False, "detail_level": "summary"},
                )
                if r is not None:
                    report["gets"].update(m["id"] for m in r["memories"])
            if peers:
                to = rng.choice(peers)
                r = timed(
                    "send",
                    "message",
                    {"action": "send", "to_instance": to, "content": f"{name} {i} {topic}"},
                )
                if r is not None:
                    report["messages"].append(r["id"])
            r = timed("read", "message", {"action": "get", "limit": 5})
            if r is not None and r["messages"]:
                timed(
                    "read",
                    "message",
                    {"action": "mark_read", "message_id": r["messages"][0]["id"]},
                )
        palace.close()
    except Exception:
        report["errors"]["agent_crash"] += 1
        report["samples"]["agent_crash"] = traceback.format_exc()[-1200:]
    out.put(orjson.dumps(report, option=orjson.OPT_NON_STR_KEYS))


def run_load(url: str, agents: int, seconds: float, **config: Any) -> dict[str, Any]:
    """`agents` processes on a fresh database behind `url` for `seconds`; the merged report,
    with `lost` listing what an agent was told was stored but the database does not hold."""
    from memory_palace.db.postgres import pg_connect
    from sqlalchemy.engine import make_url

    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:  # spawned agents import this module by name
        sys.path.insert(0, here)
    dbname = f"mp_scale_{uuid.uuid4().hex[:10]}"
    db_url = make_url(url).set(database=dbname).render_as_string(hide_password=False)
    root = Path(tempfile.mkdtemp(prefix="mp-scale-"))
    names = [f"agent{i:02d}" for i in range(agents)]
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = []
    for name in names:
        data_dir = root / name
        write_config(data_dir, db_url, instances=names, **config)
        peers = [n for n in names if n != name] or [name]  # alone: messages to itself
        procs.append(
            ctx.Process(target=_agent, args=(str(data_dir), name, peers, seconds, start, out))
        )
    for p in procs:
        p.start()
    # the agents migrate and write once each, racing, before the timed start
    direct = config.get("postgres", {}).get("listen_url") or url  # never ask PgBouncer for a
    direct_url = make_url(direct).set(database=dbname).render_as_string(hide_password=False)
    _wait_ready(direct_url, dbname, agents, procs)  # database before it exists: it'd cache that
    t0 = time.monotonic()
    start.set()
    reports = [orjson.loads(out.get(timeout=seconds + 300)) for _ in procs]
    elapsed = time.monotonic() - t0
    for p in procs:
        p.join(60)
    merged: dict[str, Any] = {
        "agents": agents,
        "seconds": elapsed,
        "lat": {op: [] for op in OPS},
        "errors": Counter(),
        "samples": {},
    }
    memories: list[int] = []
    messages: list[int] = []
    gets: Counter[int] = Counter()
    for r in reports:
        for op in OPS:
            merged["lat"][op] += r["lat"][op]
        merged["errors"].update(r["errors"])
        for k, v in r["samples"].items():
            merged["samples"].setdefault(k, v)
        memories += r["memories"]
        messages += r["messages"]
        gets.update({int(k): v for k, v in r["gets"].items()})
    conn = pg_connect(direct_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM memories WHERE id = ANY(%s)", (memories,))
            have = {r[0] for r in cur.fetchall()}
            cur.execute("SELECT id FROM messages WHERE id = ANY(%s)", (messages,))
            have_msg = {r[0] for r in cur.fetchall()}
            cur.execute("SELECT id, access_count FROM memories WHERE id = ANY(%s)", (list(gets),))
            counts = dict(cur.fetchall())
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (dbname,))
    finally:
        conn.close()
    merged["stored"] = {"memories": len(memories), "messages": len(messages)}
    merged["lost"] = {
        "memories": sorted(set(memories) - have),
        "messages": sorted(set(messages) - have_msg),
        # memory_get counts an access of what it returns, exactly: a row whose count is
        # below its gets lost an increment (above is fine: the recall's own gets don't count)
        "counts": sorted(i for i, n in gets.items() if counts.get(i, 0) < n),
    }
    merged["calls"] = sum(len(v) for v in merged["lat"].values())
    return merged


def _wait_ready(db_url: str, dbname: str, agents: int, procs: list[Any]) -> None:
    """Until every agent has written its first memory (so timing starts with all running),
    or one has exited (it crashed: its report says why)."""
    from memory_palace.db.postgres import pg_connect
    from memory_palace.errors import MemoryPalaceError

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if any(not p.is_alive() for p in procs):
            return
        try:
            conn = pg_connect(db_url)
        except MemoryPalaceError:
            continue
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass('memories') IS NOT NULL")
                if not cur.fetchone()[0]:
                    continue
                cur.execute("SELECT count(DISTINCT instance_id) FROM memories")
                if cur.fetchone()[0] >= agents:
                    return
        except Exception:  # the schema is being created: not yet
            continue
        finally:
            conn.close()
    raise RuntimeError(f"agents did not start within 300 s on {dbname}")


def p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(0.95 * len(s)))]


def row(label: str, r: dict[str, Any], base: float | None) -> str:
    rate = r["calls"] / r["seconds"]
    everything = [v for vs in r["lat"].values() for v in vs]
    ratio = f"{rate / base:6.2f}x" if base else "     - "
    lost = sum(len(v) for v in r["lost"].values())
    errors = sum(r["errors"].values())
    return (
        f"{label:<10} {r['agents']:>6} | {rate:8.1f} {ratio} | {p95(everything):8.1f} "
        f"{p95(r['lat']['set']):7.1f} {p95(r['lat']['recall']):7.1f} {p95(r['lat']['get']):7.1f} "
        f"{p95(r['lat']['send']):7.1f} | {errors:6d} {lost:5d}"
    )


HEADER = (
    "path       agents |  calls/s  ratio |  p95 all     set  recall     get    send | errors  lost"
)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fixtures"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--no-pgbouncer", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from pgbouncer import PgBouncer, pgbouncer_binary

    url = os.environ.get("MEMORY_PALACE_TEST_PG_URL")
    server = None
    if not url:
        import pgserver

        server = pgserver.get_server(
            Path(tempfile.mkdtemp(prefix="mp-bench-pg-")), cleanup_mode="delete"
        )
        url = server.get_uri()
    paths: list[tuple[str, str, dict[str, Any]]] = [("direct", url, {})]
    bouncer = None
    if not a.no_pgbouncer:
        if pgbouncer_binary() is None:
            print("pgbouncer is not installed (apt-get install pgbouncer): direct only")
        else:
            bouncer = PgBouncer(url, Path(tempfile.mkdtemp(prefix="mp-bench-bouncer-")))
            paths.append(("pgbouncer", bouncer.url, {"postgres": {"listen_url": url}}))
    counts = [int(n) for n in a.agents.split(",")]
    results = []
    try:
        print(HEADER)
        for label, path_url, config in paths:
            base = None
            for n in counts:
                r = run_load(path_url, n, a.seconds, **config)
                rate = r["calls"] / r["seconds"]
                base = base or rate
                print(row(label, r, None if rate == base and n == counts[0] else base))
                for code, sample in r["samples"].items():
                    print(f"    {code}: {sample}")
                results.append({"path": label, **r})
    finally:
        if bouncer is not None:
            bouncer.stop()
        if server is not None:
            server.cleanup()
    if a.json:
        print(orjson.dumps(results, option=orjson.OPT_NON_STR_KEYS).decode())
    bad = any(sum(r["errors"].values()) or any(r["lost"].values()) for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
