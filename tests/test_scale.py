"""Many agents on one PostgreSQL: 16 agent processes write, recall, read (counting accesses of
a shared hot set in random orders) and message each other for 20 s, directly and through a real
PgBouncer in transaction mode. Zero errors of any kind (no deadlock, no pool timeout), and
nothing lost: every memory and message an agent was told was stored is there, and every access
count is exact. Each agent's pool has one connection, so a call that needed two would stall."""

from __future__ import annotations

import importlib.util
import io
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from memory_palace import doctor, load_settings
from memory_palace.db.engine import get_database, listen_url_for
from memory_palace.db.postgres import pg_connect
from memory_palace.errors import ConfigError
from sqlalchemy.engine import make_url

from tests.fixtures.db import build_palace, pg_execute

ROOT = Path(__file__).resolve().parent.parent
AGENTS = 16
SECONDS = 5.0  # long enough for every agent to contend; bench_scale runs longer
ONE_CONNECTION = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 20.0}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "bench_scale.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = mod
    spec.loader.exec_module(mod)
    return mod


def check_clean(report: dict[str, Any]) -> None:
    assert dict(report["errors"]) == {}, report["samples"]
    assert report["lost"] == {"memories": [], "messages": [], "counts": []}
    for op in ("set", "recall", "get", "send", "read"):  # every kind of call really ran
        assert len(report["lat"][op]) >= AGENTS, op
    assert report["stored"]["messages"] >= AGENTS


def test_many_agents_on_one_postgres(bench: ModuleType, pg_server_url: str) -> None:
    report = bench.run_load(pg_server_url, AGENTS, SECONDS, postgres=ONE_CONNECTION)
    check_clean(report)


def test_many_agents_through_pgbouncer(
    bench: ModuleType, pgbouncer_server: str, pg_server_url: str
) -> None:
    config = {"postgres": {**ONE_CONNECTION, "listen_url": pg_server_url}}
    report = bench.run_load(pgbouncer_server, AGENTS, SECONDS, **config)
    check_clean(report)


def test_gateways_wake_every_message_exactly_once(bench: ModuleType, pg_server_url: str) -> None:
    """bench_scale's gateway shape, small: 3 bridges x 4 agents on pools of 2 + 1 connections,
    random sends between all agents plus recalls and writes: no error, every message wakes its
    recipient's bridge exactly once, and each bridge holds at most 4 backends."""
    pool = {"pool_size": 2, "max_overflow": 1}
    report = bench.run_gateways(pg_server_url, 3, 4, 4.0, 15.0, 6.0, pool, saturate=2.0, depth=2)
    assert report["errors"] == {}, report["samples"]
    assert report["sent"] >= 20 and report["lat"]["recall"]["n"] + report["lat"]["write"]["n"] > 0
    assert (report["lost_wakes"], report["duplicate_wakes"]) == (0, 0)
    sat = report["saturated"]
    assert (sat["errors"], sat["lost_wakes"], sat["duplicate_wakes"]) == ({}, 0, 0)
    assert 0 < report["peak_backends"] <= 3 * 4


def test_hot_rows_counted_in_random_orders_never_deadlock(tmp_path: Path, pg_url: str) -> None:
    """16 threads over a pool of 2 + 3 connections each get 20 of the same 40 memories in a
    random order for 5 s: before ordered locking this deadlocked ~2 times a second."""
    palace = build_palace(tmp_path / "d", pg_url, postgres={"pool_size": 2, "max_overflow": 3})
    ids = [
        palace.call("memory_set", {"content": f"hot memory {i}", "auto_link": False})["id"]
        for i in range(40)
    ]
    got: Counter[int] = Counter()
    lock = threading.Lock()

    def work(seed: int) -> None:
        rng = random.Random(seed)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            r = palace.call(
                "memory_get", {"memory_ids": rng.sample(ids, 20), "include_graph": False}
            )
            with lock:
                got.update(m["id"] for m in r["memories"])

    with ThreadPoolExecutor(16) as pool:
        for f in [pool.submit(work, i) for i in range(16)]:
            f.result()  # re-raises any error
    conn = pg_connect(pg_url)
    with conn.cursor() as cur:
        cur.execute("SELECT id, access_count FROM memories WHERE id = ANY(%s)", (ids,))
        counts = dict(cur.fetchall())
        cur.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        deadlocks = cur.fetchone()[0]
    conn.close()
    assert deadlocks == 0
    assert sum(got.values()) >= 16 * 20
    assert counts == {i: got[i] for i in ids}  # every access counted exactly once


def test_the_pool_follows_the_config(tmp_path: Path, pg_url: str) -> None:
    palace = build_palace(
        tmp_path / "d", pg_url, postgres={"pool_size": 1, "max_overflow": 2, "pool_timeout": 5}
    )
    pool = palace.database().engine.pool
    assert (pool.size(), pool._max_overflow, pool._timeout) == (1, 2, 5)
    assert get_database(pg_url).listen_url == pg_url  # no listen_url: LISTEN on the pool's URL


