"""The memory lifecycle: update in place with a version history, history, forget (a hard
delete), unarchive, and the sweep that purges expired memories.

Each public function but `sweep` is a tool (see tools.py). Versions live in `memory_versions`:
one row per change, holding who, when and the values the change replaced.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Annotated, Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

from ..config import Settings
from ..db.engine import Database
from ..db.filters import Filters, where
from ..db.tables import MEMORIES, MEMORY_VERSIONS
from ..db.values import decode_json, decode_strings, decode_time, iso, utcnow
from ..embeddings import Embedder
from ..errors import Conflict, InvalidParams, MemoryPalaceError, NotFound
from ..params import MAX_TTL_SECONDS, ByInstance, DryRun, MemoryType, OccurredAt, P, Project
from .access import Caller, access_for, check_visibility
from .memories import (
    CARD_SQL,
    EMBEDDING_FAILED_TAG,
    check_may_change,
    check_size,
    content_hash,
    embed,
    expiry,
    fetch,
    normalise_projects,
    parse_time,
)

log = logging.getLogger("memory_palace.lifecycle")

#: The columns a version records (what memory_update and memory_unarchive may change).
TRACKED = (
    "content",
    "subject",
    "keywords",
    "tags",
    "memory_type",
    "projects",
    "foundational",
    "visibility",
    "expires_at",
    "occurred_at",
    "is_archived",
)
KINDS = MEMORIES.kinds(TRACKED)
SWEEP_LOCK = 0x6D705F7377656570  # "mp_sweep": one sweeper at a time across processes
SWEEP_EVERY_S = 300.0
CHUNK = 1000  # ids per DELETE statement
CHAIN_HOPS = 50


def _current(row: Any) -> dict[str, Any]:
    """A memory's tracked values (CARD_SQL row) as Python values."""
    out: dict[str, Any] = {}
    for name, kind in KINDS.items():
        value = getattr(row, name)
        if kind == "strings":
            value = decode_strings(value) if value is not None else None
        elif kind == "time":
            value = decode_time(value)
        elif kind == "bool":
            value = bool(value)
        out[name] = value
    return out


def _json(values: dict[str, Any]) -> dict[str, Any]:
    return {k: iso(v) if KINDS[k] == "time" else v for k, v in values.items()}


def _from_json(values: dict[str, Any]) -> dict[str, Any]:
    return {k: decode_time(v) if KINDS.get(k) == "time" else v for k, v in values.items()}


def _record_version(
    conn: Connection,
    db: Database,
    memory_id: int,
    old: dict[str, Any],
    by: str | None,
    reason: str | None,
) -> int:
    """Append a version (the values `old` a change replaces); returns its number. The caller
    holds the memory's lock, so numbers never collide."""
    last = conn.execute(
        text("SELECT max(version) FROM memory_versions WHERE memory_id = :m"), {"m": memory_id}
    ).scalar()
    version = max(int(last or 1), 1) + 1
    values = {
        "memory_id": memory_id,
        "version": version,
        "changed_at": utcnow(),
        "changed_by": by,
        "reason": reason,
        "old_values": _json(old),
    }
    conn.execute(
        text(db.backend.insert_sql(MEMORY_VERSIONS, values)),
        db.backend.encode_row(MEMORY_VERSIONS, values),
    )
    return version


def _lock_memory(conn: Connection, db: Database, memory_id: int) -> None:
    db.backend.lock(conn, 0x6D705F7570000000 + memory_id)  # "mp_up" + id


def _set_columns(conn: Connection, db: Database, memory_id: int, values: dict[str, Any]) -> None:
    kinds = MEMORIES.kinds(tuple(values))
    assignments = ", ".join(f"{c} = {db.backend.bind(kinds[c], c)}" for c in values)
    params = {c: db.backend.encode(kinds[c], v) for c, v in values.items()}
    conn.execute(
        text(f"UPDATE memories SET {assignments} WHERE id = :memory_id"),
        {**params, "memory_id": memory_id},
    )


