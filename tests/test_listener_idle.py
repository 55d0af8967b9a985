"""What an idle listener costs: a bridge serving many instances reads their channel
subscriptions in one query, not one per instance, and looks for passed acknowledgement
deadlines only when one can have passed (its own claims tell it when) or every REFRESH seconds
for deadlines set elsewhere, not twice a second. Both were most of a gateway's idle CPU
(bench/README.md, "Idle cost"). A SQLite poller reads messages only after something was
committed to the file."""

from __future__ import annotations

import threading
import time

import pytest
from memory_palace import listener as listener_mod
from memory_palace.listener import Listeners

from tests.fixtures.db import Statements

SERVED = [f"agent{i:02d}" for i in range(30)]
SWEEP = "d.next_wake_at IS NOT NULL"  # in the statement that looks for passed deadlines


@pytest.fixture
def gateway(make_palace, db_url):
    """A palace, its Listeners serving SERVED (each subscribed to a channel), the wakes they
    emitted, and the statements the default database runs."""
    palace = make_palace(db_url)
    for i, name in enumerate(SERVED):
        palace.call(
            "message", {"action": "subscribe", "instance_id": name, "channel": f"team{i % 3}"}
        )
    events: list[dict] = []
    listeners = Listeners(palace, events.append)
    for name in SERVED:
        listeners.serve(name)
    statements = Statements(palace.database().engine)
    yield palace, listeners, events, statements
    statements.close()
    listeners.stop()


def test_refresh_reads_every_served_instances_channels_in_one_query(gateway) -> None:
    _, listeners, _, statements = gateway
    listener = listeners.ensure()
    start = len(statements.seen)
    listener.refresh()
    mine = statements.since(start, threading.current_thread().name, "FROM subscriptions")
    assert len(mine) == 1, mine  # one per served instance before (30)
    assert {"team0", "team1", "team2"} <= set(listener.names())


def test_an_idle_listener_does_not_look_for_deadlines_twice_a_second(gateway) -> None:
    _, listeners, _, statements = gateway
    listener = listeners.ensure()
    time.sleep(listener_mod.ACK_SWEEP + 0.3)  # the look that serving asked for
    start = len(statements.seen)
    time.sleep(2.5 * listener_mod.ACK_SWEEP + 0.5)  # 3 looks before, now none until REFRESH
    assert statements.since(start, listener.name, SWEEP) == []
    assert listener.state == "listening" or listener.state == "polling"


def test_a_claimed_deadline_is_looked_for_when_it_passes(gateway) -> None:
    palace, listeners, events, _ = gateway
    listeners.ensure()
    time.sleep(listener_mod.ACK_SWEEP + 0.3)
    sent = palace.call(
        "message",
        {
            "action": "send",
            "from_instance": "boss",
            "to_instance": SERVED[0],
            "content": "ack within a second",
            "ack_within_s": 1,
        },
    )
    sent_at = time.monotonic()

    def rewoken() -> bool:
        return any(
            e["event"] == "new_message"
            and e["data"]["message_id"] == sent["id"]
            and e["data"].get("rewake") == 1
            for e in events
        )

    deadline = sent_at + listener_mod.REFRESH - 1  # well before the every-REFRESH look
    while not rewoken():
        assert time.monotonic() < deadline, "not re-woken when its deadline passed"
        time.sleep(0.05)
    assert time.monotonic() - sent_at >= 1.0  # not before its deadline


def test_an_idle_sqlite_poller_reads_nothing_until_something_is_committed(
    make_palace, sqlite_url
) -> None:
    palace = make_palace(sqlite_url)
    events: list[dict] = []
    listeners = Listeners(palace, events.append)
    statements = Statements(palace.database().engine)
    try:
        listener = listeners.serve("idle-agent")
        assert listener.kind == "poll"
        time.sleep(4 * listener_mod.TICK)  # its first look, then quiet
        start = len(statements.seen)
        time.sleep(10 * listener_mod.TICK)
        assert statements.since(start, listener.name, "FROM messages") == []
        # A commit from another connection (here: another thread's pooled one) is seen.
        sent = palace.call(
            "message",
            {
                "action": "send",
                "from_instance": "boss",
                "to_instance": "idle-agent",
                "content": "wake up",
            },
        )
        deadline = time.monotonic() + 5
        while not any(e["data"].get("message_id") == sent["id"] for e in events):
            assert time.monotonic() < deadline, "the poller missed a committed message"
            time.sleep(0.02)
        assert statements.since(start, listener.name, "FROM messages")
    finally:
        statements.close()
        listeners.stop()


def test_the_change_probe_says_changed_when_it_cannot_tell_and_never_creates_the_file(
    tmp_path,
) -> None:
    import sqlite3

    from memory_palace.db.sqlite import ChangeProbe

    path = tmp_path / "m.db"
    probe = ChangeProbe(path)
    assert probe.changed() is True and probe.changed() is True  # no file: look every time
    assert not path.exists()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    assert probe.changed() is True  # first look at the file
    assert probe.changed() is False
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO t VALUES (1)")
    assert probe.changed() is True
    assert probe.changed() is False
    probe.close()
