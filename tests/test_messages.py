"""The message service on both backends: send/get/poll, per-recipient read state, stored
subscriptions, TTL, name validation, hostile text, and transactional NOTIFY on PostgreSQL."""

from __future__ import annotations

import select
import time
from datetime import timedelta

import orjson
import pytest
from memory_palace import InvalidParams, NotFound, Palace
from memory_palace.db.postgres import pg_connect
from memory_palace.db.values import utcnow
from memory_palace.services import messages, names
from sqlalchemy import text

HOSTILE = [
    'it\'s "quoted" -- ; DROP TABLE messages;',
    "bind :word and :id and $1 and %s and %(x)s",
    "unicode ✓ ünïcödé 日本語 🚀 \u200b",
    "x" * 8192,
]


def msg(palace: Palace, **params):
    return palace.call("message", params)


@pytest.fixture
def p(make_palace, db_url) -> Palace:
    return make_palace(db_url, instances=["prime", "sandy", "crash"])


def test_send_get_orders_by_priority_then_newest(p: Palace) -> None:
    a = msg(p, action="send", from_instance="prime", to_instance="sandy", content="low")
    b = msg(
        p, action="send", from_instance="prime", to_instance="sandy", content="high", priority=9
    )
    c = msg(p, action="send", from_instance="prime", to_instance="sandy", content="low newer")
    msg(p, action="send", from_instance="prime", to_instance="crash", content="not for sandy")
    assert a["success"] and "instance_warning" not in a
    got = msg(p, action="get", instance_id="sandy")
    assert [m["id"] for m in got["messages"]] == [b["id"], c["id"], a["id"]]
    assert got["count"] == 3 and got["messages"][0]["content"] == "high"


def test_broadcast_read_state_is_per_recipient(p: Palace) -> None:
    sent = msg(p, action="send", from_instance="prime", to_instance="all", content="hello all")
    msg(p, action="mark_read", instance_id="sandy", message_id=sent["id"])
    assert msg(p, action="get", instance_id="sandy")["count"] == 0
    crash = msg(p, action="get", instance_id="crash")
    assert [m["id"] for m in crash["messages"]] == [sent["id"]]
    every = msg(p, action="get", instance_id="sandy", unread_only=False)
    assert every["messages"][0]["read"] is True
    again = msg(p, action="mark_read", instance_id="sandy", message_id=sent["id"])
    assert again["already_read"] is True
    unread = msg(p, action="mark_unread", instance_id="sandy", message_id=sent["id"])
    assert unread["was_read"] is True
    assert msg(p, action="get", instance_id="sandy")["count"] == 1


def test_non_recipient_cannot_mark_read(p: Palace) -> None:
    sent = msg(p, action="send", from_instance="prime", to_instance="sandy", content="private")
    with pytest.raises(InvalidParams, match="not a recipient"):
        msg(p, action="mark_read", instance_id="crash", message_id=sent["id"])
    with pytest.raises(InvalidParams, match="not a recipient"):
        msg(p, action="mark_unread", instance_id="crash", message_id=sent["id"])
    with pytest.raises(NotFound):
        msg(p, action="mark_read", instance_id="sandy", message_id=sent["id"] + 1000)
    assert msg(p, action="get", instance_id="sandy")["count"] == 1


def test_channel_subscriptions_are_stored_and_grant_read(p: Palace, make_palace, db_url) -> None:
    sent = msg(p, action="send", from_instance="prime", channel="ops", content="deploy at 5")
    assert sent["to_instance"] == "#ops"
    with pytest.raises(InvalidParams):
        msg(p, action="mark_read", instance_id="crash", message_id=sent["id"])
    sub = msg(p, action="subscribe", instance_id="crash", channel="ops")
    assert sub["subscriptions"] == ["ops"] and not sub["already_subscribed"]
    # Another process (another Palace over the same database) sees the subscription.
    other = make_palace(db_url, instances=["prime", "sandy", "crash"])
    assert messages.subscriptions(other.database(), "crash") == ["ops"]
    got = msg(other, action="get", instance_id="crash")
    assert [m["id"] for m in got["messages"]] == [sent["id"]]
    msg(other, action="mark_read", instance_id="crash", message_id=sent["id"])
    assert msg(p, action="get", instance_id="sandy")["count"] == 0
    left = msg(p, action="unsubscribe", instance_id="crash", channel="ops")
    assert left["was_subscribed"] and left["subscribers_left"] == 0
    assert msg(p, action="get", instance_id="crash", unread_only=False)["count"] == 0