def update(
    db: Database,
    embedder: Embedder,
    settings: Settings,
    caller: Caller,
    *,
    memory_id: Annotated[int, P("The memory to change.", minimum=1)],
    content: Annotated[str | None, P("New text (re-embedded).", min_length=1)] = None,
    subject: Annotated[str | None, P("New title; an empty string removes it.")] = None,
    keywords: Annotated[list[str] | None, P("New keywords (replace the old ones).")] = None,
    tags: Annotated[list[str] | None, P("New tags (replace the old ones).")] = None,
    memory_type: Annotated[str | None, P("New type.")] = None,
    project: Annotated[str | list[str] | None, P("New project or list of projects.")] = None,
    foundational: Annotated[bool | None, P("Mark or unmark as foundational.")] = None,
    visibility: Annotated[
        str | None, P("New visibility: shared, private or a scope of the owner.")
    ] = None,
    ttl_seconds: Annotated[
        int | None,
        P(
            "Expire this many seconds from now (0: never expire).",
            minimum=0,
            maximum=MAX_TTL_SECONDS,
        ),
    ] = None,
    expires_at: Annotated[
        str | None, P("Expire at this ISO 8601 time; an empty string: never expire.")
    ] = None,
    occurred_at: OccurredAt = None,
    reason: Annotated[str | None, P("Why; recorded in the history.")] = None,
) -> dict[str, Any]:
    """Correct a memory in place: its text, title, keywords, tags, type, projects, visibility,
    expiry or event time. Re-embeds and re-indexes at once; the old values are kept as a
    version (memory_history). Only its owner or an admin may change it."""
    row = check_may_change(db, caller, [memory_id], "memory_update")[memory_id]
    current = _current(row)
    wanted: dict[str, Any] = {}
    if content is not None:
        wanted["content"] = content
    if subject is not None:
        wanted["subject"] = subject.strip() or None
    if keywords is not None:
        wanted["keywords"] = list(keywords)
    if tags is not None:
        wanted["tags"] = list(tags)
    if memory_type is not None:
        wanted["memory_type"] = memory_type
    if project is not None:
        wanted["projects"] = normalise_projects(project)
    if foundational is not None:
        wanted["foundational"] = foundational
    if visibility is not None:
        owner = row.instance_id or "default"
        wanted["visibility"] = check_visibility(db, caller, visibility, owner)
    if ttl_seconds is not None and expires_at is not None:
        raise InvalidParams(
            "memory_update: give ttl_seconds or expires_at, not both", param="ttl_seconds"
        )
    if ttl_seconds is not None or expires_at is not None:
        never = ttl_seconds == 0 or expires_at == ""
        wanted["expires_at"] = None if never else expiry("memory_update", ttl_seconds, expires_at)
    if occurred_at is not None:
        wanted["occurred_at"] = parse_time(occurred_at, "occurred_at", "memory_update")
    changed = {k: v for k, v in wanted.items() if v != current[k]}
    if not changed:
        return {"id": memory_id, "changed": [], "note": "nothing changed: the values are the same"}
    new_content = changed.get("content", current["content"])
    new_subject = changed.get("subject", current["subject"])
    check_size(
        settings,
        "memory_update",
        content=new_content,
        subject=new_subject,
        keywords=" ".join(changed.get("keywords", current["keywords"]) or []),
    )
    out: dict[str, Any] = {"id": memory_id}
    values = dict(changed)
    if "content" in changed or "subject" in changed:
        vec, failure, note = embed(db, embedder, new_subject, new_content)
        values.update(
            content_hash=content_hash(new_content),
            embedding=vec,
            embedding_model=embedder.id if vec is not None else None,
            embedding_dim=embedder.dim if vec is not None else None,
        )
        out["embedded"] = vec is not None
        if vec is None:
            tags_now = list(changed.get("tags", current["tags"]) or [])
            if EMBEDDING_FAILED_TAG not in tags_now:
                values["tags"] = [*tags_now, EMBEDDING_FAILED_TAG]
            out["warning"] = (
                f"updated without an embedding: {failure} (tagged embedding_failed; run "
                "memory_reembed with missing_only)"
            )
        elif note:
            out.update(note)
    values["updated_at"] = utcnow()
    with db.write() as conn:
        _lock_memory(conn, db, memory_id)
        # Read again under the lock: a concurrent update may have changed the row since.
        fresh = conn.execute(
            text(f"SELECT {CARD_SQL} FROM memories WHERE id = :i"), {"i": memory_id}
        ).first()
        if fresh is None:
            raise NotFound(f"memory_update: memory {memory_id} was deleted meanwhile")
        now = _current(fresh)
        if "embedding" in values and (now["content"], now["subject"]) != (
            current["content"],
            current["subject"],
        ):
            raise Conflict(
                f"memory_update: memory {memory_id} was changed by another call meanwhile; "
                "check it with memory_get and retry"
            )
        version = _record_version(
            conn, db, memory_id, {k: now[k] for k in changed}, caller.instance, reason
        )
        _set_columns(conn, db, memory_id, values)
    out.update(version=version, changed=sorted(changed))
    return out


