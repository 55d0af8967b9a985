"""Push over PostgreSQL LISTEN/NOTIFY through a real bridge subprocess: direct, broadcast, channel,
auto-subscription, named databases, hostile names, exactly-once delivery across backend kills."""

from __future__ import annotations

import threading
import time
import uuid

import orjson
import pytest
from memory_palace.db.postgres import LISTENER_APP, pg_connect
from memory_palace.services import names

pytestmark = pytest.mark.postgres

HOSTILE_SUBJECT = 'it\'s "q" :word $1 %s ✓ 日本語 🚀'
HOSTILE_CHANNEL = 'O\'Brien "x" :w $1 ✓'


def send(palace, **params):
    return palace.call("message", {"action": "send", "from_instance": "prime", **params})


def has_id(msg_id: int, database: str = "default"):
    return lambda e: (
        e.get("event") == "new_message"
        and e["data"].get("message_id") == msg_id
        and e["data"].get("database") == database
    )


def listened(b, database: str = "default") -> set[str]:
    """Instance and channel names the bridge's listener of a database listens for."""
    return set(b.result("_health")["listeners"][database]["names"])


def channels(b, database: str = "default") -> list[str]:
    """The channels the server says the bridge's LISTEN connection listens to."""
    return b.result("_health")["listeners"][database]["channels"]


def listener_pids(url: str) -> list[int]:
    """A LISTEN connection's last statement reads its channels back (its keepalive, a plain
    SELECT 1 after 30 s idle, would also match a pool's pre-ping, so it is not looked for)."""
    conn = pg_connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND application_name = %s",
                (LISTENER_APP,),
            )
            return [r[0] for r in cur.fetchall()]
    finally:
        conn.close()


def terminate(url: str, pids: list[int]) -> None:
    conn = pg_connect(url)
    try:
        with conn.cursor() as cur:
            for pid in pids:
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        conn.close()


def test_direct_broadcast_and_channel_push(spawn, make_palace, pg_url) -> None:
    sender = make_palace(pg_url, instances=["prime", "sandy"])
    sender.call("message", {"action": "subscribe", "instance_id": "sandy", "channel": "ops"})
    b = spawn(pg_url, env={"MEMORY_PALACE_INSTANCE_ID": "sandy"})
    assert b.ready["listener"] == {"kind": "listen", "state": "listening"}
    health = b.result("_health")
    assert health["served"] == ["sandy"]
    # the served instance, broadcasts and the channel it subscribed to; never config instances
    assert listened(b) == {"sandy", "all", "ops"}
    direct = send(
        sender,
        to_instance="sandy",
        subject="review",
        content="c",
        priority=4,
        message_type="handoff",
    )
    event = b.event(has_id(direct["id"]))["data"]
    assert event == {
        "from_instance": "prime",
        "to_instance": "sandy",
        "message_type": "handoff",
        "subject": "review",
        "message_id": direct["id"],
        "priority": 4,
        "channel": None,
        "database": "default",
        "recipients": ["sandy"],
    }
    broadcast = send(sender, to_instance="all", content="everyone")
    b.event(has_id(broadcast["id"]))
    chan = send(sender, channel="ops", content="deploy")
    chan_event = b.event(has_id(chan["id"]))["data"]
    assert chan_event["channel"] == "ops" and chan_event["recipients"] == ["sandy"]
    both = send(sender, to_instance="sandy", channel="ops", content="twice notified")
    b.event(has_id(both["id"]))
    last = send(sender, to_instance="sandy", content="end")
    b.event(has_id(last["id"]))
    ids = [d["message_id"] for d in b.new_messages()]
    assert ids == [direct["id"], broadcast["id"], chan["id"], both["id"], last["id"]]


