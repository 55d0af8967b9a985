"""Many agents on one PostgreSQL, two shapes.

gateways (default): N bridge processes (`memory-palace-bridge`, one per gateway), each serving M
agents announced with `_subscribe`, every call carrying its agent as `caller`. First `--idle`
seconds with no load: the machine's busy CPU then is what the gateways cost doing nothing (the
baseline's: its LISTEN connections). Then an open (Poisson) load for `--seconds`: sends between
random agents of all bridges at `--msg-rate` per second, and recalls of a shared hot set plus
writes at `--other-rate`. Reported: messages and calls per second, wake p50/p99 (the message
row's created_at, set in the send's transaction, to the moment the recipient's bridge's
`new_message` line is read), send/recall/write latency, errors by kind, lost and duplicate wakes
(each message must wake its recipient exactly once), peak backends on the database
(pg_stat_activity) and peak RSS per bridge. Then `--saturate` seconds of sends only, as fast as
the bridges take them. The baseline, in the same run: plain psycopg2 INSERT + pg_notify in one
transaction from N connections at the same rate, N connections LISTENing on the agents'
channels, then saturated; the ratios are its messages/s over ours and our CPU per message (the
whole machine's busy CPU time during a saturated phase, per message: bridges, PostgreSQL and the
driver) over its.

agents (`--mode agents`): throughput and p95 of a mixed load at 1, 4 and 16 concurrent agent
processes, each its own Palace, directly and through PgBouncer in transaction mode. Each agent
loops: memory_set (auto-linked to a shared hot set), memory_recall of the hot set, memory_get of
4 hot ids in a random order (each counts an access), a message to another agent, and reading +
marking read its own messages. After the run every memory and message an agent was told was
stored must exist, and every hot memory's access_count must equal its memory_get calls.

Usage: python bench/bench_scale.py [--bridges 4 --agents 10 --seconds 20 --msg-rate 40]
       python bench/bench_scale.py --bridges 20 --agents 50 --seconds 60 --msg-rate 200
       python bench/bench_scale.py --mode agents [--agents 1,4,16] [--no-pgbouncer]
Uses MEMORY_PALACE_TEST_PG_URL (a superuser URL), or starts a throwaway pgserver in a temp dir.
PgBouncer is the Debian `pgbouncer` binary (skipped with a note when it is not installed).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import select
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import psycopg2
from psycopg2 import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pg_common import connect, pg_server, url_for

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


# -- gateways: N bridges x M agents each ---------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Recorder:
    """What every bridge's reader saw: replies (latency, error kind) and wakes (when, where)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lat: dict[str, list[float]] = {"send": [], "recall": [], "write": []}
        self.errors: Counter[str] = Counter()
        self.samples: dict[str, str] = {}
        self.sent: dict[int, tuple[float, float, str]] = {}  # id -> (reply, request, to)
        self.wakes: dict[tuple[int, str], list[float]] = {}  # (id, recipient) -> time.time()s
        self.created: dict[int, float] = {}  # id -> its row's created_at (epoch), read after

    def error(self, kind: str, sample: str) -> None:
        with self.lock:
            self.errors[kind] += 1
            self.samples.setdefault(kind, sample[:300])