def history(
    db: Database,
    caller: Caller,
    *,
    memory_id: Annotated[int, P("The memory.", minimum=1)],
) -> dict[str, Any]:
    """A memory's versions (who changed what, when, and the values before) and its supersede
    chain: the memories it replaced and the ones that replaced it."""
    seen = access_for(db, caller)
    row = fetch(db, [memory_id], seen).get(memory_id)
    if row is None:
        raise NotFound(f"memory_history: memory {memory_id} does not exist; check the id")
    with db.read() as conn:
        changes = conn.execute(
            text(
                "SELECT version, changed_at, changed_by, reason, old_values FROM "
                "memory_versions WHERE memory_id = :m ORDER BY version DESC"
            ),
            {"m": memory_id},
        ).all()
    state = _current(row)
    versions: list[dict[str, Any]] = []
    for change in changes:  # newest first: undo each change to get the version before it
        old = _from_json(decode_json(change.old_values) or {})
        versions.append(
            {
                "version": int(change.version),
                "at": iso(change.changed_at),
                "by": change.changed_by,
                "reason": change.reason,
                "changed": sorted(old),
                **_json(state),
            }
        )
        state = {**state, **old}
    versions.append(
        {
            "version": 1,
            "at": iso(row.created_at),
            "by": row.instance_id,
            "reason": None,
            "changed": [],
            **_json(state),
        }
    )
    versions.reverse()
    return {
        "id": memory_id,
        "versions": versions,
        "count": len(versions),
        "replaces": _chain(db, memory_id, "source_id", "target_id", seen),
        "replaced_by": _chain(db, memory_id, "target_id", "source_id", seen),
    }


def _chain(db: Database, start: int, this: str, other: str, seen: Any) -> list[dict[str, Any]]:
    """Follow `supersedes` edges from `start` (this end) to the other end, hop by hop."""
    out: list[dict[str, Any]] = []
    visited = {start}
    frontier = [start]
    stmt = text(
        f"SELECT {this} AS here, {other} AS there FROM memory_edges "
        f"WHERE relation_type = 'supersedes' AND {this} IN :ids ORDER BY {other}"
    ).bindparams(bindparam("ids", expanding=True))
    with db.read() as conn:
        for _ in range(CHAIN_HOPS):
            if not frontier:
                break
            rows = conn.execute(stmt, {"ids": frontier}).all()
            nxt = [int(r.there) for r in rows if int(r.there) not in visited]
            visible = fetch(db, nxt, seen)
            frontier = []
            for mid in nxt:
                visited.add(mid)
                if mid in visible:
                    r = visible[mid]
                    out.append({"id": mid, "subject": r.subject, "created_at": iso(r.created_at)})
                    frontier.append(mid)
    return out