def test_ttl_and_expired_messages_are_never_returned(p: Palace) -> None:
    keep = msg(
        p,
        action="send",
        from_instance="prime",
        to_instance="sandy",
        content="keep",
        ttl_seconds=3600,
    )
    gone = msg(
        p, action="send", from_instance="prime", to_instance="sandy", content="gone", ttl_seconds=60
    )
    assert keep["expires_at"] is not None
    db = p.database()
    with db.write() as conn:  # age the second message past its expiry
        conn.execute(
            text("UPDATE messages SET expires_at = :t WHERE id = :id"),
            {"t": db.backend.encode("time", utcnow() - timedelta(seconds=1)), "id": gone["id"]},
        )
    got = msg(p, action="get", instance_id="sandy", unread_only=False)
    assert [m["id"] for m in got["messages"]] == [keep["id"]]
    assert [m["id"] for m in msg(p, action="poll", instance_id="sandy")["messages"]] == [keep["id"]]
    assert [m["message_id"] for m in messages.messages_since(db, 0, ["sandy"])] == [keep["id"]]
    with pytest.raises(NotFound, match="expired"):
        msg(p, action="mark_read", instance_id="sandy", message_id=gone["id"])


def test_poll_since_id_ascending(p: Palace) -> None:
    ids = [
        msg(p, action="send", from_instance="prime", to_instance=to, content=f"m{i}")["id"]
        for i, to in enumerate(["sandy", "all", "crash", "sandy"])
    ]
    first = msg(p, action="poll", instance_id="sandy")
    assert [m["id"] for m in first["messages"]] == [ids[0], ids[1], ids[3]]
    later = msg(p, action="poll", instance_id="sandy", since_id=ids[1])
    assert [m["id"] for m in later["messages"]] == [ids[3]] and later["last_id"] == ids[3]
    assert msg(p, action="poll", instance_id="sandy", since_id=ids[3])["last_id"] == ids[3]


@pytest.mark.parametrize(
    "bad, match",
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        ("x" * 46, "at most 45 bytes"),
        ("é" * 23, "at most 45 bytes"),
        (" lead", "spaces"),
        ("#chan", "reserved"),
    ],
)
def test_names_are_validated(p: Palace, bad: str, match: str) -> None:
    with pytest.raises(InvalidParams, match=match):
        msg(p, action="send", from_instance="prime", to_instance=bad, content="x")
    with pytest.raises(InvalidParams, match=match):
        msg(p, action="subscribe", instance_id="prime", channel=bad)
    assert msg(p, action="get", instance_id="prime", unread_only=False)["count"] == 0


def test_longest_valid_name_and_unknown_sender_warning(p: Palace) -> None:
    name = "n" * names.MAX_NAME_BYTES
    sent = msg(p, action="send", from_instance="stranger", to_instance=name, content="hi")
    assert "stranger" in sent["instance_warning"] and name in sent["instance_warning"]
    assert msg(p, action="get", instance_id=name)["messages"][0]["from_instance"] == "stranger"


def test_send_validation_errors(p: Palace) -> None:
    with pytest.raises(InvalidParams, match="to_instance"):
        msg(p, action="send", from_instance="prime", content="x")
    with pytest.raises(InvalidParams, match="content"):
        msg(p, action="send", from_instance="prime", to_instance="sandy", content="  ")
    with pytest.raises(InvalidParams, match="from_instance"):
        msg(p, action="send", to_instance="sandy", content="x")
    with pytest.raises(InvalidParams, match="NUL"):
        msg(p, action="send", from_instance="prime", to_instance="sandy", content="a\x00b")
    with pytest.raises(InvalidParams, match="priority"):
        msg(p, action="send", from_instance="prime", to_instance="sandy", content="x", priority=11)


