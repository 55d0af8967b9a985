"""Durable delivery of `new_message` wakes: what has been pushed to which instance.

A bridge claims a (message, instance) pair by inserting it into `message_deliveries` and
writes the event inside that transaction, before the commit. A second bridge serving the same
instance, a reconnect or a restart finds the pair claimed and emits nothing. A bridge killed
after writing a batch of events but before its commit (a few milliseconds: the ack-deadline
updates and the commit) leaves those pairs unclaimed; the other order (commit, then write) would
lose the wakes instead. So the consumer closes the gap: it starts the next bridge with
`--no-deliver` and hands the wakes it received over in `_deliver {received}`, which
`record_received` claims without emitting before anything is replayed — exactly once across
SIGKILLs. (A bridge whose commit fails while it keeps running does the same for itself.)
Replay covers every message after the database's delivery floor that an instance
has neither been woken for nor read (expired messages are skipped): the floor is the newest
message id when delivery records began (the first send or listener on the database), so an
upgraded database does not wake everyone for its whole history.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

from ..db.engine import Database
from ..db.errors import translate_db_errors
from ..db.values import decode_time, utcnow
from .messages import (
    COLUMNS,
    FLOOR_KEY,
    NOT_EXPIRED,
    floor_of,
    message_dict,
    notify_payload,
)

REPLAY_BATCH = 500

#: (payload, recipients claimed) for each message that woke someone
Claimed = list[tuple[dict[str, Any], list[str]]]


def bridge_name() -> str:
    """Who delivered: host:pid of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def floor(db: Database) -> int:
    """Messages with a larger id are delivered durably (recorded on first use; once recorded
    it never changes, so each process reads it once per database)."""
    if FLOOR_KEY not in db.cache:
        with db.write() as conn:
            value = floor_of(db, conn)
        db.cache[FLOOR_KEY] = value
    return int(db.cache[FLOOR_KEY])


def undelivered(
    db: Database, instance: str, after: int, limit: int = REPLAY_BATCH
) -> list[dict[str, Any]]:
    """Push payloads of messages for `instance` with id > `after` that it was neither woken for
    nor has read, oldest first: direct, broadcast (not its own) and its channels."""
    with db.read() as conn:
        rows = conn.execute(
            text(
                f"SELECT {COLUMNS} FROM messages m WHERE m.id > :after AND {NOT_EXPIRED} AND "
                "(m.to_instance = :me OR (m.to_instance = 'all' AND m.from_instance <> :me) OR "
                "m.channel IN (SELECT s.channel FROM subscriptions s WHERE s.instance_id = :me))"
                " AND NOT EXISTS (SELECT 1 FROM message_deliveries d WHERE d.message_id = m.id "
                "AND d.instance_id = :me) AND NOT EXISTS (SELECT 1 FROM message_reads r WHERE "
                "r.message_id = m.id AND r.instance_id = :me) ORDER BY m.id LIMIT :limit"
            ),
            {
                "me": instance,
                "after": after,
                "limit": limit,
                "now": db.backend.encode("time", utcnow()),
            },
        ).all()
    return [_payload(r) for r in rows]


@contextmanager
def _transaction(db: Database, held: Connection | None) -> Iterator[Connection]:
    """A write transaction on `held` (a listener's own connection: no pool checkout or
    pre-ping per message), or on a pooled connection."""
    if held is None:
        with db.write() as conn:
            yield conn
        return
    with translate_db_errors(db), held.begin():
        yield held


def open_held(db: Database) -> Connection:
    """A connection a listener keeps for its claims (SQLite: transactions BEGIN IMMEDIATE)."""
    with translate_db_errors(db):
        return db.engine.connect().execution_options(sqlite_begin="IMMEDIATE")