# -- forget -------------------------------------------------------------------------------


def _in(sql: str) -> Any:
    return text(sql).bindparams(bindparam("ids", expanding=True))


def purge(conn: Connection, db: Database, ids: list[int]) -> dict[str, int]:
    """Delete memories with their edges and versions (FTS rows and the SQLite vector log follow
    by trigger; PostgreSQL's indexes by MVCC), scrubbed where the backend can (see
    Backend.scrub_begin). The caller runs `db.backend.scrub_after(db)` after the commit.
    Returns the row counts removed."""
    counts = {"memories": 0, "edges": 0, "versions": 0}
    if not ids:
        return counts
    db.backend.scrub_begin(conn)
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        counts["edges"] += conn.execute(
            _in("DELETE FROM memory_edges WHERE source_id IN :ids OR target_id IN :ids"),
            {"ids": chunk},
        ).rowcount
        counts["versions"] += conn.execute(
            _in("DELETE FROM memory_versions WHERE memory_id IN :ids"), {"ids": chunk}
        ).rowcount
        counts["memories"] += conn.execute(
            _in("DELETE FROM memories WHERE id IN :ids"), {"ids": chunk}
        ).rowcount
    db.backend.scrub_end(conn)
    return counts


def _drop_cached(db: Database, ids: list[int]) -> None:
    """Forget the in-process keyword views of deleted memories (the vector index drops them
    on its next sync through the change log)."""
    gone = set(ids)
    for key, cache in list(db.cache.items()):
        if isinstance(key, tuple) and key and key[0] == "lexical":
            for entry in [e for e in cache if e[0] in gone]:
                cache.pop(entry, None)


def forget(
    db: Database,
    caller: Caller,
    *,
    memory_ids: Annotated[
        list[int] | None, P("Ids to forget (override the filters).", minimum=1)
    ] = None,
    instance_id: ByInstance = None,
    project: Project = None,
    memory_type: MemoryType = None,
    older_than_days: Annotated[
        int | None, P("Only memories stored more than this many days ago.", minimum=0)
    ] = None,
    dry_run: DryRun = True,
) -> dict[str, Any]:
    """Forget memories for good (a hard delete, for privacy requests): by ids or by filters,
    archived and expired ones included. Removes their versions, edges and index entries.
    Dry run by default. Only your own memories unless you are an admin; backups are yours."""
    seen = access_for(db, caller)
    no_filter = instance_id is None and project is None and memory_type is None
    if not memory_ids and no_filter and older_than_days is None:
        raise InvalidParams(
            "memory_forget: give memory_ids or at least one filter "
            "(instance_id, project, memory_type, older_than_days)"
        )
    base = Filters(include_archived=True, access=seen)
    if not memory_ids:
        base = Filters.make(instance_id, project, memory_type, include_archived=True, access=seen)
    base = replace(base, include_expired=True)  # expired memories are forgotten too
    cond, params = where(db, base, "m")
    if memory_ids:
        cond += " AND m.id IN :ids"
        params["ids"] = list(memory_ids)
    if older_than_days is not None:
        cond += " AND m.created_at < :cutoff"
        params["cutoff"] = db.backend.encode("time", utcnow() - timedelta(days=older_than_days))
    stmt = text(f"SELECT m.id, m.instance_id FROM memories m WHERE {cond} ORDER BY m.id")
    if memory_ids:
        stmt = stmt.bindparams(bindparam("ids", expanding=True))
    with db.read() as conn:
        rows = conn.execute(stmt, params).all()
    only_own = caller.verified and caller.role != "admin"
    ids = [int(r.id) for r in rows if not only_own or r.instance_id == caller.instance]
    others = [int(r.id) for r in rows if only_own and r.instance_id != caller.instance]
    out: dict[str, Any] = {"skipped_not_owner": others}
    if memory_ids:
        out["not_found"] = sorted(set(memory_ids) - {int(r.id) for r in rows})
    if dry_run:
        with db.read() as conn:
            edges = versions = 0
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                edges += conn.execute(
                    _in(
                        "SELECT count(*) FROM memory_edges "
                        "WHERE source_id IN :ids OR target_id IN :ids"
                    ),
                    {"ids": chunk},
                ).scalar()
                versions += conn.execute(
                    _in("SELECT count(*) FROM memory_versions WHERE memory_id IN :ids"),
                    {"ids": chunk},
                ).scalar()
        out.update(
            would_forget=len(ids),
            ids=ids[:100],
            edges=int(edges),
            versions=int(versions),
            note="dry run: nothing deleted; pass dry_run=false to forget for good",
        )
        return out
    with db.write() as conn:
        counts = purge(conn, db, ids)
    if ids:
        db.backend.scrub_after(db)
        _drop_cached(db, ids)
    out.update(
        forgotten=counts["memories"],
        ids=ids[:100],
        edges=counts["edges"],
        versions=counts["versions"],
        note="deleted for good; backups and exports made before are not touched",
    )
    return out


