"""Messages between agent instances: send (with transactional NOTIFY on PostgreSQL), get, per-
recipient read state, stored subscriptions, TTLs and poll(since_id); plus the queries the listener
uses to catch up (`messages_since`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Annotated, Any, Literal, get_args

import orjson
from sqlalchemy import bindparam, text

from ..config import Settings
from ..db.engine import Database
from ..db.tables import MESSAGES
from ..db.values import decode_bool, decode_time, iso, utcnow
from ..errors import Conflict, InvalidParams, NotFound
from ..params import MemoryType, P, Project
from . import watch
from .access import Caller
from .memories import check_size
from .names import BROADCAST, CHANNEL_ONLY, check_name, pg_channel

log = logging.getLogger("memory_palace.messages")

FLOOR_KEY = "delivery_floor"  # palace_meta: messages after this id are delivered durably
NOTIFY_LIMIT = 7999  # pg_notify payloads must be shorter than 8000 bytes
Action = Literal[
    "send",
    "get",
    "mark_read",
    "mark_unread",
    "ack",
    "status",
    "thread",
    "subscribe",
    "unsubscribe",
    "poll",
    "retract",
]
AWAIT_MAX_S = 300
AWAIT_TICK = 0.1
MessageType = Literal["handoff", "status", "question", "fyi", "context", "event", "message"]
ACTIONS: tuple[str, ...] = get_args(Action)
MESSAGE_TYPES: tuple[str, ...] = get_args(MessageType)

#: A message's row stores pending or read; "delivered" and its time come from its delivery
#: records, so a claim (one per wake) writes only `message_deliveries`, never the message.
COLUMNS = (
    "m.id, m.created_at, m.from_instance, m.to_instance, m.message_type, m.subject, "
    "m.content, m.channel, m.priority, m.expires_at, CASE WHEN m.delivery_status = 'pending' "
    "AND EXISTS (SELECT 1 FROM message_deliveries d WHERE d.message_id = m.id) THEN 'delivered' "
    "ELSE m.delivery_status END AS delivery_status, coalesce(m.delivered_at, (SELECT "
    "min(d.delivered_at) FROM message_deliveries d WHERE d.message_id = m.id)) AS delivered_at, "
    "m.thread_id, m.reply_to, m.ack_required, m.ack_within_s"
)
NOT_EXPIRED = "(m.expires_at IS NULL OR m.expires_at > :now)"
RECIPIENT = (
    "(m.to_instance = :me OR m.to_instance = 'all' OR m.channel IN "
    "(SELECT s.channel FROM subscriptions s WHERE s.instance_id = :me))"
)


def _instance(settings: Settings, instance_id: str | None, what: str = "instance_id") -> str:
    if instance_id is None:
        if settings.instance_id is None:
            raise InvalidParams(
                f"{what} is required (or set MEMORY_PALACE_INSTANCE_ID)", param=what
            )
        return settings.instance_id
    return check_name(instance_id, what)


def message_dict(row: Any, read_at: Any = None, with_read: bool = False) -> dict[str, Any]:
    out = {
        "id": int(row.id),
        "created_at": iso(row.created_at),
        "from_instance": row.from_instance,
        "to_instance": row.to_instance,
        "message_type": row.message_type,
        "subject": row.subject,
        "content": row.content,
        "channel": row.channel,
        "priority": int(row.priority),
        "expires_at": iso(row.expires_at),
        "delivery_status": row.delivery_status,
        "delivered_at": iso(row.delivered_at),
        "thread_id": None if row.thread_id is None else int(row.thread_id),
        "reply_to": None if row.reply_to is None else int(row.reply_to),
        "ack_required": decode_bool(row.ack_required),
        "ack_due_at": (
            iso(decode_time(row.created_at) + timedelta(seconds=int(row.ack_within_s)))
            if decode_bool(row.ack_required) and row.ack_within_s
            else None
        ),
    }
    if with_read:
        out["read"] = read_at is not None
        out["read_at"] = iso(read_at)
    return out


def notify_payload(msg: dict[str, Any]) -> dict[str, Any]:
    """The push payload (the seed's fields plus channel), cut to fit pg_notify's 8000 bytes."""
    payload = {k: msg.get(k) for k in ("from_instance", "to_instance", "message_type", "subject")}
    payload.update(
        message_id=msg.get("message_id", msg.get("id")),
        priority=msg.get("priority"),
        channel=msg.get("channel"),
    )
    for key in ("thread_id", "reply_to", "ack_due_at"):  # metadata for the wake text
        if msg.get(key) is not None:
            payload[key] = msg[key]
    if msg.get("ack_required") is True:
        payload["ack_required"] = True
    if len(orjson.dumps(payload)) <= NOTIFY_LIMIT:
        return payload
    subject = payload["subject"] or ""
    payload["subject"] = ""
    payload["subject_truncated"] = True
    budget = NOTIFY_LIMIT - len(orjson.dumps(payload))
    used, cut = 0, 0
    for ch in subject:
        size = len(orjson.dumps(ch)) - 2
        if used + size > budget:
            break
        used += size
        cut += 1
    payload["subject"] = subject[:cut]
    return payload


INSERT_KEY = "messages.insert"  # db.cache key of the parsed INSERT of a message


def ensure_floor(conn: Any) -> None:
    """Record the delivery floor once (the newest message id now); later calls change nothing."""
    conn.execute(
        text(
            "INSERT INTO palace_meta (key, value) SELECT :k, CAST(coalesce(max(id), 0) AS TEXT) "
            "FROM messages WHERE 1 = 1 ON CONFLICT (key) DO NOTHING"
        ),
        {"k": FLOOR_KEY},
    )


def floor_of(db: Database, conn: Any) -> int:
    """The delivery floor: known to this process, or recorded now on `conn`. Once committed it
    never changes, so the caller keeps it in `db.cache` after its commit."""
    known = db.cache.get(FLOOR_KEY)
    if known is None:
        ensure_floor(conn)
        known = read_floor(conn)
    return int(known)


def read_floor(conn: Any) -> int | None:
    """The delivery floor, if delivery records began."""
    value = conn.execute(
        text("SELECT value FROM palace_meta WHERE key = :k"), {"k": FLOOR_KEY}
    ).scalar()
    return None if value is None else int(value)


def adopt_floor(conn: Any, value: int) -> None:
    """An import or migration keeps its source's floor (unless delivery records began here):
    the copied messages its source woken nobody for still wake, the delivered ones
    (message_deliveries, copied too) do not."""
    conn.execute(
        text("INSERT INTO palace_meta (key, value) VALUES (:k, :v) ON CONFLICT (key) DO NOTHING"),
        {"k": FLOOR_KEY, "v": str(int(value))},
    )


def _warning(settings: Settings, names: Iterable[str]) -> str | None:
    unknown = [n for n in names if n != BROADCAST and n not in settings.instances]
    if not unknown:
        return None
    return (
        f"instance {', '.join(repr(n) for n in unknown)} is not in the configured instances "
        f"({', '.join(settings.instances)}); the message was stored anyway. Add it to "
        'config.json "instances" if it is a real agent, or fix the spelling.'
    )


def _due(now: Any, ack_within_s: int | None) -> str | None:
    return iso(now + timedelta(seconds=ack_within_s)) if ack_within_s else None


def _visible(db: Database, message_id: int | None, me: str, anyone: bool = False) -> Any:
    """A message `me` sent or may read (direct, broadcast, subscribed channel); NotFound
    otherwise, so ids of others' messages reveal nothing. `anyone`: skip the check."""
    with db.read() as conn:
        row = conn.execute(
            text(
                f"SELECT {COLUMNS} FROM messages m WHERE m.id = :id AND "
                f"(:anyone OR m.from_instance = :me OR {RECIPIENT})"
            ),
            {"id": message_id, "me": me, "anyone": anyone},
        ).first()
    if row is None:
        raise NotFound(
            f"message {message_id} does not exist or is not one {me!r} sent or received",
            message_id=message_id,
        )
    return row


def _root(row: Any) -> int:
    return int(row.thread_id) if row.thread_id is not None else int(row.id)


def send(
    db: Database,
    settings: Settings,
    *,
    from_instance: str | None,
    to_instance: str | None,
    content: str | None,
    subject: str | None = None,
    message_type: str = "message",
    channel: str | None = None,
    priority: int = 0,
    ttl_seconds: int | None = None,
    reply_to: int | None = None,
    thread_id: int | None = None,
    ack_required: bool = False,
    ack_within_s: int | None = None,
    notice: bool = False,
) -> dict[str, Any]:
    """Store a message; on PostgreSQL NOTIFY its channels in the same transaction. A reply
    (reply_to) joins its parent's thread and, without a recipient, goes to the parent's
    sender."""
    sender = _instance(settings, from_instance, "from_instance")
    if channel is not None:
        channel = check_name(channel, "channel")
    parent = None
    if reply_to is not None or thread_id is not None:
        # a notice (the palace telling a sender its message is overdue) may join any thread
        parent = _visible(db, reply_to if reply_to is not None else thread_id, sender, notice)
        if thread_id is not None and _root(parent) != _root(_visible(db, thread_id, sender)):
            raise InvalidParams(
                f"message {reply_to} is not in thread {thread_id}; pass one of them",
                param="thread_id",
            )
        if to_instance is None and channel is None and reply_to is not None:
            to_instance = parent.from_instance if parent.from_instance != sender else None
            if to_instance is None:
                to_instance = parent.to_instance if parent.to_instance[:1] != CHANNEL_ONLY else None
            channel = channel or (parent.channel if to_instance is None else None)
    if ack_within_s is not None and not ack_required:
        ack_required = True
    if to_instance is None:
        if channel is None:
            raise InvalidParams(
                "send needs to_instance (an instance, or 'all' to broadcast) or a channel",
                param="to_instance",
            )
        to = CHANNEL_ONLY + channel
    else:
        to = check_name(to_instance, "to_instance")
    if not isinstance(content, str) or not content.strip():
        raise InvalidParams("send needs a non-empty content", param="content")
    check_size(settings, "message", content=content, subject=subject)
    if message_type not in MESSAGE_TYPES:
        raise InvalidParams(
            f"message_type must be one of {', '.join(MESSAGE_TYPES)}", param="message_type"
        )
    if not 0 <= priority <= 10:
        raise InvalidParams("priority must be between 0 and 10", param="priority")
    now = utcnow()
    expires = now + timedelta(seconds=ttl_seconds) if ttl_seconds else None
    values = {
        "created_at": now,
        "from_instance": sender,
        "to_instance": to,
        "message_type": message_type,
        "subject": subject,
        "content": content,
        "channel": channel,
        "priority": priority,
        "expires_at": expires,
        "delivery_status": "pending",
        "thread_id": None if parent is None else _root(parent),
        "reply_to": reply_to,
        "ack_required": ack_required,
        "ack_within_s": ack_within_s,
    }
    status = "pending"
    targets = ([] if to.startswith(CHANNEL_ONLY) else [to]) + (
        [channel] if channel is not None and channel != to else []
    )
    with db.write() as conn:
        floor = floor_of(db, conn)  # delivery records start no later than the first message
        insert = db.cache.get(INSERT_KEY)
        if insert is None:  # parsed once per database: it runs for every message
            insert = db.cache[INSERT_KEY] = text(
                db.backend.insert_sql(MESSAGES, values, returning="id")
            )
        msg_id = conn.execute(
            insert,
            db.backend.encode_row(MESSAGES, values),
        ).scalar_one()
        payload = orjson.dumps(
            notify_payload(
                {**values, "message_id": int(msg_id), "ack_due_at": _due(now, ack_within_s)}
            )
        ).decode()
        channels = db.backend.notify(conn, [pg_channel(t) for t in targets], payload)
    db.cache[FLOOR_KEY] = floor  # committed: it never changes again
    out: dict[str, Any] = {
        "success": True,
        "id": int(msg_id),
        "from_instance": sender,
        "to_instance": to,
        "channel": channel,
        "delivery_status": status,
        "notified_channels": channels,
        "expires_at": iso(expires),
        "thread_id": values["thread_id"],
        "reply_to": reply_to,
        "ack_required": ack_required,
        "ack_due_at": iso(now + timedelta(seconds=ack_within_s)) if ack_within_s else None,
    }
    warning = _warning(settings, [sender] + ([] if to.startswith(CHANNEL_ONLY) else [to]))
    if warning:
        out["instance_warning"] = warning
    return out


def get(
    db: Database,
    settings: Settings,
    *,
    instance_id: str | None,
    unread_only: bool = True,
    channel: str | None = None,
    message_type: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """Messages for an instance (direct, broadcast, subscribed channels), highest priority and
    newest first. Read state is the caller's own."""
    me = _instance(settings, instance_id)
    where = [RECIPIENT, NOT_EXPIRED]
    params: dict[str, Any] = {"me": me, "now": db.backend.encode("time", utcnow()), "limit": limit}
    if unread_only:
        where.append("r.message_id IS NULL")
    if channel is not None:
        where.append("m.channel = :channel")
        params["channel"] = check_name(channel, "channel")
    if message_type and message_type != "message":
        where.append("m.message_type = :message_type")
        params["message_type"] = message_type
    with db.read() as conn:
        rows = conn.execute(
            text(
                f"SELECT {COLUMNS}, r.read_at AS read_at FROM messages m "
                "LEFT JOIN message_reads r ON r.message_id = m.id AND r.instance_id = :me "
                f"WHERE {' AND '.join(where)} "
                "ORDER BY m.priority DESC, m.created_at DESC, m.id DESC LIMIT :limit"
            ),
            params,
        ).all()
    messages = [message_dict(r, r.read_at, with_read=True) for r in rows]
    return {"count": len(messages), "messages": messages, "instance_id": me}


def poll(
    db: Database, settings: Settings, *, instance_id: str | None, since_id: int = 0, limit: int = 50
) -> dict[str, Any]:
    """Messages for an instance with id > since_id, oldest first (read or not)."""
    me = _instance(settings, instance_id)
    with db.read() as conn:
        rows = conn.execute(
            text(
                f"SELECT {COLUMNS}, r.read_at AS read_at FROM messages m "
                "LEFT JOIN message_reads r ON r.message_id = m.id AND r.instance_id = :me "
                f"WHERE m.id > :since AND {RECIPIENT} AND {NOT_EXPIRED} ORDER BY m.id LIMIT :limit"
            ),
            {
                "me": me,
                "since": since_id,
                "now": db.backend.encode("time", utcnow()),
                "limit": limit,
            },
        ).all()
    messages = [message_dict(r, r.read_at, with_read=True) for r in rows]
    last = messages[-1]["id"] if messages else since_id
    return {"count": len(messages), "messages": messages, "last_id": last, "instance_id": me}


def _recipient_row(db: Database, conn: Any, message_id: int, me: str) -> Any:
    row = conn.execute(
        text(
            "SELECT m.id, m.to_instance, m.channel, "
            "(SELECT 1 FROM subscriptions s WHERE s.instance_id = :me AND s.channel = m.channel) "
            "AS subscribed FROM messages m WHERE m.id = :id AND " + NOT_EXPIRED
        ),
        {"id": message_id, "me": me, "now": db.backend.encode("time", utcnow())},
    ).first()
    if row is None:
        raise NotFound(
            f"message {message_id} does not exist or has expired; list messages with action=get",
            message_id=message_id,
        )
    if row.to_instance not in (me, BROADCAST) and row.subscribed is None:
        raise InvalidParams(
            f"instance {me!r} is not a recipient of message {message_id} (to {row.to_instance!r}"
            + (f", channel {row.channel!r}" if row.channel else "")
            + "); only a recipient may "
            "mark it read or unread. Pass the recipient's instance_id"
            + (f" or subscribe {me!r} to channel {row.channel!r}" if row.channel else "")
            + ".",
            param="instance_id",
            message_id=message_id,
        )
    return row


def mark_read(
    db: Database, settings: Settings, *, instance_id: str | None, message_id: int | None
) -> dict[str, Any]:
    me = _instance(settings, instance_id)
    if message_id is None:
        raise InvalidParams("mark_read needs message_id", param="message_id")
    now = utcnow()
    with db.write() as conn:
        _recipient_row(db, conn, message_id, me)
        inserted = conn.execute(
            text(
                "INSERT INTO message_reads (message_id, instance_id, read_at) "
                "VALUES (:id, :me, :now) ON CONFLICT (message_id, instance_id) DO NOTHING"
            ),
            {"id": message_id, "me": me, "now": db.backend.encode("time", now)},
        ).rowcount
        _status_read(conn, message_id)
    return {
        "success": True,
        "message_id": message_id,
        "instance_id": me,
        "already_read": inserted == 0,
    }


def _status_read(conn: Any, message_id: int) -> None:
    conn.execute(
        text("UPDATE messages SET delivery_status = 'read' WHERE id = :id"), {"id": message_id}
    )


def ack(
    db: Database, settings: Settings, *, instance_id: str | None, message_id: int | None
) -> dict[str, Any]:
    """Acknowledge a message (a recipient only): marks it read too; the sender sees it in
    action=status."""
    me = _instance(settings, instance_id)
    if message_id is None:
        raise InvalidParams("ack needs message_id", param="message_id")
    now = db.backend.encode("time", utcnow())
    with db.write() as conn:
        _recipient_row(db, conn, message_id, me)
        before = conn.execute(
            text("SELECT acked_at FROM message_reads WHERE message_id = :id AND instance_id = :me"),
            {"id": message_id, "me": me},
        ).first()
        conn.execute(
            text(
                "INSERT INTO message_reads (message_id, instance_id, read_at, acked_at) "
                "VALUES (:id, :me, :now, :now) ON CONFLICT (message_id, instance_id) "
                "DO UPDATE SET acked_at = coalesce(message_reads.acked_at, excluded.acked_at)"
            ),
            {"id": message_id, "me": me, "now": now},
        )
        _status_read(conn, message_id)
    return {
        "success": True,
        "message_id": message_id,
        "instance_id": me,
        "already_acked": before is not None and before.acked_at is not None,
    }


def _receipts(db: Database, conn: Any, row: Any) -> dict[str, Any]:
    """One message's per-recipient delivered/read/acked times."""
    people: dict[str, dict[str, Any]] = {}
    if row.to_instance not in (BROADCAST,) and not row.to_instance.startswith(CHANNEL_ONLY):
        people[row.to_instance] = {}
    for r in conn.execute(
        text(
            "SELECT instance_id, delivered_at, delivered_by FROM message_deliveries "
            "WHERE message_id = :id"
        ),
        {"id": row.id},
    ):
        people.setdefault(r.instance_id, {}).update(
            delivered_at=iso(r.delivered_at), delivered_by=r.delivered_by
        )
    for r in conn.execute(
        text("SELECT instance_id, read_at, acked_at FROM message_reads WHERE message_id = :id"),
        {"id": row.id},
    ):
        people.setdefault(r.instance_id, {}).update(
            read_at=iso(r.read_at), acked_at=iso(r.acked_at)
        )
    msg = message_dict(row)
    due = decode_time(msg["ack_due_at"])
    late = due is not None and utcnow() > due
    recipients = []
    for name in sorted(people):
        info = people[name]
        entry = {
            "instance": name,
            "delivered_at": info.get("delivered_at"),
            "delivered_by": info.get("delivered_by"),
            "read_at": info.get("read_at"),
            "acked_at": info.get("acked_at"),
        }
        if msg["ack_required"]:
            entry["overdue"] = late and entry["acked_at"] is None
        recipients.append(entry)
    return {
        "message_id": msg["id"],
        "to_instance": msg["to_instance"],
        "channel": msg["channel"],
        "subject": msg["subject"],
        "created_at": msg["created_at"],
        "thread_id": msg["thread_id"],
        "delivery_status": msg["delivery_status"],
        "ack_required": msg["ack_required"],
        "ack_due_at": msg["ack_due_at"],
        "recipients": recipients,
    }


def status(
    db: Database,
    settings: Settings,
    *,
    instance_id: str | None,
    message_id: int | None,
    thread_id: int | None,
) -> dict[str, Any]:
    """Receipts for the sender: per recipient, when it was delivered, read and acknowledged;
    for one message, or every message the caller sent in a thread."""
    me = _instance(settings, instance_id)
    if (message_id is None) == (thread_id is None):
        raise InvalidParams(
            "status needs message_id or thread_id (one of them)", param="message_id"
        )
    with db.read() as conn:
        if message_id is not None:
            rows = conn.execute(
                text(
                    f"SELECT {COLUMNS} FROM messages m WHERE m.id = :id AND m.from_instance = :me"
                ),
                {"id": message_id, "me": me},
            ).all()
            if not rows:
                raise NotFound(
                    f"message {message_id} was not sent by {me!r}; receipts are its sender's",
                    message_id=message_id,
                )
        else:
            root = _root(_visible(db, thread_id, me))
            rows = conn.execute(
                text(
                    f"SELECT {COLUMNS} FROM messages m WHERE (m.id = :root OR m.thread_id = :root)"
                    " AND m.from_instance = :me ORDER BY m.id"
                ),
                {"root": root, "me": me},
            ).all()
        return {"instance_id": me, "messages": [_receipts(db, conn, r) for r in rows]}


def thread(
    db: Database,
    settings: Settings,
    *,
    instance_id: str | None,
    message_id: int | None,
    limit: int = 50,
) -> dict[str, Any]:
    """The thread a message belongs to, oldest first: the messages of it the caller sent or
    may read."""
    me = _instance(settings, instance_id)
    if message_id is None:
        raise InvalidParams(
            "thread needs message_id (any message of the thread)", param="message_id"
        )
    root = _root(_visible(db, message_id, me))
    with db.read() as conn:
        rows = conn.execute(
            text(
                f"SELECT {COLUMNS}, r.read_at AS read_at FROM messages m "
                "LEFT JOIN message_reads r ON r.message_id = m.id AND r.instance_id = :me "
                f"WHERE (m.id = :root OR m.thread_id = :root) AND (m.from_instance = :me OR "
                f"{RECIPIENT}) AND {NOT_EXPIRED} ORDER BY m.id LIMIT :limit"
            ),
            {"root": root, "me": me, "limit": limit, "now": db.backend.encode("time", utcnow())},
        ).all()
    messages = [
        {**message_dict(r, r.read_at, with_read=True), "mine": r.from_instance == me} for r in rows
    ]
    return {"thread_id": root, "count": len(messages), "messages": messages, "instance_id": me}


def await_reply(db: Database, sent: dict[str, Any], me: str, seconds: int) -> dict[str, Any]:
    """Wait up to `seconds` for the first message in the sent message's thread from someone
    else to `me` (directly, broadcast or a channel it reads)."""
    root = sent["thread_id"] or sent["id"]
    deadline = time.monotonic() + seconds
    stmt = text(
        f"SELECT {COLUMNS} FROM messages m WHERE m.id > :id AND "
        "(m.thread_id = :root OR m.reply_to = :id) AND m.from_instance <> :me AND "
        f"{RECIPIENT} ORDER BY m.id LIMIT 1"
    )
    while True:
        with db.read() as conn:
            row = conn.execute(stmt, {"id": sent["id"], "root": root, "me": me}).first()
        if row is not None:
            return {"reply": message_dict(row), "timed_out": False}
        if time.monotonic() >= deadline:
            return {"reply": None, "timed_out": True, "waited_s": seconds}
        time.sleep(min(AWAIT_TICK, max(0.0, deadline - time.monotonic())))


def mark_unread(
    db: Database, settings: Settings, *, instance_id: str | None, message_id: int | None
) -> dict[str, Any]:
    me = _instance(settings, instance_id)
    if message_id is None:
        raise InvalidParams("mark_unread needs message_id", param="message_id")
    with db.write() as conn:
        _recipient_row(db, conn, message_id, me)
        deleted = conn.execute(
            text("DELETE FROM message_reads WHERE message_id = :id AND instance_id = :me"),
            {"id": message_id, "me": me},
        ).rowcount
    return {"success": True, "message_id": message_id, "instance_id": me, "was_read": deleted > 0}


def subscriptions(db: Database, instance_id: str | None = None) -> list[str]:
    """Channels one instance is subscribed to, or every subscribed channel (None)."""
    if instance_id is not None:
        return channels_of(db, [instance_id]).get(instance_id, [])
    with db.read() as conn:
        rows = conn.execute(text("SELECT DISTINCT channel FROM subscriptions ORDER BY channel"))
        return [r[0] for r in rows]


def channels_of(db: Database, instances: list[str]) -> dict[str, list[str]]:
    """The channels each of `instances` is subscribed to (those with none are left out), in
    one query for many instances: a bridge re-reads this for every instance it serves, and a
    query each cost a gateway of 50 agents 10 queries a second."""
    rows = watch.per_instance(
        db,
        "SELECT instance_id, channel FROM subscriptions WHERE instance_id IN :who "
        "ORDER BY instance_id, channel",
        instances,
    )
    return {who: [r.channel for r in mine] for who, mine in rows.items()}


def subscribers(db: Database, channel: str) -> list[str]:
    """Instances subscribed to a channel."""
    with db.read() as conn:
        rows = conn.execute(
            text("SELECT instance_id FROM subscriptions WHERE channel = :ch ORDER BY instance_id"),
            {"ch": channel},
        )
        return [r[0] for r in rows]


def _target(
    action: str, channel: str | None, memory_filter: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The memory filter of a subscribe / unsubscribe (None: a channel's)."""
    if channel is not None and memory_filter is not None:
        raise InvalidParams(
            f"{action} takes a channel or a memory filter (project, memory_type, keywords), "
            "not both; call it once for each",
            param="channel",
        )
    if channel is None and memory_filter is None:
        raise InvalidParams(
            f"{action} needs a channel, or a memory filter (project, memory_type and/or "
            "keywords) to be woken by new memories",
            param="channel",
        )
    return memory_filter


def subscribe(
    db: Database,
    settings: Settings,
    *,
    instance_id: str | None,
    channel: str | None,
    memory_filter: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Subscribe to a channel, or to memories matching a filter (watch.make_filter)."""
    me = _instance(settings, instance_id)
    if _target("subscribe", channel, memory_filter) is not None:
        return watch.subscribe(db, me, memory_filter)
    assert channel is not None
    channel = check_name(channel, "channel")
    with db.write() as conn:
        added = conn.execute(
            text(
                "INSERT INTO subscriptions (instance_id, channel, created_at) "
                "VALUES (:me, :ch, :now) ON CONFLICT (instance_id, channel) DO NOTHING"
            ),
            {"me": me, "ch": channel, "now": db.backend.encode("time", utcnow())},
        ).rowcount
    return {
        "success": True,
        "instance_id": me,
        "channel": channel,
        "listen": pg_channel(channel),
        "already_subscribed": added == 0,
        "subscriptions": subscriptions(db, me),
    }


def unsubscribe(
    db: Database,
    settings: Settings,
    *,
    instance_id: str | None,
    channel: str | None,
    memory_filter: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Unsubscribe from a channel, or drop the memory subscription with exactly this filter."""
    me = _instance(settings, instance_id)
    if _target("unsubscribe", channel, memory_filter) is not None:
        return watch.unsubscribe(db, me, memory_filter)
    assert channel is not None
    channel = check_name(channel, "channel")
    with db.write() as conn:
        removed = conn.execute(
            text("DELETE FROM subscriptions WHERE instance_id = :me AND channel = :ch"),
            {"me": me, "ch": channel},
        ).rowcount
        left = conn.execute(
            text("SELECT count(*) FROM subscriptions WHERE channel = :ch"), {"ch": channel}
        ).scalar_one()
    return {
        "success": True,
        "instance_id": me,
        "channel": channel,
        "was_subscribed": removed > 0,
        "subscribers_left": int(left),
        "subscriptions": subscriptions(db, me),
    }


def max_message_id(db: Database) -> int:
    with db.read() as conn:
        return int(conn.execute(text("SELECT coalesce(max(id), 0) FROM messages")).scalar_one())


def messages_since(
    db: Database, last_id: int, targets: Iterable[str], limit: int = 1000
) -> list[dict[str, Any]]:
    """Push payloads of messages with id > last_id sent to any target name, oldest first.

    A target matches like a NOTIFY channel does: to_instance == name or channel == name.
    """
    names = sorted(set(targets))
    if not names:
        return []
    stmt = text(
        f"SELECT {COLUMNS} FROM messages m WHERE m.id > :last AND {NOT_EXPIRED} AND "
        "(m.to_instance IN :names OR m.channel IN :names) ORDER BY m.id LIMIT :limit"
    ).bindparams(bindparam("names", expanding=True))
    with db.read() as conn:
        rows = conn.execute(
            stmt,
            {
                "last": last_id,
                "names": names,
                "limit": limit,
                "now": db.backend.encode("time", utcnow()),
            },
        ).all()
    return [notify_payload(message_dict(r)) for r in rows]


def retract(
    db: Database, settings: Settings, *, instance_id: str | None, message_id: int | None
) -> dict[str, Any]:
    """The sender takes back a message nobody has read yet."""
    me = _instance(settings, instance_id)
    if message_id is None:
        raise InvalidParams("retract needs message_id", param="message_id")
    with db.write() as conn:
        row = conn.execute(
            text(
                "SELECT m.from_instance, (SELECT count(*) FROM message_reads r WHERE "
                "r.message_id = m.id) AS reads FROM messages m WHERE m.id = :id"
            ),
            {"id": message_id},
        ).first()
        if row is None or row.from_instance != me:
            raise NotFound(
                f"message {message_id} was not sent by {me!r}; only its sender may retract it",
                message_id=message_id,
            )
        if row.reads:
            raise Conflict(
                f"message {message_id} was already read by {row.reads} recipient(s); "
                "send a correction instead",
                message_id=message_id,
            )
        conn.execute(text("DELETE FROM messages WHERE id = :id"), {"id": message_id})
    return {"success": True, "retracted": message_id}


def handle(
    db: Database,
    settings: Settings,
    caller: Caller,
    *,
    action: Annotated[Action, P("What to do.")],
    instance_id: Annotated[
        str | None, P("Your instance (get, mark_*, subscribe, poll, retract).")
    ] = None,
    from_instance: Annotated[str | None, P("Sender (send).")] = None,
    to_instance: Annotated[str | None, P("Recipient instance, or 'all' (send).")] = None,
    content: Annotated[str | None, P("Message body (send).")] = None,
    message_type: Annotated[
        MessageType, P("handoff, status, question, fyi, context, event or message.")
    ] = "message",
    subject: Annotated[str | None, P("Short subject (send).")] = None,
    channel: Annotated[str | None, P("Channel name (send, get, subscribe, unsubscribe).")] = None,
    priority: Annotated[int, P("0-10 (send).", minimum=0, maximum=10)] = 0,
    ttl_seconds: Annotated[
        int | None,
        P(
            "Expire the message after this many seconds (send).",
            minimum=1,
            maximum=10 * 365 * 86400,
        ),
    ] = None,
    unread_only: Annotated[bool, P("Only unread messages (get).")] = True,
    limit: Annotated[int, P("Maximum messages (get, poll).", minimum=1, maximum=500)] = 50,
    message_id: Annotated[
        int | None,
        P("Message id (mark_read, mark_unread, ack, status, thread, retract).", minimum=1),
    ] = None,
    since_id: Annotated[int, P("Only messages with a larger id (poll).", minimum=0)] = 0,
    reply_to: Annotated[
        int | None,
        P(
            "The message this answers (send): joins its thread; without to_instance the "
            "reply goes to its sender.",
            minimum=1,
        ),
    ] = None,
    thread_id: Annotated[
        int | None,
        P("A thread (any of its message ids) to post in (send) or report (status).", minimum=1),
    ] = None,
    ack_required: Annotated[
        bool, P("Recipients should acknowledge with action=ack (send).")
    ] = False,
    ack_within_s: Annotated[
        int | None,
        P(
            "Acknowledge within this many seconds (send; implies ack_required).",
            minimum=1,
            maximum=30 * 86400,
        ),
    ] = None,
    await_reply_s: Annotated[
        int | None,
        P(
            f"Wait up to this many seconds for the first reply in the thread and return it "
            f"(send; at most {AWAIT_MAX_S}).",
            minimum=1,
            maximum=AWAIT_MAX_S,
        ),
    ] = None,
    project: Project = None,
    memory_type: MemoryType = None,
    keywords: Annotated[
        list[str] | None,
        P("Memory subscription (subscribe, unsubscribe): memories with any of these keywords."),
    ] = None,
) -> dict[str, Any]:
    """Messages between agent instances. action=send (reply_to / thread_id for threads,
    ack_required / ack_within_s, await_reply_s to wait for the answer) | get | thread (a whole
    thread, oldest first) | mark_read | mark_unread | ack | status (per-recipient delivered,
    read and acked times of what you sent) | subscribe | unsubscribe | poll | retract (an
    unread message you sent). Recipients are woken by push, also after their bridge restarts.
    subscribe / unsubscribe with project, memory_type and/or keywords instead of a channel: be
    woken (memory id, subject, author; never content) when a matching memory you may read is
    stored or supersedes another."""
    if action in ("send", "retract"):
        caller.check_role("writer", f"message action={action}")
    if action == "retract":
        return retract(
            db, settings, instance_id=from_instance or instance_id, message_id=message_id
        )
    if action == "send":
        sent = send(
            db,
            settings,
            from_instance=from_instance or instance_id,
            to_instance=to_instance,
            content=content,
            subject=subject,
            message_type=message_type,
            channel=channel,
            priority=priority,
            ttl_seconds=ttl_seconds,
            reply_to=reply_to,
            thread_id=thread_id,
            ack_required=ack_required,
            ack_within_s=ack_within_s,
        )
        if await_reply_s:
            sent.update(await_reply(db, sent, sent["from_instance"], await_reply_s))
        return sent
    if action == "ack":
        return ack(db, settings, instance_id=instance_id, message_id=message_id)
    if action == "status":
        return status(
            db,
            settings,
            instance_id=from_instance or instance_id,
            message_id=message_id,
            thread_id=thread_id,
        )
    if action == "thread":
        return thread(
            db, settings, instance_id=instance_id, message_id=message_id or thread_id, limit=limit
        )
    if action == "get":
        return get(
            db,
            settings,
            instance_id=instance_id,
            unread_only=unread_only,
            channel=channel,
            message_type=message_type,
            limit=limit,
        )
    if action == "poll":
        return poll(db, settings, instance_id=instance_id, since_id=since_id, limit=limit)
    if action == "mark_read":
        return mark_read(db, settings, instance_id=instance_id, message_id=message_id)
    if action == "mark_unread":
        return mark_unread(db, settings, instance_id=instance_id, message_id=message_id)
    if action in ("subscribe", "unsubscribe"):
        act = subscribe if action == "subscribe" else unsubscribe
        return act(
            db,
            settings,
            instance_id=instance_id,
            channel=channel,
            memory_filter=watch.make_filter(project, memory_type, keywords),
        )
    raise InvalidParams(
        f"unknown action {action!r}; use one of {', '.join(ACTIONS)}", param="action"
    )
