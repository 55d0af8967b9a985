"""Memory subscriptions: an instance asks to be woken when a memory matching a filter (projects,
memory_type, keywords) is stored or supersedes another. The wake names the memory's id, subject,
projects, type and author, never its content, and only memories the subscriber may read wake it
(services/access.py: shared, its own private ones, its scopes'). Its own memories never wake it.

A stored memory is announced on the NOTIFY channel `pg_channel(FEED)` in the transaction that
stores it (PostgreSQL); the SQLite poller reads new memory ids instead. The listener then matches
the memory against the served instances' subscriptions here, and services/delivery.py records
each wake durably (`memory_deliveries`), so a restart replays what was missed and never repeats.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

from ..db.engine import Database
from ..db.filters import Filters, where
from ..db.tables import MEMORY_SUBSCRIPTIONS
from ..db.values import decode_strings, iso, utcnow
from ..errors import InvalidParams
from .access import Caller, access_for
from .names import pg_channel

#: The name whose NOTIFY channel announces stored memories. No instance or channel can have it
#: ('#' starts no name, so no message's to_instance is '##...').
FEED = "##memories"
SUBJECT_MAX = 500  # a wake names the subject, cut to this many characters
MATCH_BATCH = 500
INSTANCE_BATCH = 500  # instances per query when reading many instances' rows


def notify(db: Database, conn: Connection, memory_id: int) -> None:
    """Announce a stored memory inside the storing transaction (PostgreSQL; a no-op where the
    listener polls)."""
    db.backend.notify(conn, [pg_channel(FEED)], orjson.dumps({"memory_id": memory_id}).decode())


def make_filter(
    project: str | list[str] | None, memory_type: str | None, keywords: list[str] | None
) -> dict[str, Any] | None:
    """The canonical filter (None: no memory filter given)."""
    projects = None
    if project is not None:
        items = [project] if isinstance(project, str) else list(project)
        projects = sorted({p.strip() for p in items if isinstance(p, str) and p.strip()})
        if not projects:
            raise InvalidParams("project must name at least one project", param="project")
    words = None
    if keywords is not None:
        words = sorted({k.strip() for k in keywords if isinstance(k, str) and k.strip()})
        if not words:
            raise InvalidParams("keywords must hold at least one keyword", param="keywords")
    memory_type = memory_type.strip() if isinstance(memory_type, str) else None
    if projects is None and not memory_type and words is None:
        return None
    return {"projects": projects, "memory_type": memory_type or None, "keywords": words}


def public_filter(flt: dict[str, Any]) -> dict[str, Any]:
    """A filter as the tool's parameters name it."""
    return {
        "project": flt["projects"],
        "memory_type": flt["memory_type"],
        "keywords": flt["keywords"],
    }


def filter_key(flt: dict[str, Any]) -> str:
    return orjson.dumps(flt, option=orjson.OPT_SORT_KEYS).decode()


def _public(row: Any) -> dict[str, Any]:
    return {
        "project": decode_strings(row.projects) or None,
        "memory_type": row.memory_type,
        "keywords": decode_strings(row.keywords) or None,
        "since_memory_id": int(row.after_id),
        "created_at": iso(row.created_at),
    }


def subscriptions(db: Database, instance: str) -> list[dict[str, Any]]:
    """An instance's memory subscriptions (filters as given, plus the newest memory id when each
    was made: only later memories wake it)."""
    with db.read() as conn:
        rows = conn.execute(
            text(
                "SELECT projects, memory_type, keywords, after_id, created_at FROM "
                "memory_subscriptions WHERE instance_id = :me ORDER BY created_at, filter_key"
            ),
            {"me": instance},
        ).all()
    return [_public(r) for r in rows]


def subscribe(db: Database, instance: str, flt: dict[str, Any]) -> dict[str, Any]:
    values = {
        "instance_id": instance,
        "filter_key": filter_key(flt),
        "projects": flt["projects"],
        "memory_type": flt["memory_type"],
        "keywords": flt["keywords"],
        "after_id": 0,
        "created_at": utcnow(),
    }
    with db.write() as conn:
        values["after_id"] = int(
            conn.execute(text("SELECT coalesce(max(id), 0) FROM memories")).scalar_one()
        )
        added = conn.execute(
            text(
                db.backend.insert_sql(
                    MEMORY_SUBSCRIPTIONS,
                    values,
                    on_conflict=" ON CONFLICT (instance_id, filter_key) DO NOTHING",
                )
            ),
            db.backend.encode_row(MEMORY_SUBSCRIPTIONS, values),
        ).rowcount
    return {
        "success": True,
        "instance_id": instance,
        "memory_filter": public_filter(flt),
        "already_subscribed": added == 0,
        "memory_subscriptions": subscriptions(db, instance),
    }


