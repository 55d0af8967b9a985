"""Concurrent memory_recall in one bridge and in one MCP server on PostgreSQL: throughput and
latency of one sequential client against C requests kept in flight, on 100k memories.

What it does:
  1. Bulk-loads N memories (bench/recall_data.py texts, graph edges, HNSW + tsvector indexes) into
     a fresh PostgreSQL database with bench_recall's loader (pgserver in --workdir, or
     MEMORY_PALACE_TEST_PG_URL); a database an earlier run left in --workdir is reused.
     The hash embedder is used (recalls pay no model time) unless --embedder local.
  2. One real `memory-palace-bridge` subprocess over stdin/stdout:
       single: one client, one request at a time, for S seconds -> rate r1;
       C in flight: C requests written at once and a new one written as each reply arrives
       (replies matched by id), for S seconds -> rate rC.
  3. One real `memory-palace-mcp --http` server with the official MCP Python SDK client (one
     session, streamable HTTP, a bearer token): the same two phases; C in flight is C coroutines
     under one asyncio.gather, each calling the tool in a loop.
  Every request is memory_recall(query, limit 10) with queries cycling over a varied set.
  Per phase: calls, errors by code, replies with fewer than `limit` memories, calls/s, latency
  p50/p95/p99, the longest gap between two replies (a stall shows there), and the ratio
  rC / (r1 x cores) with cores = len(os.sched_getaffinity(0)). A stall: the longest gap is over
  5 x the single client's p99 on that surface (at least 1 s).

Usage:
  python bench/bench_concurrency.py --n 10000 --seconds 8        # quick (~2 min)
  python bench/bench_concurrency.py --workdir /tmp/cb --keep      # 100k, S = 20 s
Target (issue 17, 2 cores): 50 concurrent recalls in one bridge and in one MCP server on 100k
memories: no stall, 0 errors, throughput within 20 % of the single-client rate x cores.
Exits 0 always; the table says PASS/FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_recall as br
import recall_data as rd
from memory_palace.db.engine import dispose_engines

TARGET_RATIO = 0.8
# A stall: no reply, while requests are in flight, for longer than this many times the
# single client's p99 on the same surface (at least STALL_MIN_MS).
STALL_P99S = 5.0
STALL_MIN_MS = 1000.0
LIMIT = 10
DRAIN_S = 120.0


@dataclass
class Phase:
    surface: str
    clients: int
    seconds: float = 0.0
    lat: list[float] = field(default_factory=list)  # ms, replies inside the window
    errors: Counter = field(default_factory=Counter)
    short: int = 0
    max_gap: float = 0.0  # ms between two consecutive replies (or the start and the first)
    unanswered: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process over the phase
    replies: int = 0  # all replies, the drained ones after the window included
    wall: float = 0.0  # seconds from the first request to the last reply (drain included)

    @property
    def rate(self) -> float:
        return len(self.lat) / self.seconds if self.seconds else 0.0


def child_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_PALACE_")}
    env.update(MEMORY_PALACE_DATA_DIR=str(data_dir), MEMORY_PALACE_LOG_LEVEL="WARNING")
    return env


def exe(name: str, module: str) -> list[str]:
    path = Path(sys.executable).with_name(name)
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


def params_for(query: str) -> dict[str, Any]:
    return {"query": query, "limit": LIMIT}


# --- CPU by process ---------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of `pid` (with `children`: plus its reaped children's), 0 when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / TICK


class CpuMeter:
    """CPU seconds so far of the server under test, of PostgreSQL (the postmaster, its reaped
    children and its live backends; only for the pgserver this bench started) and of this
    process (the clients)."""

    def __init__(self, server_pid: int, pg_dir: Path | None) -> None:
        self.server_pid = server_pid
        self.postmaster = None
        pidfile = pg_dir / "postmaster.pid" if pg_dir else None
        if pidfile and pidfile.exists():
            self.postmaster = int(pidfile.read_text().split()[0])

    def _postgres(self) -> float:
        if self.postmaster is None:
            return float("nan")
        total = proc_cpu(self.postmaster, children=True)
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == self.postmaster:
                    total += proc_cpu(int(d.name))
        return total

    def snapshot(self) -> dict[str, float]:
        return {
            "server": proc_cpu(self.server_pid),
            "postgres": self._postgres(),
            "client": time.process_time(),
        }

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after[k] - before[k] for k in before}


# --- the bridge -------------------------------------------------------------------------------


class Bridge:
    """`memory-palace-bridge` on pipes; a reader thread matches replies to requests by id."""

    def __init__(self, data_dir: Path, stderr_path: Path) -> None:
        self._err = stderr_path.open("ab")
        self.proc = subprocess.Popen(
            exe("memory-palace-bridge", "memory_palace.bridge"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=child_env(data_dir),
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"the bridge exited; see {stderr_path}")
            obj = orjson.loads(line)
            if "ready" in obj:
                if obj.get("database_error") or obj.get("embedder_error"):
                    raise SystemExit(f"the bridge is not ready: {obj}")
                break
        self._lock = threading.Lock()
        self._next = 0
        self._sent: dict[int, float] = {}
        self._on_reply: Any = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def send(self, query: str) -> None:
        assert self.proc.stdin is not None
        with self._lock:
            self._next += 1
            rid = self._next
            line = orjson.dumps({"id": rid, "method": "memory_recall", "params": params_for(query)})
            self._sent[rid] = time.perf_counter()
            self.proc.stdin.write(line + b"\n")
            self.proc.stdin.flush()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.perf_counter()
            obj = orjson.loads(line)
            rid = obj.get("id")
            with self._lock:
                sent = self._sent.pop(rid, None) if isinstance(rid, int) else None
            if sent is not None and self._on_reply is not None:
                self._on_reply(now, (now - sent) * 1000, obj)

    def outstanding(self) -> int:
        with self._lock:
            return len(self._sent)

    def run(self, phase: Phase, queries: list[str], seconds: float) -> None:
        """Keep `phase.clients` requests in flight for `seconds`, then let them finish."""
        done = threading.Event()
        counter = iter(range(10**9))
        start = time.perf_counter()
        end = start + seconds
        last = [start]

        def on_reply(now: float, ms: float, obj: dict[str, Any]) -> None:
            phase.replies += 1
            if now <= end:
                phase.lat.append(ms)
                phase.max_gap = max(phase.max_gap, (now - last[0]) * 1000)
                last[0] = now
                if "error" in obj:
                    phase.errors[obj["error"].get("code", "?")] += 1
                elif obj["result"].get("count") != LIMIT:
                    phase.short += 1
                self.send(queries[next(counter) % len(queries)])
            elif self.outstanding() == 0:
                done.set()

        self._on_reply = on_reply
        for _ in range(phase.clients):
            self.send(queries[next(counter) % len(queries)])
        time.sleep(max(0.0, end - time.perf_counter()))
        if not done.wait(DRAIN_S) and self.outstanding():
            phase.unanswered = self.outstanding()
        phase.seconds = seconds
        phase.wall = time.perf_counter() - start
        self._on_reply = None

    def close(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
            self.proc.wait(30)
        finally:
            self._err.close()


def measure_bridge(
    data_dir: Path, workdir: Path, pg_dir: Path | None, queries: list[str], s: float, c: int
) -> list:
    bridge = Bridge(data_dir, workdir / "bridge.stderr")
    meter = CpuMeter(bridge.proc.pid, pg_dir)
    try:
        warm = Phase("bridge", 1)
        bridge.run(warm, queries, min(5.0, s))  # first recall loads caches; not reported
        out = []
        for clients in (1, c):
            br.log(f"bridge: {clients} in flight for {s:.0f} s (load {br.load_avg()})")
            phase = Phase("bridge", clients)
            before = meter.snapshot()
            bridge.run(phase, queries, s)
            phase.cpu = meter.delta(before, meter.snapshot())
            out.append(phase)
        return out
    finally:
        bridge.close()


# --- the MCP server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mcp_token(data_dir: Path) -> str:
    out = subprocess.run(
        [
            *exe("memory-palace", "memory_palace.cli"),
            *("token", "create", "bench", "--role", "reader", "--data-dir", str(data_dir)),
        ],
        capture_output=True,
        text=True,
        env=child_env(data_dir),
        check=True,
    )
    return out.stdout.strip()


async def mcp_phases(
    url: str, token: str, meter: CpuMeter, queries: list[str], s: float, c: int
) -> list:
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx2.Limits(max_connections=c + 10, max_keepalive_connections=c + 10)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=DRAIN_S, limits=limits) as http,
        streamable_http_client(url, http_client=http) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()

        async def run(phase: Phase, seconds: float) -> None:
            start = time.perf_counter()
            end = start + seconds
            last = [start]
            counter = iter(range(10**9))

            async def client() -> None:
                while time.perf_counter() < end:
                    q = queries[next(counter) % len(queries)]
                    t = time.perf_counter()
                    try:
                        res = await session.call_tool("memory_recall", params_for(q))
                        text = res.content[0].text
                        if res.is_error:
                            code: str | None = text.split(":", 1)[0]
                        else:
                            code = None
                            short = orjson.loads(text).get("count") != LIMIT
                    except Exception as exc:  # transport failures count as errors
                        code, short = type(exc).__name__, False
                    now = time.perf_counter()
                    phase.replies += 1
                    if now <= end:
                        phase.lat.append((now - t) * 1000)
                        phase.max_gap = max(phase.max_gap, (now - last[0]) * 1000)
                        last[0] = now
                        if code:
                            phase.errors[code] += 1
                        elif short:
                            phase.short += 1

            await asyncio.gather(*(client() for _ in range(phase.clients)))
            phase.seconds = seconds
            phase.wall = time.perf_counter() - start

        await run(Phase("mcp", 1), min(5.0, s))  # warm-up, not reported
        out = []
        for clients in (1, c):
            br.log(f"mcp: {clients} in flight for {s:.0f} s (load {br.load_avg()})")
            phase = Phase("mcp", clients)
            before = meter.snapshot()
            await run(phase, s)
            phase.cpu = meter.delta(before, meter.snapshot())
            out.append(phase)
        return out


def measure_mcp(
    data_dir: Path, workdir: Path, pg_dir: Path | None, queries: list[str], s: float, c: int
) -> list:
    token = mcp_token(data_dir)
    port = free_port()
    err = (workdir / "mcp.stderr").open("ab")
    proc = subprocess.Popen(
        [*exe("memory-palace-mcp", "memory_palace.mcp_server"), "--http", str(port)],
        env=child_env(data_dir),
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the MCP server did not start; see {err.name}") from None
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/mcp"
        meter = CpuMeter(proc.pid, pg_dir)
        return asyncio.run(mcp_phases(url, token, meter, queries, s, c))
    finally:
        proc.terminate()
        proc.wait(30)
        err.close()


# --- report -----------------------------------------------------------------------------------


def print_table(phases: list[Phase], cores: int) -> list[str]:
    print(
        "| surface | in flight | s | calls | errors | short | calls/s | p50 ms | p95 ms | p99 ms "
        "| longest gap ms | rC / (r1 x cores) | target |"
    )
    print("|---|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|---|")
    verdicts = []
    single: dict[str, float] = {}
    stall: dict[str, float] = {}
    for p in phases:
        errs = ", ".join(f"{k} {v}" for k, v in sorted(p.errors.items())) or "0"
        if p.unanswered:
            errs += f", unanswered {p.unanswered}"
        if p.clients == 1:
            single[p.surface] = p.rate
            stall[p.surface] = max(STALL_MIN_MS, STALL_P99S * br.pct(p.lat or [0.0], 99))
            ratio, target = "baseline", "-"
        else:
            r = p.rate / (single[p.surface] * cores) if single.get(p.surface) else 0.0
            ok = r >= TARGET_RATIO and not p.errors and not p.unanswered
            ok = ok and p.max_gap < stall.get(p.surface, STALL_MIN_MS)
            ratio = f"{r:.2f}"
            target = "PASS" if ok else "FAIL"
            verdicts.append(
                f"{target} {p.surface}: {p.clients} in flight {p.rate:.1f} calls/s vs single "
                f"{single.get(p.surface, 0):.1f} x {cores} cores = ratio {r:.2f} (>= "
                f"{TARGET_RATIO}), errors {sum(p.errors.values()) + p.unanswered}, longest gap "
                f"{p.max_gap:.0f} ms (< {stall.get(p.surface, STALL_MIN_MS):.0f}: "
                f"{STALL_P99S:g} x the single client's p99, at least {STALL_MIN_MS:.0f})"
            )
        lat = p.lat or [0.0]
        print(
            f"| {p.surface} | {p.clients} | {p.seconds:.0f} | {len(p.lat)} | {errs} | {p.short} "
            f"| {p.rate:.1f} | {br.pct(lat, 50):.1f} | {br.pct(lat, 95):.1f} "
            f"| {br.pct(lat, 99):.1f} | {p.max_gap:.0f} | {ratio} | {target} |"
        )
    return verdicts


def print_cpu(phases: list[Phase]) -> None:
    print(
        "CPU per call (ms) and cores busy (CPU s / wall s) by process: the server under test "
        "(bridge or MCP server), PostgreSQL (all its processes), this bench (the clients); over "
        "the whole phase, the drain of the last in-flight requests included\n"
    )
    print(
        "| surface | in flight | server ms/call | postgres ms/call | client ms/call | server cores "
        "| postgres cores | client cores | all cores |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for p in phases:
        n = max(1, p.replies)
        cells = [
            f"{p.cpu.get(k, float('nan')) * 1000 / n:.1f}" for k in ("server", "postgres", "client")
        ]
        busy = [
            p.cpu.get(k, float("nan")) / max(p.wall, 1e-9) for k in ("server", "postgres", "client")
        ]
        total = sum(busy)
        print(
            f"| {p.surface} | {p.clients} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(f"{b:.2f}" for b in busy)
            + f" | {total:.2f} |"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="memories (100000)")
    ap.add_argument("--seconds", type=float, default=20.0, help="S per phase (20)")
    ap.add_argument("--concurrency", type=int, default=50, help="C requests in flight (50)")
    ap.add_argument("--queries", type=int, default=300, help="distinct queries cycled (300)")
    ap.add_argument("--embedder", choices=["hash", "local"], default="hash")
    ap.add_argument("--surfaces", default="bridge,mcp")
    ap.add_argument("--pool-size", type=int, default=None, help="postgres.pool_size (default 5)")
    ap.add_argument(
        "--max-overflow", type=int, default=None, help="postgres.max_overflow (default 10)"
    )
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    ap.add_argument("--keep", action="store_true", help="keep --workdir (database) afterwards")
    ap.add_argument(
        "--cache-dir", type=Path, default=Path.home() / ".cache" / "memory-palace-bench"
    )
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mp-bench-conc-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    loads_before = br.load_avg()
    started = time.perf_counter()
    br.log(f"workdir {workdir}; {cores} cores; load average {loads_before}")
    if args.embedder == "hash":
        from memory_palace.embeddings.hashing import HashingEmbedder

        embedder: Any = HashingEmbedder()
    else:
        from memory_palace.embeddings.local import LocalEmbedder

        embedder = LocalEmbedder()
    corpus = rd.make_corpus(args.n, br.SEED)
    queries = [q.text for q in rd.make_queries(corpus, args.queries, seed=br.SEED + 1)]
    notes: list[str] = []
    server_url, server = br.pg_server(workdir)
    pg_dir = workdir / "pg" if server is not None else None
    phases: list[Phase] = []
    try:
        setup, _ = br.prepare(
            "postgres",
            args.n,
            workdir,
            corpus,
            "words",
            args.cache_dir,
            server_url,
            embedder,
            notes,
        )
        dispose_engines()
        config = setup.data_dir / "config.json"
        cfg: dict[str, Any] = {"database": {"url": setup.url}, "embedder": args.embedder}
        pool = {"pool_size": args.pool_size, "max_overflow": args.max_overflow}
        if any(v is not None for v in pool.values()):
            cfg["postgres"] = {k: v for k, v in pool.items() if v is not None}
        config.write_bytes(orjson.dumps(cfg))
        surfaces = [x.strip() for x in args.surfaces.split(",") if x.strip()]
        if "bridge" in surfaces:
            phases += measure_bridge(
                setup.data_dir, workdir, pg_dir, queries, args.seconds, args.concurrency
            )
        if "mcp" in surfaces:
            phases += measure_mcp(
                setup.data_dir, workdir, pg_dir, queries, args.seconds, args.concurrency
            )
    finally:
        dispose_engines()
        if server is not None:
            server.cleanup()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n## memory_recall (limit {LIMIT}, {len(queries)} queries cycled), PostgreSQL "
        f"{args.n} memories, embedder {args.embedder}, {cores} cores, pool "
        + ("default" if args.pool_size is None else str(args.pool_size))
        + " + overflow "
        + ("default" if args.max_overflow is None else str(args.max_overflow))
        + "\n"
    )
    verdicts = print_table(phases, cores)
    print()
    print_cpu(phases)
    print()
    for note in notes:
        print(note)
    print(f"load average (1/5/15 min) before {loads_before}, after {br.load_avg()}")
    for line in verdicts:
        print(line)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