def unarchive(
    db: Database,
    caller: Caller,
    *,
    memory_ids: Annotated[list[int], P("Ids to restore.", minimum=1)],
) -> dict[str, Any]:
    """Restore archived memories (reverses memory_archive and supersede): they show in recall
    again. Only their owner or an admin may restore them."""
    ids = list(dict.fromkeys(memory_ids))
    if not ids:
        raise InvalidParams("memory_unarchive: memory_ids must name at least one id")
    rows = check_may_change(db, caller, ids, "memory_unarchive")
    restored: list[int] = []
    stmt = text(
        "UPDATE memories SET is_archived = :f, updated_at = :now WHERE id = :i AND is_archived"
    )
    now = db.backend.encode("time", utcnow())
    with db.write() as conn:
        for mid in [i for i in ids if rows[i].is_archived]:
            _lock_memory(conn, db, mid)
            if conn.execute(stmt, {"f": False, "now": now, "i": mid}).rowcount:
                _record_version(conn, db, mid, {"is_archived": True}, caller.instance, "unarchive")
                restored.append(mid)
    return {"unarchived": restored, "already_active": [i for i in ids if i not in restored]}


# -- expiry -------------------------------------------------------------------------------


def sweep(db: Database, now: datetime | None = None) -> int:
    """Purge expired memories (already invisible to every read). One sweeper at a time: a
    process that finds another sweeping skips. Returns how many were purged."""
    cutoff = db.backend.encode("time", now or utcnow())
    with db.write() as conn:
        if not db.backend.try_lock(conn, SWEEP_LOCK):
            return 0
        ids = [
            int(r[0])
            for r in conn.execute(
                text(
                    "SELECT id FROM memories WHERE expires_at IS NOT NULL "
                    "AND expires_at <= :now ORDER BY id"
                ),
                {"now": cutoff},
            )
        ]
        purge(conn, db, ids)
    if ids:
        db.backend.scrub_after(db)
        _drop_cached(db, ids)
        log.info("swept %d expired memories from %s", len(ids), db.masked_url)
    return len(ids)


def maybe_sweep(db: Database, every_s: float = SWEEP_EVERY_S) -> int:
    """Sweep when this process has not swept `db` for `every_s` seconds (0 on first use)."""
    clock = datetime.now().timestamp()
    last = db.cache.get("swept_at")
    if last is not None and clock - last < every_s:
        return 0
    db.cache["swept_at"] = clock
    try:
        return sweep(db)
    except MemoryPalaceError as exc:  # housekeeping must never fail the call that ran it
        log.warning("sweeping expired memories failed: %s", exc.message)
        return 0


__all__ = ["forget", "history", "maybe_sweep", "purge", "sweep", "unarchive", "update"]
