"""What idle bridges cost on SQLite (the default backend): N bridge processes serving M agents
each on one data directory, no load, CPU time of the bridge processes over a window, against a
baseline of N processes that each do the least a poller can (`PRAGMA data_version` every 100 ms
on their own connection). PostgreSQL's idle cost is `bench_scale.py --idle`.

Usage: python bench/bench_idle.py [--bridges 5] [--agents 10] [--seconds 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_concurrency import proc_cpu

BASELINE = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1])
while True:
    conn.execute("PRAGMA data_version").fetchone()
    time.sleep(0.1)
"""


def cores_used(pids: list[int], seconds: float) -> float:
    before = sum(proc_cpu(p) for p in pids)
    time.sleep(seconds)
    return (sum(proc_cpu(p) for p in pids) - before) / seconds


def start_bridges(data: Path, bridges: int, agents: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "MEMORY_PALACE_DATA_DIR": str(data), "MEMORY_PALACE_EMBEDDER": "hash"}
    procs = []
    for b in range(bridges):
        proc = subprocess.Popen(
            [sys.executable, "-m", "memory_palace.bridge"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**env, "MEMORY_PALACE_INSTANCE_ID": f"gw{b}"},
        )
        assert proc.stdin is not None and proc.stdout is not None
        ready = orjson.loads(proc.stdout.readline())
        if not ready.get("ready"):
            raise SystemExit(f"bridge {b} did not start: {ready}")
        for a in range(agents):
            line = {"id": a, "method": "_subscribe", "params": {"instance": f"gw{b}-agent{a}"}}
            proc.stdin.write(orjson.dumps(line) + b"\n")
            proc.stdin.flush()
            proc.stdout.readline()
        procs.append(proc)
    return procs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bridges", type=int, default=5)
    ap.add_argument("--agents", type=int, default=10, help="served instances per bridge")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="mp-bench-idle-"))
    bridges = start_bridges(data, args.bridges, args.agents)
    db_file = next(data.glob("*.db"))
    baseline = [
        subprocess.Popen([sys.executable, "-c", BASELINE, str(db_file)])
        for _ in range(args.bridges)
    ]
    try:
        time.sleep(3)  # start-up work done: first looks, replays
        ours = cores_used([p.pid for p in bridges], args.seconds)
        base = cores_used([p.pid for p in baseline], args.seconds)
    finally:
        for p in baseline:
            p.kill()
        for p in bridges:
            assert p.stdin is not None
            p.stdin.close()
        for p in bridges:
            p.wait(10)
    result = {
        "bridges": args.bridges,
        "agents": args.agents,
        "seconds": args.seconds,
        "bridge_cores": round(ours, 4),
        "baseline_cores": round(base, 4),
        "ratio": round(ours / base, 2) if base else None,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{args.bridges} bridges x {args.agents} agents on one SQLite file, idle {args.seconds:g} s"
    )
    print("| | cores (CPU s per s) | per process |")
    print("|---|---|---|")
    print(f"| Memory Palace bridges | {ours:.3f} | {ours / args.bridges:.4f} |")
    print(
        f"| baseline: PRAGMA data_version every 100 ms | {base:.3f} | {base / args.bridges:.4f} |"
    )
    print(f"ratio {result['ratio']}x")


if __name__ == "__main__":
    main()