def test_listen_url_names_each_database() -> None:
    bouncer = "postgresql://app:pw@bouncer:6432/memory_palace_work"
    direct = "postgresql://app:pw@db-primary:5432/postgres"
    assert (
        listen_url_for(bouncer, direct) == "postgresql://app:pw@db-primary:5432/memory_palace_work"
    )
    assert listen_url_for(bouncer, None) == bouncer
    assert listen_url_for("sqlite:///x.db", direct) == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("postgres", "wrong"),
    [
        ({"pool_size": 0}, "postgres.pool_size"),
        ({"max_overflow": -1}, "postgres.max_overflow"),
        ({"pool_timeout": 0}, "postgres.pool_timeout"),
        ({"listen_url": "sqlite:///x.db"}, "postgres.listen_url"),
        ({"pool_sise": 3}, "did you mean 'pool_size'"),
    ],
)
def test_bad_pool_config_is_named(tmp_path: Path, postgres: dict[str, Any], wrong: str) -> None:
    (tmp_path / "config.json").write_bytes(orjson.dumps({"postgres": postgres}))
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path, env={})
    assert wrong in exc.value.message


def test_a_bridge_behind_pgbouncer_listens_on_the_direct_url(
    tmp_path: Path, pgbouncer_server: str, pg_server_url: str, pg_url: str, memory_bridge: Any
) -> None:
    """The pool goes through PgBouncer (transaction mode: LISTEN there would be lost when the
    server connection goes back to its pool); LISTEN goes to postgres.listen_url."""
    through = make_url(pgbouncer_server).set(database=make_url(pg_url).database)
    config = {"postgres": {"listen_url": pg_server_url}, "instances": ["prime", "sandy"]}
    url = through.render_as_string(hide_password=False)
    sandy = build_palace(
        tmp_path / "sandy", url, env={"MEMORY_PALACE_INSTANCE_ID": "sandy"}, **config
    )
    bridge = memory_bridge(sandy)
    assert sandy.database().listen_url == pg_url
    prime = build_palace(tmp_path / "prime", url, **config)
    sent = prime.call(
        "message",
        {"action": "send", "from_instance": "prime", "to_instance": "sandy", "content": "wake"},
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        woken = [
            line
            for line in bridge.lines()
            if line.get("event") == "new_message"
            and line.get("data", {}).get("message_id") == sent["id"]
        ]
        if woken:
            break
        time.sleep(0.05)
    assert len(woken) == 1, bridge.lines()[-5:]


def test_doctor_behind_pgbouncer_checks_listen_on_the_direct_url(
    tmp_path: Path, pgbouncer_server: str, pg_server_url: str, pg_url: str
) -> None:
    through = make_url(pgbouncer_server).set(database=make_url(pg_url).database)
    palace = build_palace(
        tmp_path / "d",
        through.render_as_string(hide_password=False),
        postgres={"pool_size": 2, "max_overflow": 3, "listen_url": pg_server_url},
    )
    palace.database()  # created through listen_url, migrated through PgBouncer
    out = io.StringIO()
    doctor.run(palace.settings, out=out, expected_processes=4)
    assert "✓ LISTEN/NOTIFY round trip: notification received" in out.getvalue()
    assert "(2 + 3 + 1 LISTEN) x 1 database(s) x 4 process(es)" in out.getvalue()


def test_a_deadlock_that_still_happens_is_retried_once(tmp_path: Path, pg_url: str) -> None:
    """Other SQL can still deadlock with a tool: the tool's transaction is aborted (it waited
    first, so its backend detects the cycle), and Palace.call runs it again: the caller sees
    a normal result, and each access is counted once."""
    palace = build_palace(tmp_path / "d", pg_url)
    a, b = (
        palace.call("memory_set", {"content": f"row {n}", "auto_link": False})["id"] for n in "ab"
    )
    other = pg_connect(pg_url, autocommit=False)
    cur = other.cursor()
    cur.execute("SET deadlock_timeout = '10s'")  # this side never gives up first
    cur.execute("SELECT id FROM memories WHERE id = %s FOR UPDATE", (b,))
    with ThreadPoolExecutor(1) as pool:
        got = pool.submit(palace.call, "memory_get", {"memory_ids": [a, b], "include_graph": False})
        deadline = time.monotonic() + 10
        while not _waiting_for_a_lock(pg_url) and time.monotonic() < deadline:
            time.sleep(0.05)  # the tool has locked a and waits for b
        cur.execute("SELECT id FROM memories WHERE id = %s FOR UPDATE", (a,))  # the cycle
        other.commit()
        result = got.result(30)
    other.close()
    assert [m["access_count"] for m in result["memories"]] == [1, 1]
    conn = pg_connect(pg_url)
    with conn.cursor() as c:
        c.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        assert c.fetchone()[0] == 1
    conn.close()


def _waiting_for_a_lock(url: str) -> bool:
    rows, _ = pg_execute(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'",
    )
    return bool(rows[0][0])
