"""Bounded per-name cost (config `resources`): a database nobody used for `idle_timeout` is
released (its PostgreSQL backends closed) and comes back on the next call; more databases than
`max_open_databases` are refused with an error naming the key, and nothing open is lost; a
bridge's listener of a database named only in calls is released and replays on return, while
the default database's, a `_subscribe`d database's and the served instances' wakes keep
arriving live."""

from __future__ import annotations

import time
import uuid

import pytest
from memory_palace.db.engine import open_databases
from memory_palace.db.postgres import pg_connect
from memory_palace.errors import BackendUnavailable, ConfigError
from sqlalchemy.engine import make_url

IDLE = {"idle_timeout": 0.5}


def backends(url: str) -> int:
    """Backends connected to the database of `url` (from a connection to `postgres`)."""
    name = make_url(url).database
    conn = pg_connect(make_url(url).set(database="postgres").render_as_string(False))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def wait_until(probe, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def remember(palace, text: str, database: str) -> int:
    return palace.call(
        "memory_set",
        {"subject": text, "content": text, "instance_id": "prime", "database": database},
    )["id"]


def test_idle_database_is_released_and_comes_back(make_palace, db_url) -> None:
    palace = make_palace(db_url, resources=IDLE)
    first = remember(palace, "before the release", "team")
    team_url = palace.catalog.resolve("team")[1]
    before = palace.database("team")
    if db_url.startswith("postgresql"):
        assert backends(team_url) >= 1  # the pool keeps its connection
        wait_until(lambda: backends(team_url) == 0)  # released: every backend closed
    wait_until(lambda: open_databases() == 0)
    got = palace.call("memory_get", {"memory_ids": [first], "database": "team"})
    assert got["memories"][0]["subject"] == "before the release"
    assert palace.database("team") is not before  # a new engine, the same data
    assert open_databases() >= 1


def test_open_databases_are_capped_with_a_clear_error(make_palace, db_url) -> None:
    palace = make_palace(db_url, resources={"max_open_databases": 2})
    palace.database()
    kept = remember(palace, "in team a", "team_a")  # default + team_a: the cap
    with pytest.raises(BackendUnavailable) as err:
        remember(palace, "in team b", "team_b")
    message = err.value.message
    assert "resources.max_open_databases (2)" in message and "nothing was changed" in message
    assert err.value.data == {"limit": 2, "key": "resources.max_open_databases"}
    assert "password" not in message and "Traceback" not in message
    assert open_databases() == 2
    got = palace.call("memory_get", {"memory_ids": [kept], "database": "team_a"})
    assert got["memories"][0]["subject"] == "in team a"  # nothing open was lost


def test_the_cap_makes_room_for_idle_databases(make_palace, db_url) -> None:
    palace = make_palace(db_url, resources={"max_open_databases": 2, "idle_timeout": 0.5})
    palace.database()
    remember(palace, "in team a", "team_a")
    time.sleep(0.6)  # default and team_a idle past their timeout: released to make room
    assert remember(palace, "in team b", "team_b") > 0


def test_bad_resources_are_named(make_palace, db_url) -> None:
    with pytest.raises(ConfigError, match=r"resources\.max_open_databases"):
        make_palace(db_url, resources={"max_open_databases": 0})
    with pytest.raises(ConfigError, match="did you mean 'idle_timeout'"):
        make_palace(db_url, resources={"idle_timout": 3})


def new_message(b, msg_id: int, database: str) -> list[dict]:
    return [
        d
        for d in b.new_messages()
        if d.get("message_id") == msg_id and d.get("database") == database
    ]


@pytest.mark.postgres
def test_bridge_releases_idle_listeners_and_replays_on_return(spawn, make_palace, pg_url) -> None:
    team, kept = f"team_{uuid.uuid4().hex[:6]}", f"kept_{uuid.uuid4().hex[:6]}"
    # Long enough that, on a busy host, nothing is released between two steps that must see
    # it held (creating a database alone can take a second there).
    b = spawn(pg_url, env={"MEMORY_PALACE_INSTANCE_ID": "sandy"}, resources={"idle_timeout": 3})
    b.result("_subscribe", {"instance": "sandy", "database": kept})
    b.result("message", {"action": "get", "instance_id": "sandy", "database": team})
    b.result("message", {"action": "get", "instance_id": "bob"})  # bob: served by a call only
    health = b.result("_health")
    assert set(health["listeners"]) == {"default", team, kept}
    assert "bob" in health["served"]
    sender = make_palace(pg_url, instances=["prime", "sandy"])
    team_url = sender.catalog.resolve(team)[1]
    # Idle: the listener of `team` (named only in a call) and the instance bob are released,
    # and with them every backend of team's database; default and `kept` stay.
    health = b.wait_for(
        lambda: (
            (h := b.result("_health"))
            and set(h["listeners"]) == {"default", kept}
            and "bob" not in h["served"]
            and h
        )
    )
    assert "sandy" in health["served"]
    wait_until(lambda: backends(team_url) == 0)

    def send(to: str, database: str) -> int:
        return sender.call(
            "message",
            {
                "action": "send",
                "from_instance": "prime",
                "to_instance": to,
                "content": "hi",
                "database": database,
            },
        )["id"]

    live_default, live_kept = send("sandy", "default"), send("sandy", kept)
    b.wait_for(lambda: new_message(b, live_default, "default") and new_message(b, live_kept, kept))
    late = send("sandy", team)
    time.sleep(0.5)
    assert new_message(b, late, team) == []  # nobody listens in team now: it waits, durably
    b.result(
        "memory_set",
        {"subject": "back", "content": "back", "instance_id": "sandy", "database": team},
    )
    b.wait_for(lambda: new_message(b, late, team))  # replayed when the listener came back
    again = send("sandy", team)  # and listened to live again
    b.wait_for(lambda: new_message(b, again, team))
    time.sleep(0.3)
    for msg_id, database in ((live_default, "default"), (live_kept, kept), (late, team)):
        assert len(new_message(b, msg_id, database)) == 1  # exactly once