class BridgeProc:
    """One `memory-palace-bridge` subprocess: requests written with a `caller` (the gateway's
    agent), every stdout line read on its own thread and timed at once."""

    def __init__(self, idx: int, data_dir: Path, rec: Recorder) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_PALACE_")}
        env.update(MEMORY_PALACE_DATA_DIR=str(data_dir), MEMORY_PALACE_LOG_LEVEL="WARNING")
        self.idx, self.rec = idx, rec
        self.stderr = open(data_dir / "bridge.stderr", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "memory_palace.bridge"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
        )
        self.ready = threading.Event()
        self.pending: dict[int, tuple[str, float, Any]] = {}
        self.waiters: dict[int, threading.Event] = {}
        self.replies: dict[int, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.next_id = 0
        self.rss_peak = 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            now, wall = time.monotonic(), time.time()
            rec = self.rec  # the saturation phase swaps it
            obj = orjson.loads(raw)
            if "ready" in obj:
                self.ready.set()
                continue
            if "event" in obj:
                if obj["event"] == "new_message":
                    data = obj["data"]
                    with rec.lock:
                        for who in data.get("recipients") or ():
                            rec.wakes.setdefault((int(data["message_id"]), who), []).append(wall)
                continue
            rid = obj.get("id")
            with self.lock:
                op, t0, to = self.pending.pop(rid, ("?", now, None))
                waiter = self.waiters.pop(rid, None)
                if waiter is not None:
                    self.replies[rid] = obj
            if "error" in obj:
                err = obj["error"]
                rec.error(err.get("code", "?"), f"{op}: {err.get('message', '')}")
            elif op in rec.lat:
                with rec.lock:
                    rec.lat[op].append((now - t0) * 1000)
                    if op == "send":
                        rec.sent[int(obj["result"]["id"])] = (now, t0, to)
            if waiter is not None:
                waiter.set()

    def submit(
        self,
        method: str,
        params: dict[str, Any],
        caller: str | None = None,
        op: str = "",
        to: str | None = None,
        wait: bool = False,
    ) -> dict[str, Any] | None:
        with self.lock:
            self.next_id += 1
            rid = self.next_id
            self.pending[rid] = (op, time.monotonic(), to)
            waiter = threading.Event() if wait else None
            if waiter is not None:
                self.waiters[rid] = waiter
            req: dict[str, Any] = {"id": rid, "method": method, "params": params}
            if caller:
                req["caller"] = caller
            assert self.proc.stdin is not None
            self.proc.stdin.write(orjson.dumps(req) + b"\n")
            self.proc.stdin.flush()
        if waiter is None:
            return None
        waiter.wait(120)
        with self.lock:
            return self.replies.pop(rid, None)

    def in_flight(self) -> int:
        with self.lock:
            return len(self.pending)

    def sample_rss(self) -> None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.rss_peak = max(self.rss_peak, int(line.split()[1]) // 1024)
        except OSError:
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.reader.join(5)
        self.stderr.close()


class Sampler(threading.Thread):
    """Client backends connected to the database (pg_stat_activity) and bridge RSS, every
    0.25 s."""

    def __init__(self, url: str, dbname: str, bridges: list[Any]) -> None:
        super().__init__(daemon=True)
        self.url, self.dbname, self.bridges = url, dbname, bridges
        self.peak = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        conn = connect(self.url)
        try:
            with conn.cursor() as cur:
                while not self.stop_event.wait(0.25):
                    cur.execute(  # clients only: autovacuum workers show up here too
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                        "AND backend_type = 'client backend' AND application_name <> 'bench'",
                        (self.dbname,),
                    )
                    self.peak = max(self.peak, int(cur.fetchone()[0]))
                    for b in self.bridges:
                        b.sample_rss()
        finally:
            conn.close()


def _pace(rate: float, seconds: float, step: Any, rng: random.Random) -> int:
    """Call step() at `rate` per second (Poisson arrivals) for `seconds`; returns calls made."""
    t = time.monotonic()
    end = t + seconds
    made = 0
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return made
        delay = t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if step():
            made += 1


def run_gateways(
    url: str,
    bridges: int,
    agents: int,
    seconds: float,
    msg_rate: float,
    other_rate: float,
    pool: dict[str, Any],
    saturate: float = 0.0,
    depth: int = 8,
    idle: float = 0.0,
) -> dict[str, Any]:
    """`bridges` bridge processes, each serving `agents` agents (announced with _subscribe):
    first `idle` seconds with no load (the machine's busy CPU then is what the gateways cost
    doing nothing), then a mixed open-loop load: random sends between all agents at
    `msg_rate`/s, recalls of a shared hot set and writes at `other_rate`/s together; then,
    with `saturate` > 0, sends only as fast as they go (each bridge `depth` deep) for that
    long."""
    dbname = f"mp_gw_{uuid.uuid4().hex[:10]}"
    db_url = url_for(url, dbname)
    root = Path(tempfile.mkdtemp(prefix="mp-gw-"))
    names = [[f"g{b:02d}a{a:02d}" for a in range(agents)] for b in range(bridges)]
    everyone = [n for group in names for n in group]
    rec = Recorder()
    procs: list[BridgeProc] = []
    for b in range(bridges):
        data_dir = root / f"bridge{b:02d}"
        write_config(data_dir, db_url, instances=["default"], postgres=pool)
        procs.append(BridgeProc(b, data_dir, rec))
        if b == 0:  # the first creates the database and schema; the rest start together
            assert procs[0].ready.wait(120), "bridge 0 did not start"
    for p in procs:
        assert p.ready.wait(120), f"bridge {p.idx} did not start"
    for p, group in zip(procs, names, strict=True):
        for name in group:
            r = p.submit("_subscribe", {"instance": name}, wait=True)
            assert r and "result" in r, r
    hot = []
    for i, topic in enumerate(TOPICS * 4):  # the shared hot set every agent recalls
        r = procs[0].submit(
            "memory_set", {"content": f"{topic}: decision {i}"}, caller=names[0][0], wait=True
        )
        assert r and "result" in r, r
        hot.append(topic)
    idle_cpu = idle_share(idle)
    sampler = Sampler(url, dbname, procs)
    sampler.start()
    shed = Counter()

    def driver(b: int, rate: float, kind: str) -> None:
        rng = random.Random(f"{b}{kind}")
        p = procs[b]
        limit = depth * 4

        def step() -> bool:
            if p.in_flight() >= limit:
                shed[kind] += 1
                return False
            me = rng.choice(names[b])
            if kind == "send":
                to = rng.choice(everyone)
                p.submit(
                    "message",
                    {"action": "send", "to_instance": to, "content": f"hi {to}"},
                    caller=me,
                    op="send",
                    to=to,
                )
            elif rng.random() < 0.5:
                p.submit(
                    "memory_recall",
                    {"query": rng.choice(hot), "limit": 5, "include_graph": False},
                    caller=me,
                    op="recall",
                )
            else:
                p.submit(
                    "memory_set", {"content": f"{me} wrote {rng.random()}"}, caller=me, op="write"
                )
            return True

        _pace(rate, seconds, step, rng)

    threads = []
    for b in range(bridges):
        threads.append(threading.Thread(target=driver, args=(b, msg_rate / bridges, "send")))
        if other_rate > 0:
            threads.append(threading.Thread(target=driver, args=(b, other_rate / bridges, "other")))
    report = _run_and_report(threads, procs, rec, url, dbname)
    elapsed = report["elapsed"]
    report.update(
        bridges=bridges,
        agents=agents,
        seconds=elapsed,
        msg_rate=msg_rate,
        other_rate=other_rate,
        shed=dict(shed),
        peak_backends=sampler.peak,
        rss_mb={
            "max": max(p.rss_peak for p in procs),
            "mean": round(sum(p.rss_peak for p in procs) / len(procs)),
        },
        lat={
            op: {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "n": len(v)} for op, v in rec.lat.items()
        },
        errors=dict(rec.errors),
        samples=dict(rec.samples),
        idle_cpu=idle_cpu,
    )
    if saturate > 0:
        report["saturated"] = _saturate(procs, everyone, names, saturate, depth, url, dbname)
    sampler.stop_event.set()
    sampler.join(2)
    report["peak_backends"] = sampler.peak
    for p in procs:
        p.stop()
    return report


def _drain(procs: list[BridgeProc], rec: Recorder, grace: float) -> None:
    """Wait for every reply and every wake of what was sent (or `grace` seconds)."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with rec.lock:
            woken = all((m, to) in rec.wakes for m, (_, _, to) in rec.sent.items())
        if woken and not any(p.in_flight() for p in procs):
            break
        time.sleep(0.2)
    time.sleep(1.0)  # a duplicate would come now
    for p in procs:
        with p.lock:
            lost = list(p.pending.values())
            p.pending.clear()
        for op, _, _ in lost:
            rec.error("no_reply", f"{op}: no reply within {grace:g} s of the end")


def _created(url: str, dbname: str, rec: Recorder) -> None:
    """Each sent message's created_at (set in its transaction, just before the commit)."""
    conn = connect(url, dbname)
    with conn.cursor() as cur:  # not counted among the bridges' backends
        cur.execute("SET application_name = 'bench'")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT id, extract(epoch FROM created_at) FROM messages WHERE id = ANY(%s)",
                (list(rec.sent),),
            )
            rec.created.update({int(i): float(t) for i, t in cur.fetchall()})
    finally:
        conn.close()


def _wake_report(rec: Recorder, elapsed: float) -> dict[str, Any]:
    """Wake latency: the message row's created_at (in the send's transaction) to the moment
    the recipient's bridge's `new_message` line was read; lost = never woken, dup = more."""
    with rec.lock:
        wake, lost, dup = [], 0, 0
        for m, (_, _, to) in rec.sent.items():
            seen = rec.wakes.get((m, to), [])
            if not seen:
                lost += 1
                continue
            dup += len(seen) - 1
            if m in rec.created:
                wake.append((seen[0] - rec.created[m]) * 1000)
        sent = len(rec.sent)
    return {
        "sent": sent,
        "msgs_per_s": sent / elapsed,
        "calls_per_s": sum(len(v) for v in rec.lat.values()) / elapsed,
        "wake_ms": {"p50": pct(wake, 0.5), "p99": pct(wake, 0.99), "max": max(wake, default=0)},
        "lost_wakes": lost,
        "duplicate_wakes": dup,
    }


def _saturate(
    procs: list[BridgeProc],
    everyone: list[str],
    names: list[list[str]],
    seconds: float,
    depth: int,
    url: str,
    dbname: str,
) -> dict[str, Any]:
    """Sends only, each bridge kept `depth` requests deep: messages/s the bridges sustain."""
    rec = Recorder()
    for p in procs:
        p.rec = rec
    stop = time.monotonic() + seconds

    def driver(p: BridgeProc, group: list[str]) -> None:
        rng = random.Random(p.idx)
        while time.monotonic() < stop:
            if p.in_flight() >= depth:
                time.sleep(0.001)
                continue
            to = rng.choice(everyone)
            p.submit(
                "message",
                {"action": "send", "to_instance": to, "content": "x"},
                caller=rng.choice(group),
                op="send",
                to=to,
            )

    threads = [
        threading.Thread(target=driver, args=(p, g)) for p, g in zip(procs, names, strict=True)
    ]
    out = _run_and_report(threads, procs, rec, url, dbname)
    out["errors"] = dict(rec.errors)
    return out


def _run_and_report(
    threads: list[threading.Thread], procs: list[BridgeProc], rec: Recorder, url: str, dbname: str
) -> dict[str, Any]:
    """Run the drivers to the end, wait for the last wakes, and report them (with `elapsed`)."""
    t0, cpu0 = time.monotonic(), busy_cpu_s()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    _drain(procs, rec, 20)
    cpu = busy_cpu_s() - cpu0  # the wakes of the last sends included
    _created(url, dbname, rec)
    report = _wake_report(rec, elapsed)
    report["elapsed"] = elapsed
    report["cpu_ms_per_msg"] = cpu * 1000 / max(len(rec.sent), 1)
    return report


def idle_share(seconds: float) -> float | None:
    """The machine's busy CPU over `seconds` with no load, in cores (None: not measured)."""
    if seconds <= 0:
        return None
    time.sleep(min(seconds, 5.0))  # what starting up left running settles first
    t0, cpu0 = time.monotonic(), busy_cpu_s()
    time.sleep(seconds)
    return (busy_cpu_s() - cpu0) / (time.monotonic() - t0)


def busy_cpu_s() -> float:
    """CPU seconds the whole machine spent busy (not idle or waiting on I/O) since boot: every
    process of a phase counts (bridges, PostgreSQL backends and its writers, this driver),
    which is the cost per message when nothing else runs."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


# -- the baseline: plain psycopg2 INSERT + pg_notify -------------------------------------------


def run_baseline(
    url: str,
    bridges: int,
    agents: int,
    seconds: float,
    msg_rate: float,
    saturate: float,
    depth: int,
    idle: float = 0.0,
) -> dict[str, Any]:
    """The same message load with no Memory Palace: `bridges` sender connections INSERT a row
    and pg_notify its recipient's channel in one transaction, `bridges` listener connections
    LISTEN on their agents' channels and time each notification."""
    dbname = f"mp_base_{uuid.uuid4().hex[:10]}"
    admin = connect(url)
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    admin.close()
    setup = connect(url, dbname)
    with setup.cursor() as cur:
        cur.execute(
            "CREATE TABLE msgs (id bigserial PRIMARY KEY, from_i text, to_i text, body text, "
            "created_at timestamptz DEFAULT now())"
        )
    setup.close()
    names = [[f"g{b:02d}a{a:02d}" for a in range(agents)] for b in range(bridges)]
    everyone = [n for group in names for n in group]
    lock = threading.Lock()
    wakes: dict[int, list[float]] = {}
    stop = threading.Event()
    listeners = []
    for group in names:
        conn = connect(url, dbname)
        with conn.cursor() as cur:
            for name in group:
                cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(f"mp_{name}")))
        listeners.append(conn)

    def listen() -> None:
        while not stop.is_set():
            ready, _, _ = select.select(listeners, [], [], 0.1)
            now = time.time()
            for conn in ready:
                conn.poll()
                with lock:
                    for n in conn.notifies:
                        wakes.setdefault(int(n.payload), []).append(now)
                conn.notifies.clear()

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    idle_cpu = idle_share(idle)

    def phase(rate: float | None, secs: float) -> dict[str, Any]:
        sent: dict[int, float] = {}
        lat: list[float] = []
        errors: Counter[str] = Counter()

        def sender(b: int) -> None:
            conn = connect(url, dbname)
            conn.autocommit = False
            rng = random.Random(b)

            def step() -> bool:
                to = rng.choice(everyone)
                t, wall = time.monotonic(), time.time()
                try:
                    with conn.cursor() as cur:
                        cur.execute(
                            "INSERT INTO msgs (from_i, to_i, body) VALUES (%s, %s, %s) "
                            "RETURNING id",
                            (rng.choice(names[b]), to, f"hi {to}"),
                        )
                        mid = cur.fetchone()[0]
                        cur.execute("SELECT pg_notify(%s, %s)", (f"mp_{to}", str(mid)))
                    conn.commit()
                except psycopg2.Error as exc:
                    conn.rollback()
                    errors[type(exc).__name__] += 1
                    return False
                with lock:
                    sent[mid] = wall
                    lat.append((time.monotonic() - t) * 1000)
                return True

            if rate is None:
                end = time.monotonic() + secs
                while time.monotonic() < end:
                    step()
            else:
                _pace(rate / bridges, secs, step, rng)
            conn.close()

        threads = [threading.Thread(target=sender, args=(b,)) for b in range(bridges)]
        t0, cpu0 = time.monotonic(), busy_cpu_s()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        time.sleep(1.0)
        cpu = busy_cpu_s() - cpu0
        with lock:
            got = [wakes.get(m, []) for m in sent]
            ms = [max(0.0, w[0] - sent[m]) * 1000 for m, w in zip(sent, got, strict=True) if w]
        return {
            "sent": len(sent),
            "msgs_per_s": len(sent) / elapsed,
            "send_ms": {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99)},
            "wake_ms": {"p50": pct(ms, 0.5), "p99": pct(ms, 0.99)},
            "lost_wakes": sum(1 for w in got if not w),
            "duplicate_wakes": sum(len(w) - 1 for w in got if w),
            "errors": dict(errors),
            "cpu_ms_per_msg": cpu * 1000 / max(len(sent), 1),
        }

    out: dict[str, Any] = {"paced": phase(msg_rate, seconds), "idle_cpu": idle_cpu}
    if saturate > 0:
        out["saturated"] = phase(None, saturate)
    stop.set()
    reader.join(2)
    for conn in listeners:
        conn.close()
    return out