def test_hostile_text_is_stored_intact(p: Palace) -> None:
    for i, s in enumerate(HOSTILE):
        msg(
            p,
            action="send",
            from_instance="prime",
            to_instance="sandy",
            subject=s,
            content=s,
            priority=i,
        )
    got = msg(p, action="get", instance_id="sandy", limit=10)["messages"]
    assert [m["subject"] for m in got] == HOSTILE[::-1]
    assert [m["content"] for m in got] == HOSTILE[::-1]


def test_notify_payload_is_cut_to_fit() -> None:
    big = {
        "from_instance": "a",
        "to_instance": "b",
        "message_type": "fyi",
        "id": 7,
        "priority": 1,
        "channel": None,
        "subject": 'é"' * 6000,
    }
    payload = messages.notify_payload(big)
    assert len(orjson.dumps(payload)) <= messages.NOTIFY_LIMIT
    assert payload["subject_truncated"] and big["subject"].startswith(payload["subject"])
    assert payload["message_id"] == 7
    small = messages.notify_payload({**big, "subject": "short"})
    assert small["subject"] == "short" and "subject_truncated" not in small


def _listen(url: str, *channels: str):
    from psycopg2 import sql

    conn = pg_connect(url)
    with conn.cursor() as cur:
        for n in channels:
            cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(names.pg_channel(n))))
    return conn


def _notifies(conn, count: int, timeout: float = 5.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        select.select([conn], [], [], 0.1)
        conn.poll()
        got.extend(conn.notifies)
        conn.notifies.clear()
    return got


def test_send_notifies_inside_the_transaction(make_palace, pg_url) -> None:
    p = make_palace(pg_url, instances=["prime", "sandy"])
    p.database()
    conn = _listen(pg_url, "sandy", "all", "ops", "O'Brien :x $1")
    try:
        sent = [
            msg(
                p,
                action="send",
                from_instance="prime",
                to_instance="sandy",
                subject=HOSTILE[1],
                content="c",
                priority=3,
            ),
            msg(p, action="send", from_instance="prime", to_instance="all", content="b"),
            msg(p, action="send", from_instance="prime", channel="ops", content="ch"),
            msg(
                p,
                action="send",
                from_instance="prime",
                to_instance="sandy",
                channel="ops",
                content="both",
            ),
            msg(
                p,
                action="send",
                from_instance="prime",
                to_instance="O'Brien :x $1",
                subject=HOSTILE[3],
                content="big",
            ),
        ]
        got = _notifies(conn, 6)
        pairs = [(n.channel, orjson.loads(n.payload)["message_id"]) for n in got]
        assert pairs == [
            ("memory_palace_msg_sandy", sent[0]["id"]),
            ("memory_palace_msg_all", sent[1]["id"]),
            ("memory_palace_msg_ops", sent[2]["id"]),
            ("memory_palace_msg_sandy", sent[3]["id"]),
            ("memory_palace_msg_ops", sent[3]["id"]),
            ("memory_palace_msg_O'Brien :x $1", sent[4]["id"]),
        ]
        first = orjson.loads(got[0].payload)
        assert first == {
            "from_instance": "prime",
            "to_instance": "sandy",
            "message_type": "message",
            "subject": HOSTILE[1],
            "message_id": sent[0]["id"],
            "priority": 3,
            "channel": None,
        }
        last = orjson.loads(got[-1].payload)
        assert last["subject_truncated"] and HOSTILE[3].startswith(last["subject"])
        # NOTIFY is not delivery: nobody received these yet
        assert all(s["delivery_status"] == "pending" for s in sent)
        row = msg(p, action="get", instance_id="sandy")["messages"][0]
        assert row["delivery_status"] == "pending" and row["delivered_at"] is None
    finally:
        conn.close()


def test_failed_send_neither_stores_nor_notifies(make_palace, pg_url) -> None:
    p = make_palace(pg_url, instances=["prime", "sandy"])
    p.database()
    conn = _listen(pg_url, "sandy")
    try:
        with pytest.raises(InvalidParams):
            msg(p, action="send", from_instance="prime", to_instance="sandy", content="a\x00")
        ok = msg(p, action="send", from_instance="prime", to_instance="sandy", content="ok")
        got = _notifies(conn, 1)
        assert [orjson.loads(n.payload)["message_id"] for n in got] == [ok["id"]]
    finally:
        conn.close()