def claim(
    db: Database,
    items: Iterable[tuple[dict[str, Any], list[str]]],
    by: str,
    emit: Callable[[dict[str, Any], list[str]], None],
    conn: Connection | None = None,
) -> Claimed:
    """Claim each (payload, recipients) for the recipients nobody woke yet and who have not read
    it (one INSERT ... RETURNING: the message reads as delivered from then on), call
    `emit(payload, claimed)` for each, set ack deadlines, then commit: a crash before the commit
    leaves them to be replayed."""
    items = list(items)
    if not items:
        return []
    now = db.backend.encode("time", utcnow())
    with _transaction(db, conn) as conn:
        out = _claim_and_emit(
            conn,
            items,
            "message_id",
            "WITH p(id, who) AS (VALUES {rows}) "
            "INSERT INTO message_deliveries (message_id, instance_id, delivered_at, "
            "delivered_by, rewakes) SELECT m.id, p.who, :now, :by, 0 FROM p JOIN messages m "
            "ON m.id = p.id WHERE NOT EXISTS (SELECT 1 FROM message_reads r WHERE "
            "r.message_id = m.id AND r.instance_id = p.who) "
            "ON CONFLICT (message_id, instance_id) DO NOTHING "
            "RETURNING message_id, instance_id",
            {"now": now, "by": by},
            emit,
        )
        for payload, mine in out:
            due = decode_time(payload.get("ack_due_at"))
            if due is not None:  # the first deadline of an ack_within_s message
                conn.execute(
                    text(
                        "UPDATE message_deliveries SET next_wake_at = :due WHERE message_id = :id "
                        "AND instance_id IN :who"
                    ).bindparams(bindparam("who", expanding=True)),
                    {
                        "due": db.backend.encode("time", due),
                        "id": int(payload["message_id"]),
                        "who": mine,
                    },
                )
    return out


def silent(payload: dict[str, Any], recipients: list[str]) -> None:
    """The emit of a claim whose wakes were already received (or go out another way)."""


def record_received(
    db: Database, messages: dict[int, list[str]], memories: dict[int, list[str]], by: str
) -> int:
    """Claim, without emitting, wakes a consumer says it already received (from an earlier
    bridge that may have died before committing them): `{id: recipients}` per kind. Ack
    deadlines start as if just delivered. Returns the pairs newly recorded."""
    count = 0
    if messages:
        with db.read() as conn:
            rows = conn.execute(
                text(
                    f"SELECT {COLUMNS} FROM messages m WHERE m.id IN :ids ORDER BY m.id"
                ).bindparams(bindparam("ids", expanding=True)),
                {"ids": sorted(messages)},
            ).all()
        items = [(p, messages[int(p["message_id"])]) for p in map(_payload, rows)]
        count += sum(len(who) for _, who in claim(db, items, by, silent))
    if memories:
        items = [({"memory_id": i}, who) for i, who in sorted(memories.items())]
        count += sum(len(who) for _, who in claim_memories(db, items, by, silent))
    return count


def _payload(row: Any) -> dict[str, Any]:
    return notify_payload(message_dict(row))


def due_rewakes(
    db: Database, served: list[str], limit: int = 200
) -> tuple[list[Any], datetime | None]:
    """(unacknowledged deliveries to served instances whose acknowledgement deadline passed,
    the earliest first; the earliest of their deadlines still to come, None if none): a
    listener looks again then. That deadline may belong to an acknowledged or expired
    delivery, which costs one look that finds nothing."""
    if not served:
        return [], None
    due = text(
        "SELECT d.message_id, d.instance_id, d.rewakes, m.ack_within_s, m.from_instance, "
        "m.subject FROM message_deliveries d JOIN messages m ON m.id = d.message_id "
        "WHERE d.next_wake_at IS NOT NULL AND d.next_wake_at <= :now AND d.instance_id IN :served "
        f"AND {NOT_EXPIRED} AND NOT EXISTS (SELECT 1 FROM message_reads r WHERE "
        "r.message_id = d.message_id AND r.instance_id = d.instance_id AND r.acked_at IS NOT NULL) "
        "ORDER BY d.next_wake_at LIMIT :limit"
    ).bindparams(bindparam("served", expanding=True))
    upcoming = text(
        "SELECT min(next_wake_at) FROM message_deliveries WHERE next_wake_at > :now "
        "AND instance_id IN :served"
    ).bindparams(bindparam("served", expanding=True))
    now = {"now": db.backend.encode("time", utcnow()), "served": served}
    with db.read() as conn:
        rows = conn.execute(due, {**now, "limit": limit}).all()
        return rows, decode_time(conn.execute(upcoming, now).scalar())