def gateway_table(r: dict[str, Any], base: dict[str, Any]) -> str:
    """The markdown rows of one gateway run and its baseline."""
    lat = r["lat"]
    lines = [
        "| | bridges x agents | seconds | msgs/s | calls/s | wake p50 ms | wake p99 ms | "
        "send p50/p99 ms | recall p50/p99 ms | write p50/p99 ms | errors | lost / dup wakes | "
        "peak backends | RSS per bridge MB (max / mean) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| Memory Palace | {r['bridges']} x {r['agents']} | {r['seconds']:.0f} | "
        f"{r['msgs_per_s']:.1f} | {r['calls_per_s']:.1f} | {r['wake_ms']['p50']:.1f} | "
        f"{r['wake_ms']['p99']:.1f} | {lat['send']['p50']:.0f} / {lat['send']['p99']:.0f} | "
        f"{lat['recall']['p50']:.0f} / {lat['recall']['p99']:.0f} | "
        f"{lat['write']['p50']:.0f} / {lat['write']['p99']:.0f} | "
        f"{sum(r['errors'].values())} | {r['lost_wakes']} / {r['duplicate_wakes']} | "
        f"{r['peak_backends']} | {r['rss_mb']['max']} / {r['rss_mb']['mean']} |",
    ]
    b = base["paced"]
    lines.append(
        f"| baseline (psycopg2 INSERT + pg_notify) | {r['bridges']} + {r['bridges']} conns | "
        f"{r['seconds']:.0f} | {b['msgs_per_s']:.1f} | - | {b['wake_ms']['p50']:.1f} | "
        f"{b['wake_ms']['p99']:.1f} | {b['send_ms']['p50']:.0f} / {b['send_ms']['p99']:.0f} | "
        f"- | - | {sum(b['errors'].values())} | {b['lost_wakes']} / {b['duplicate_wakes']} | "
        f"{2 * r['bridges']} | - |"
    )
    sat, bsat = r.get("saturated"), base.get("saturated")
    if sat and bsat:
        lines.append("")
        lines.append(
            f"Saturated sends: Memory Palace {sat['msgs_per_s']:.1f} msgs/s "
            f"(wake p50 {sat['wake_ms']['p50']:.1f} ms, errors {sum(sat['errors'].values())}, "
            f"lost {sat['lost_wakes']}, dup {sat['duplicate_wakes']}), baseline "
            f"{bsat['msgs_per_s']:.1f} msgs/s: cost per message "
            f"{bsat['msgs_per_s'] / max(sat['msgs_per_s'], 1e-9):.2f}x the baseline's."
        )
        lines.append("")
        lines.append(
            f"CPU per message (whole machine, saturated): Memory Palace "
            f"{sat['cpu_ms_per_msg']:.2f} ms, baseline {bsat['cpu_ms_per_msg']:.2f} ms: "
            f"{sat['cpu_ms_per_msg'] / max(bsat['cpu_ms_per_msg'], 1e-9):.2f}x; paced: "
            f"{r['cpu_ms_per_msg']:.2f} ms (sends + recalls + writes) vs "
            f"{base['paced']['cpu_ms_per_msg']:.2f} ms."
        )
    if r.get("idle_cpu") is not None and base.get("idle_cpu") is not None:
        lines.append("")
        lines.append(
            f"Idle (no load, whole machine busy CPU): Memory Palace {r['idle_cpu']:.3f} cores "
            f"for {r['bridges']} bridges x {r['agents']} agents, baseline "
            f"{base['idle_cpu']:.3f} cores ({r['bridges']} LISTEN connections): "
            f"{r['idle_cpu'] / max(base['idle_cpu'], 1e-9):.1f}x."
        )
    return "\n".join(lines)


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
    ap.add_argument("--mode", choices=("gateways", "agents"), default="gateways")
    ap.add_argument("--bridges", type=int, default=4, help="gateways: bridge processes")
    ap.add_argument(
        "--agents", default=None, help="gateways: agents per bridge (10); agents: list (1,4,16)"
    )
    ap.add_argument("--seconds", type=float, default=None, help="gateways 20, agents 20")
    ap.add_argument("--msg-rate", type=float, default=40.0, help="gateways: messages/s in all")
    ap.add_argument(
        "--other-rate", type=float, default=10.0, help="gateways: recalls + writes per second"
    )
    ap.add_argument("--saturate", type=float, default=5.0, help="gateways: seconds of sends only")
    ap.add_argument(
        "--idle", type=float, default=10.0, help="gateways: seconds of no load, CPU measured"
    )
    ap.add_argument("--pool-size", type=int, default=2, help="gateways: postgres.pool_size")
    ap.add_argument("--max-overflow", type=int, default=1, help="gateways: postgres.max_overflow")
    ap.add_argument("--no-pgbouncer", action="store_true", help="agents mode")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with pg_server() as url:
        if a.mode == "gateways":
            return gateways_main(url, a)
        return agents_main(url, a)


