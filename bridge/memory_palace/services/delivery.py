"""Durable delivery of `new_message` wakes: what has been pushed to which instance.

A bridge claims a (message, instance) pair by inserting it into `message_deliveries` and
writes the event inside that transaction, before the commit. A second bridge serving the same
instance, a reconnect or a restart finds the pair claimed and emits nothing. A bridge killed
after writing the event but before its commit (a window of one commit round trip) leaves the
pair unclaimed, so the next bridge emits it again: delivery is at least once across crashes,
exactly once otherwise, and the plugin drops a repeated (database, message id, instance) for
the life of the gateway. The other order (commit, then write) would lose the wake instead.
Replay covers every message after the database's delivery floor that an instance
has neither been woken for nor read (expired messages are skipped): the floor is the newest
message id when delivery records began (the first send or listener on the database), so an
upgraded database does not wake everyone for its whole history.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, text

from ..db.engine import Database
from ..db.values import decode_time, utcnow
from .messages import COLUMNS, FLOOR_KEY, NOT_EXPIRED, ensure_floor, message_dict, notify_payload

REPLAY_BATCH = 500

#: (payload, recipients claimed) for each message that woke someone
Claimed = list[tuple[dict[str, Any], list[str]]]


def bridge_name() -> str:
    """Who delivered: host:pid of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def floor(db: Database) -> int:
    """Messages with a larger id are delivered durably (recorded on first use)."""
    with db.write() as conn:
        ensure_floor(conn)
        value = conn.execute(
            text("SELECT value FROM palace_meta WHERE key = :k"), {"k": FLOOR_KEY}
        ).scalar_one()
    return int(value)


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
    return [notify_payload(message_dict(r)) for r in rows]


def claim(
    db: Database,
    items: Iterable[tuple[dict[str, Any], list[str]]],
    by: str,
    emit: Callable[[dict[str, Any], list[str]], None],
) -> Claimed:
    """Claim each (payload, recipients) for the recipients nobody woke yet and who have not read
    it, mark the messages delivered and call `emit(payload, claimed)` for each, then commit (so
    a crash before the commit leaves them to be replayed)."""
    out: Claimed = []
    now = utcnow()
    with db.write() as conn:
        at = db.backend.encode("time", now)
        for payload, recipients in items:
            msg_id = int(payload["message_id"])
            due = db.backend.encode("time", decode_time(payload.get("ack_due_at")))
            got = [
                who
                for who in recipients
                if conn.execute(
                    text(
                        "INSERT INTO message_deliveries (message_id, instance_id, delivered_at, "
                        "delivered_by, next_wake_at, rewakes) SELECT m.id, :me, :now, :by, :due, 0 "
                        "FROM messages m WHERE "
                        "m.id = :id AND NOT EXISTS (SELECT 1 FROM message_reads r WHERE "
                        "r.message_id = m.id AND r.instance_id = :me) "
                        "ON CONFLICT (message_id, instance_id) DO NOTHING"
                    ),
                    {"id": msg_id, "me": who, "now": at, "by": by, "due": due},
                ).rowcount
                == 1
            ]
            if not got:
                continue
            conn.execute(
                text(
                    "UPDATE messages SET delivery_status = 'delivered', delivered_at = :now "
                    "WHERE id = :id AND delivery_status = 'pending'"
                ),
                {"id": msg_id, "now": at},
            )
            out.append((payload, got))
        for payload, got in out:
            emit(payload, got)
    return out


def due_rewakes(db: Database, served: list[str], limit: int = 200) -> list[Any]:
    """Deliveries to served instances whose acknowledgement deadline passed unacknowledged."""
    if not served:
        return []
    stmt = text(
        "SELECT d.message_id, d.instance_id, d.rewakes, m.ack_within_s, m.from_instance, "
        "m.subject FROM message_deliveries d JOIN messages m ON m.id = d.message_id "
        "WHERE d.next_wake_at IS NOT NULL AND d.next_wake_at <= :now AND d.instance_id IN :served "
        f"AND {NOT_EXPIRED} AND NOT EXISTS (SELECT 1 FROM message_reads r WHERE "
        "r.message_id = d.message_id AND r.instance_id = d.instance_id AND r.acked_at IS NOT NULL) "
        "ORDER BY d.next_wake_at LIMIT :limit"
    ).bindparams(bindparam("served", expanding=True))
    with db.read() as conn:
        return conn.execute(
            stmt,
            {"now": db.backend.encode("time", utcnow()), "served": served, "limit": limit},
        ).all()


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
    return None if row is None else notify_payload(message_dict(row))