def take_round(db: Database, row: Any, last: bool) -> bool:
    """Claim one re-wake round of a delivery (exactly one bridge wins it): the next deadline,
    or none after the last round. True if this caller won."""
    now = utcnow()
    nxt = None if last else now + timedelta(seconds=int(row.ack_within_s or 1))
    with db.write() as conn:
        return (
            conn.execute(
                text(
                    "UPDATE message_deliveries SET rewakes = rewakes + 1, next_wake_at = :next "
                    "WHERE message_id = :id AND instance_id = :me AND rewakes = :n"
                ),
                {
                    "next": db.backend.encode("time", nxt),
                    "id": row.message_id,
                    "me": row.instance_id,
                    "n": row.rewakes,
                },
            ).rowcount
            == 1
        )


def payload_of(db: Database, message_id: int) -> dict[str, Any] | None:
    with db.read() as conn:
        row = conn.execute(
            text(f"SELECT {COLUMNS} FROM messages m WHERE m.id = :id"), {"id": message_id}
        ).first()
    return None if row is None else _payload(row)


def claim_memories(
    db: Database,
    items: Iterable[tuple[dict[str, Any], list[str]]],
    by: str,
    emit: Callable[[dict[str, Any], list[str]], None],
    conn: Connection | None = None,
) -> Claimed:
    """`claim` for memory wakes: record (memory, subscriber) pairs nobody was woken for yet in
    `memory_deliveries`, call `emit(payload, claimed)` for each, then commit."""
    items = list(items)
    if not items:
        return []
    with _transaction(db, conn) as conn:
        out = _claim_and_emit(
            conn,
            items,
            "memory_id",
            "WITH p(id, who) AS (VALUES {rows}) "
            "INSERT INTO memory_deliveries (memory_id, instance_id, delivered_at, "
            "delivered_by) SELECT m.id, p.who, :now, :by FROM p JOIN memories m "
            "ON m.id = p.id WHERE 1 = 1 ON CONFLICT (memory_id, instance_id) DO NOTHING "
            "RETURNING memory_id, instance_id",
            {"now": db.backend.encode("time", utcnow()), "by": by},
            emit,
        )
    return out


def _claim_and_emit(
    conn: Connection,
    items: list[tuple[dict[str, Any], list[str]]],
    key: str,
    insert: str,
    params: dict[str, Any],
    emit: Callable[[dict[str, Any], list[str]], None],
) -> Claimed:
    """Run `insert` (its `{rows}` = one (:iN, :wN) per (payload[key], recipient) pair; it
    RETURNS the pairs it claimed), then emit each payload to its claimed recipients, in order.
    Returns what was emitted."""
    pairs = [(int(p[key]), who) for p, recipients in items for who in recipients]
    if not pairs:
        return []
    params = dict(params)
    for n, (item_id, who) in enumerate(pairs):
        params[f"i{n}"], params[f"w{n}"] = item_id, who
    rows = ", ".join(f"(:i{n}, :w{n})" for n in range(len(pairs)))
    got: dict[int, set[str]] = {}
    for item_id, who in conn.execute(text(insert.format(rows=rows)), params).all():
        got.setdefault(int(item_id), set()).add(who)
    out: Claimed = []
    for payload, recipients in items:  # claimed: wake now, bookkeeping after
        mine = [w for w in recipients if w in got.get(int(payload[key]), ())]
        if mine:
            out.append((payload, mine))
            emit(payload, mine)
    return out