def gateways_main(url: str, a: Any) -> int:
    agents = int(a.agents or 10)
    seconds = a.seconds or 20.0
    pool = {"pool_size": a.pool_size, "max_overflow": a.max_overflow}
    depth = max(1, a.pool_size + a.max_overflow - 1)  # the bridge's workers
    print(
        f"{a.bridges} bridges x {agents} agents, {seconds:g} s, {a.msg_rate:g} msgs/s + "
        f"{a.other_rate:g} recalls/writes per s, pool {pool}, {os.cpu_count()} cores",
        flush=True,
    )
    r = run_gateways(
        url, a.bridges, agents, seconds, a.msg_rate, a.other_rate, pool, a.saturate, depth, a.idle
    )
    base = run_baseline(url, a.bridges, agents, seconds, a.msg_rate, a.saturate, depth, idle=a.idle)
    print(gateway_table(r, base))
    for code, sample in r["samples"].items():
        print(f"    {code}: {sample}")
    if r["shed"]:
        print(f"    not sent (a bridge had {4 * depth} requests in flight): {r['shed']}")
    if a.json:
        print(orjson.dumps({"run": r, "baseline": base}, option=orjson.OPT_NON_STR_KEYS).decode())
    bad = r["errors"] or r["lost_wakes"] or r["duplicate_wakes"]
    return 1 if bad else 0


