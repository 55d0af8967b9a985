"""Peak memory of a bridge under the largest requests it accepts.

A bridge (local embedder, SQLite) is started on a fresh data dir; its resident memory after the
ready line and one small memory_set is the baseline. Then ROUNDS times 8 concurrent memory_set
requests of the maximum content size (limits.max_content_bytes, 256 KiB) and 8 concurrent
recalls with maximum-size queries go in at once. The peak (VmHWM from /proc) must stay <= 1 GiB.

Usage: python bench/bench_rss.py [--rounds 3] [--embedder local|hash]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

LIMIT_MB = 1024
CONCURRENT = 8


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="bursts of 8 + 8 requests (3)")
    ap.add_argument("--embedder", default="local", choices=["local", "hash"])
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mp-bench-rss-") as tmp:
        data = Path(tmp)
        config = {"database": {"url": f"sqlite:///{data / 'm.db'}"}, "embedder": args.embedder}
        (data / "config.json").write_bytes(orjson.dumps(config))
        env = {**os.environ, "MEMORY_PALACE_DATA_DIR": str(data)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "memory_palace.bridge"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert orjson.loads(proc.stdout.readline())["ready"]

        def send(rid: str, method: str, params: dict) -> None:
            line = {"id": rid, "method": method, "params": params}
            proc.stdin.write(orjson.dumps(line) + b"\n")

        def replies(n: int) -> list[dict]:
            proc.stdin.flush()
            got = []
            while len(got) < n:
                obj = orjson.loads(proc.stdout.readline())
                if "id" in obj:
                    got.append(obj)
            return got

        send("warm", "memory_set", {"content": "a small memory to load the embedder"})
        replies(1)
        base = status_kb(proc.pid, "VmRSS")
        t0 = time.perf_counter()
        errors = 0
        for r in range(args.rounds):
            for i in range(CONCURRENT):
                word = f"r{r}w{i} "
                content = (word * (256 * 1024 // len(word)))[: 256 * 1024 - 16]
                send(f"s{r}.{i}", "memory_set", {"content": content})
                send(f"q{r}.{i}", "memory_recall", {"query": content[:4000]})
            errors += sum("error" in x for x in replies(2 * CONCURRENT))
        elapsed = time.perf_counter() - t0
        peak = status_kb(proc.pid, "VmHWM")
        proc.stdin.close()
        proc.wait(timeout=60)
    peak_mb, base_mb = peak / 1024, base / 1024
    ok = peak_mb <= LIMIT_MB and errors == 0
    print(f"\nbridge RSS, {args.embedder} embedder, {args.rounds} x ({CONCURRENT} max-size sets "
          f"+ {CONCURRENT} recalls), {elapsed:.1f} s")  # fmt: skip
    print("| measure | MiB | ratio to baseline | target |")
    print("|---|---|---|---|")
    print(f"| idle after one memory_set (baseline) | {base_mb:.0f} | 1.00 | |")
    print(
        f"| peak under the bursts (VmHWM) | {peak_mb:.0f} | {peak_mb / base_mb:.2f} "
        f"| {'PASS' if ok else 'FAIL'} (<= {LIMIT_MB} MiB, {errors} errors) |"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
