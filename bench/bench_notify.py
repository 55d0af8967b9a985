"""What a NOTIFY costs as the number of listening connections grows (issue 17's messaging ceiling).

One sender commits `--n` transactions of `SELECT pg_notify(channel, payload)` (autocommit, so one
NOTIFY per commit, as a `message` send does) while L other connections LISTEN in the same
database, each on its own channel (a bridge serving other agents: none of them is the channel
sent to). Then the same with the L listeners in another database. Reports notifies/s, the
per-notify time, and its growth per listener against L = 0 of the same run.

    PYTHONPATH=bridge python bench/bench_notify.py                 # L = 0, 10, 40, 80
    PYTHONPATH=bridge python bench/bench_notify.py --listeners 0,20 --n 1000

Uses MEMORY_PALACE_TEST_PG_URL (a superuser URL) or starts a throwaway pgserver (max_connections
100, so L stays below about 95).
"""

from __future__ import annotations

import argparse
import select
import threading
import time

from pg_common import connect, pg_server
from psycopg2 import sql

PAYLOAD = '{"from_instance":"a","to_instance":"b","message_id":1,"priority":0}'


class Listeners:
    """L connections LISTENing, each on its own channel, reading whatever arrives."""

    def __init__(self, url: str, dbname: str, count: int) -> None:
        self.conns = [connect(url, dbname) for _ in range(count)]
        for i, conn in enumerate(self.conns):
            with conn.cursor() as cur:
                cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(f"bench_listener_{i}")))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set() and self.conns:
            ready, _, _ = select.select(self.conns, [], [], 0.1)
            for conn in ready:
                conn.poll()
                conn.notifies.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self.conns:
            conn.close()


def notify_rate(url: str, dbname: str, n: int) -> float:
    conn = connect(url, dbname)
    try:
        with conn.cursor() as cur:
            for _ in range(50):  # warm up
                cur.execute("SELECT pg_notify(%s, %s)", ("bench_target", PAYLOAD))
            start = time.perf_counter()
            for _ in range(n):
                cur.execute("SELECT pg_notify(%s, %s)", ("bench_target", PAYLOAD))
            return n / (time.perf_counter() - start)
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listeners", default="0,10,40,80")
    ap.add_argument("--n", type=int, default=3000, help="notifies per measurement")
    a = ap.parse_args()
    with pg_server() as url:
        return measure(url, [int(x) for x in a.listeners.split(",")], a.n)


def measure(url: str, counts: list[int], n: int) -> int:
    admin = connect(url)
    with admin.cursor() as cur:
        for db in ("bench_notify_a", "bench_notify_b"):
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(db)))
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    print(
        f"{'listeners':>9} {'where':>10} | {'notifies/s':>10} {'ms each':>8} {'+us/listener':>12}"
    )
    base_ms = None
    try:
        for count in counts:
            for where, dbname in (("same db", "bench_notify_a"), ("other db", "bench_notify_b")):
                if count == 0 and where == "other db":
                    continue
                listeners = Listeners(url, dbname, count)
                try:
                    rate = notify_rate(url, "bench_notify_a", n)
                finally:
                    listeners.close()
                ms = 1000 / rate
                if count == 0:
                    base_ms = ms
                grow = (
                    "-" if not count or base_ms is None else f"{(ms - base_ms) * 1000 / count:.1f}"
                )
                print(f"{count:>9} {where:>10} | {rate:>10.0f} {ms:>8.3f} {grow:>12}", flush=True)
    finally:
        admin.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