def unsubscribe(db: Database, instance: str, flt: dict[str, Any]) -> dict[str, Any]:
    with db.write() as conn:
        removed = conn.execute(
            text("DELETE FROM memory_subscriptions WHERE instance_id = :me AND filter_key = :k"),
            {"me": instance, "k": filter_key(flt)},
        ).rowcount
    return {
        "success": True,
        "instance_id": instance,
        "memory_filter": public_filter(flt),
        "was_subscribed": removed > 0,
        "memory_subscriptions": subscriptions(db, instance),
    }


def watchers(db: Database, instances: list[str]) -> dict[str, list[Any]]:
    """The memory subscriptions of `instances`, by instance (rows for `matching`)."""
    return per_instance(
        db,
        "SELECT instance_id, projects, memory_type, keywords, after_id FROM memory_subscriptions "
        "WHERE instance_id IN :who ORDER BY instance_id, filter_key",
        instances,
    )


def per_instance(db: Database, select: str, instances: list[str]) -> dict[str, list[Any]]:
    """The rows of `select` (... WHERE instance_id IN :who ...) by instance_id, in one query
    per INSTANCE_BATCH instances (a bridge asks for every instance it serves); instances
    without rows are left out."""
    stmt = text(select).bindparams(bindparam("who", expanding=True))
    who = sorted(instances)
    out: dict[str, list[Any]] = {}
    with db.read() as conn:
        for start in range(0, len(who), INSTANCE_BATCH):
            for row in conn.execute(stmt, {"who": who[start : start + INSTANCE_BATCH]}):
                out.setdefault(row.instance_id, []).append(row)
    return out


def newer_ids(db: Database, after: int, limit: int = 1000) -> list[int]:
    """Memory ids above `after`, ascending (the SQLite poller's notifications)."""
    with db.read() as conn:
        return [
            int(r[0])
            for r in conn.execute(
                text("SELECT id FROM memories WHERE id > :after ORDER BY id LIMIT :limit"),
                {"after": after, "limit": limit},
            )
        ]


def max_memory_id(db: Database) -> int:
    with db.read() as conn:
        return int(conn.execute(text("SELECT coalesce(max(id), 0) FROM memories")).scalar_one())


def wake_payload(row: Any) -> dict[str, Any]:
    """What a `new_memory` event says about a memory: metadata only, never its content."""
    subject = row.subject or ""
    out = {
        "memory_id": int(row.id),
        "subject": subject[:SUBJECT_MAX],
        "projects": decode_strings(row.projects),
        "memory_type": row.memory_type,
        "author": row.instance_id,
        "visibility": row.visibility,
        "created_at": iso(row.created_at),
    }
    if len(subject) > SUBJECT_MAX:
        out["subject_truncated"] = True
    if row.supersedes is not None:
        out["supersedes"] = int(row.supersedes)
    return out


def matching(
    db: Database,
    instance: str,
    subs: list[Any],
    ids: list[int] | None = None,
    limit: int = MATCH_BATCH,
) -> list[dict[str, Any]]:
    """Wake payloads of memories that match any of `instance`'s subscriptions (made after it),
    that it may read, did not write and was not yet woken for; among `ids` when given.
    Oldest first."""
    access = access_for(db, Caller(instance))
    found: dict[int, dict[str, Any]] = {}
    for sub in subs:
        flt = Filters.make(
            project=decode_strings(sub.projects) or None,
            memory_type=sub.memory_type,
            access=access,
        )
        cond, params = where(db, flt, alias="m")
        words = decode_strings(sub.keywords)
        if words:
            cond += " AND " + db.backend.strings_any("m.keywords", words, params, "w_kw")
        params.update(me=instance, after=int(sub.after_id), limit=limit, ids=list(ids or []))
        only = " AND m.id IN :ids" if ids is not None else ""
        stmt = text(
            "SELECT m.id, m.subject, m.projects, m.memory_type, m.instance_id, m.visibility, "
            "m.created_at, (SELECT min(e.target_id) FROM memory_edges e WHERE e.source_id = m.id "
            "AND e.relation_type = 'supersedes') AS supersedes FROM memories m "
            f"WHERE m.id > :after{only} AND coalesce(m.instance_id, '') <> :me AND {cond} "
            "AND NOT EXISTS (SELECT 1 FROM memory_deliveries d WHERE d.memory_id = m.id AND "
            "d.instance_id = :me) ORDER BY m.id LIMIT :limit"
        )
        if ids is not None:
            if not ids:
                return []
            stmt = stmt.bindparams(bindparam("ids", expanding=True))
        else:
            params.pop("ids")
        with db.read() as conn:
            for row in conn.execute(stmt, params):
                found.setdefault(int(row.id), wake_payload(row))
    return [found[i] for i in sorted(found)][:limit]