def test_served_instances_and_their_channels(spawn, make_palace, pg_url) -> None:
    sender = make_palace(pg_url, instances=["prime"])
    b = spawn(pg_url, instances=["prime"])
    assert listened(b) == {"all"}  # configured instances are known, not served
    before = send(sender, to_instance="newbie", content="too early")
    # A read filter naming an instance serves nobody; a caller's identity does.
    b.result("memory_recall", {"query": "x", "instance_id": "zed"})
    b.result("message", {"action": "get", "instance_id": "newbie"})
    assert b.result("_health")["served"] == ["newbie"] and "zed" not in listened(b)
    # Served from now on: what was sent before it had a session wakes it at once.
    assert b.event(has_id(before["id"]))["data"]["recipients"] == ["newbie"]
    after = send(sender, to_instance="newbie", content="now you hear me")
    assert b.event(has_id(after["id"]))["data"]["recipients"] == ["newbie"]
    # A send serves its sender, never its recipient.
    b.result(
        "message",
        {"action": "send", "from_instance": "newbie", "to_instance": "other", "content": "hi"},
    )
    assert "other" not in listened(b)
    # The plugin announces the instances it routes.
    raw = b.result("_subscribe", {"instance": "ops-bot"})
    assert raw["mode"] == "listen" and raw["served"] == ["newbie", "ops-bot"]
    page = send(sender, to_instance="ops-bot", content="page")
    assert b.event(has_id(page["id"]))["data"]["recipients"] == ["ops-bot"]
    # A served instance's channel subscription is listened to at once.
    b.result("message", {"action": "subscribe", "instance_id": "newbie", "channel": "alerts"})
    alert = send(sender, channel="alerts", content="fire")
    assert b.event(has_id(alert["id"]))["data"]["recipients"] == ["newbie"]
    b.result("message", {"action": "unsubscribe", "instance_id": "newbie", "channel": "alerts"})
    b.result("_unsubscribe", {"instance": "ops-bot"})
    quiet = send(sender, channel="alerts", content="nobody listens")
    gone = send(sender, to_instance="ops-bot", content="not served any more")
    marker = send(sender, to_instance="newbie", content="marker")
    b.event(has_id(marker["id"]))
    ids = [d["message_id"] for d in b.new_messages()]
    assert quiet["id"] not in ids and gone["id"] not in ids
    assert ids == [before["id"], after["id"], page["id"], alert["id"], marker["id"]]


def test_sending_never_listens_for_the_recipient(spawn, make_palace, pg_url) -> None:
    """The server's own list (pg_listening_channels() on the bridge's LISTEN connection): a
    bridge that sends to zed, as itself and for a caller, never LISTENs on zed's channel."""
    b = spawn(pg_url, env={"MEMORY_PALACE_INSTANCE_ID": "prime"})
    chan = names.pg_channel
    assert channels(b) == [chan("all"), chan("prime")]
    mine = b.result("message", {"action": "send", "to_instance": "zed", "content": "hi"})
    params = {"action": "send", "to_instance": "zed", "content": "for a caller"}
    b.send_raw(orjson.dumps({"id": "c1", "method": "message", "params": params, "caller": "ann"}))
    b.send_raw(b"\n")
    assert "result" in b.reply("c1")
    assert channels(b) == [chan("all"), chan("ann"), chan("prime")]  # its callers are served
    assert "zed" not in listened(b) and b.result("_health")["served"] == ["ann", "prime"]
    reply = make_palace(pg_url).call(
        "message",
        {"action": "send", "from_instance": "zed", "to_instance": "prime", "content": "ok"},
    )
    b.event(has_id(reply["id"]))
    assert [d["message_id"] for d in b.new_messages()] == [reply["id"]]  # nothing for zed
    assert mine["id"] < reply["id"]


