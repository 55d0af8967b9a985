"""Many agents on one PostgreSQL: 16 agent processes write, recall, read (counting accesses of
a shared hot set in random orders) and message each other for 20 s, directly and through a real
PgBouncer in transaction mode. Zero errors of any kind (no deadlock, no pool timeout), and
nothing lost: every memory and message an agent was told was stored is there, and every access
count is exact. Each agent's pool has one connection, so a call that needed two would stall."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from memory_palace import load_settings
from memory_palace.db.engine import get_database, listen_url_for
from memory_palace.errors import ConfigError

from tests.fixtures.db import build_palace

ROOT = Path(__file__).resolve().parent.parent
AGENTS = 16
SECONDS = 20.0
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