def agents_main(url: str, a: Any) -> int:
    from pgbouncer import PgBouncer, pgbouncer_binary

    paths: list[tuple[str, str, dict[str, Any]]] = [("direct", url, {})]
    bouncer = None
    if not a.no_pgbouncer:
        if pgbouncer_binary() is None:
            print("pgbouncer is not installed (apt-get install pgbouncer): direct only")
        else:
            bouncer = PgBouncer(url, Path(tempfile.mkdtemp(prefix="mp-bench-bouncer-")))
            paths.append(("pgbouncer", bouncer.url, {"postgres": {"listen_url": url}}))
    counts = [int(n) for n in (a.agents or "1,4,16").split(",")]
    seconds = a.seconds or 20.0
    results = []
    try:
        print(HEADER)
        for label, path_url, config in paths:
            base = None
            for n in counts:
                r = run_load(path_url, n, seconds, **config)
                rate = r["calls"] / r["seconds"]
                base = base or rate
                print(row(label, r, None if rate == base and n == counts[0] else base))
                for code, sample in r["samples"].items():
                    print(f"    {code}: {sample}")
                results.append({"path": label, **r})
    finally:
        if bouncer is not None:
            bouncer.stop()
    if a.json:
        print(orjson.dumps(results, option=orjson.OPT_NON_STR_KEYS).decode())
    bad = any(sum(r["errors"].values()) or any(r["lost"].values()) for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