def test_hostile_names_and_text_delivered_intact(spawn, make_palace, pg_url) -> None:
    sender = make_palace(pg_url, instances=["prime"])
    b = spawn(pg_url, instances=["prime"])
    sub = b.result(
        "message", {"action": "subscribe", "instance_id": "prime", "channel": HOSTILE_CHANNEL}
    )
    assert sub["channel"] == HOSTILE_CHANNEL
    assert HOSTILE_CHANNEL in listened(b)
    content = "content :id $2 '; DROP TABLE messages; -- " + "€" * 2800  # > 8 KB of UTF-8
    sent = send(sender, channel=HOSTILE_CHANNEL, subject=HOSTILE_SUBJECT, content=content)
    event = b.event(has_id(sent["id"]))["data"]
    assert event["subject"] == HOSTILE_SUBJECT and event["channel"] == HOSTILE_CHANNEL
    big_subject = "ü'" * 5000
    big = send(sender, channel=HOSTILE_CHANNEL, subject=big_subject, content=content)
    big_event = b.event(has_id(big["id"]))["data"]
    assert big_event["subject_truncated"] and big_subject.startswith(big_event["subject"])
    got = b.result("message", {"action": "get", "instance_id": "prime", "channel": HOSTILE_CHANNEL})
    assert [(m["subject"], m["content"]) for m in got["messages"]] == [
        (big_subject, content),
        (HOSTILE_SUBJECT, content),
    ]


def test_named_database_gets_its_own_listener(spawn, make_palace, pg_url) -> None:
    team = f"team_{uuid.uuid4().hex[:8]}"
    b = spawn(pg_url, env={"MEMORY_PALACE_INSTANCE_ID": "sandy"})
    assert set(b.result("_health")["listeners"]) == {"default"}
    b.result("message", {"action": "get", "instance_id": "sandy", "database": team})
    listeners = b.result("_health")["listeners"]
    assert set(listeners) == {"default", team} and listeners[team]["state"] == "listening"
    sender = make_palace(pg_url, instances=["prime", "sandy"])
    sent = sender.call(
        "message",
        {
            "action": "send",
            "from_instance": "prime",
            "to_instance": "sandy",
            "content": "team news",
            "database": team,
        },
    )
    assert b.event(has_id(sent["id"], team))["data"]["to_instance"] == "sandy"
    default = send(sender, to_instance="sandy", content="default news")
    b.event(has_id(default["id"]))
    assert [(d["database"], d["message_id"]) for d in b.new_messages()] == [
        (team, sent["id"]),
        ("default", default["id"]),
    ]


def test_backend_kill_mid_stream_loses_nothing_and_duplicates_nothing(
    spawn, make_palace, pg_url
) -> None:
    sender = make_palace(pg_url, instances=["prime", "sandy"])
    b = spawn(pg_url, env={"MEMORY_PALACE_INSTANCE_ID": "sandy"})
    sent: list[int] = []
    kills = 0
    stop = threading.Event()

    def stream() -> None:
        for i in range(300):
            to = "all" if i % 5 == 0 else "sandy"
            sent.append(send(sender, to_instance=to, content=f"m{i}")["id"])
            time.sleep(0.002)
        stop.set()

    thread = threading.Thread(target=stream)
    thread.start()
    while not stop.is_set() and kills < 3:
        if len(sent) >= 60 * (kills + 1):
            pids = listener_pids(pg_url)
            assert pids, "the listener connection was not found in pg_stat_activity"
            terminate(pg_url, pids)
            kills += 1
            b.event(
                lambda e, k=kills: (
                    sum(
                        1
                        for x in b.events
                        if x["event"] == "listener_status" and x["data"]["state"] == "reconnected"
                    )
                    >= k
                ),
                timeout=15,
            )
        time.sleep(0.005)
    thread.join()
    assert kills == 3
    b.event(has_id(sent[-1]), timeout=15)
    b.wait_for(lambda: len(b.new_messages()) >= len(sent), timeout=15)
    ids = [d["message_id"] for d in b.new_messages()]
    assert sorted(ids) == sorted(sent) and len(ids) == len(set(ids))
    states = [e["data"]["state"] for e in b.events if e["event"] == "listener_status"]
    assert states.count("disconnected") == 3 and states.count("reconnected") == 3
    listener = b.result("_health")["listeners"]["default"]
    assert listener["reconnects"] == 3 and listener["state"] == "listening"
    assert listener["caught_up"] > 0  # messages committed while disconnected came from catch-up
