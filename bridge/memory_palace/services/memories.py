"""Memories: remember, get, recent, archive, link, unlink and stats, on either backend.

Each public function is a tool (see tools.py): its keyword-only parameters are the tool's
parameters. Dependencies (db, embedder, settings) come first and are passed in by the caller.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import numpy as np
from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

from ..config import Settings
from ..db.engine import Database
from ..db.filters import PRIVATE, SHARED, Access, Filters, where
from ..db.tables import EDGES, MEMORIES, MEMORY_CARD, column_list
from ..db.values import decode_strings, iso, utcnow
from ..embeddings import Embedder
from ..errors import (
    BackendUnavailable,
    Conflict,
    InvalidParams,
    MemoryPalaceError,
    NotFound,
    PermissionDenied,
    TransactionAborted,
)
from ..params import (
    ByInstance,
    DetailLevel,
    Direction,
    DryRun,
    ExpiresAt,
    GraphMode,
    IncludeArchived,
    MemoryType,
    OccurredAt,
    P,
    Project,
    Since,
    TtlSeconds,
    Until,
)
from . import graph, vectors, watch
from .access import Caller, access_for, check_visibility

log = logging.getLogger("memory_palace.memories")

NOBODY = None  # as viewer: nobody's private memories, shared ones (and given scopes) only

CARD_SQL = column_list(MEMORIES, MEMORY_CARD) + ", (embedding IS NOT NULL) AS embedded"
EMBEDDING_FAILED_TAG = "embedding_failed"
DEFAULT_PROJECT = "life"
LLM_NOTE = (
    "synthesis needs an LLM and none is configured (config llm_model); returning the raw results"
)
SOURCE_TYPES = ("conversation", "explicit", "inferred", "observation")
# Above this cosine two different texts are near-identical wordings: a changed fact, most
# likely (memory_audit's duplicate threshold is 0.92; auto_link's default link threshold 0.9).
CONFLICT_SIMILARITY = 0.9


def normalise_projects(project: str | list[str] | None) -> list[str]:
    if project is None:
        return [DEFAULT_PROJECT]
    items = [project] if isinstance(project, str) else list(project)
    out = list(dict.fromkeys(p.strip() for p in items if p and p.strip()))
    return out or [DEFAULT_PROJECT]


def content_hash(content: str) -> str:
    return hashlib.sha256(re.sub(r"\s+", " ", content.strip().lower()).encode()).hexdigest()


def check_size(settings: Settings, tool: str, **texts: str | None) -> None:
    """Refuse text over the configured limit, naming it (before any embedding work)."""
    limit = settings.limits.max_content_bytes
    size = sum(len(t.encode()) for t in texts.values() if t)
    if size > limit:
        names = " + ".join(k for k, v in texts.items() if v)
        raise InvalidParams(
            f"{tool}: {names} is {size} bytes; the limit is {limit} bytes (config "
            "limits.max_content_bytes). Split it into several memories, or raise the limit.",
            param=next(iter(texts)),
            size=size,
            limit=limit,
        )


def parse_time(value: str, param: str, tool: str) -> datetime:
    """An ISO 8601 time (a date alone is its midnight; no offset is UTC). Raises
    InvalidParams naming the parameter."""
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise InvalidParams(
            f"{tool}: {param} {value!r} is not an ISO 8601 time (e.g. 2026-03-14 or "
            "2026-03-14T15:09:26Z)",
            param=param,
        ) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)


def expiry(tool: str, ttl_seconds: int | None, expires_at: str | None) -> datetime | None:
    """When a memory expires: `ttl_seconds` from now, or at `expires_at` (not both)."""
    if ttl_seconds is not None and expires_at is not None:
        raise InvalidParams(
            f"{tool}: give ttl_seconds or expires_at, not both", param="ttl_seconds"
        )
    if ttl_seconds is not None:
        return utcnow() + timedelta(seconds=ttl_seconds)
    if expires_at is not None:
        return parse_time(expires_at, "expires_at", tool)
    return None


def time_bounds(
    tool: str, since: str | None, until: str | None
) -> tuple[datetime | None, datetime | None]:
    """Parsed since/until (event time bounds), checked to be in order."""
    start = parse_time(since, "since", tool) if since else None
    end = parse_time(until, "until", tool) if until else None
    if start is not None and end is not None and end <= start:
        raise InvalidParams(f"{tool}: until must be after since", param="until")
    return start, end


def document_text(subject: str | None, content: str) -> str:
    """The text a memory is embedded as."""
    return f"{subject}\n{content}" if subject else content


def memory_dict(row: Any, detail: str = "verbose") -> dict[str, Any]:
    """A result card from a row selected with CARD_SQL."""
    projects = decode_strings(row.projects)
    card = {
        "id": int(row.id),
        "subject": row.subject,
        "memory_type": row.memory_type,
        "projects": projects,
        "project": projects[0] if projects else None,
        "created_at": iso(row.created_at),
        "foundational": bool(row.foundational),
    }
    if detail == "summary":
        content = row.content or ""
        card["content"] = content if len(content) <= 200 else content[:197] + "..."
        return card
    card.update(
        content=row.content,
        instance_id=row.instance_id,
        keywords=decode_strings(row.keywords),
        tags=decode_strings(row.tags),
        source_type=row.source_type,
        source_context=row.source_context,
        source_session_id=row.source_session_id,
        updated_at=iso(row.updated_at),
        last_accessed_at=iso(row.last_accessed_at),
        access_count=int(row.access_count or 0),
        is_archived=bool(row.is_archived),
        visibility=row.visibility,
        occurred_at=iso(row.occurred_at),
        expires_at=iso(row.expires_at),
        embedded=bool(row.embedded),
        embedding_model=row.embedding_model,
    )
    return card


def bound_reply(memories: list[dict[str, Any]], limit: int) -> bool:
    """Cut contents so the cards' text stays under `limit` bytes (a reply must fit in a line
    the caller can read). Cut cards say `content_truncated`; returns True if any was cut."""
    used, cut = 0, False
    for card in memories:
        content = card.get("content") or ""
        size = len(content.encode())
        if used + size > limit:
            keep = max(0, limit - used)
            card["content"] = content.encode()[:keep].decode(errors="ignore") + "…"
            card["content_truncated"] = True
            cut = True
        used += min(size, max(0, limit - used))
    return cut


def fetch(db: Database, ids: list[int], access: Access | None = None) -> dict[int, Any]:
    """Rows (CARD_SQL columns) by id; missing ids, and ids `access` may not see, are absent."""
    if not ids:
        return {}
    cond, params = where(db, Filters(include_archived=True, access=access))
    stmt = text(f"SELECT {CARD_SQL} FROM memories WHERE id IN :ids AND {cond}").bindparams(
        bindparam("ids", expanding=True)
    )
    with db.read() as conn:
        return {int(r.id): r for r in conn.execute(stmt, {**params, "ids": list(ids)})}


def touch(
    db: Database,
    ids: list[int],
    columns: str = "id, access_count, last_accessed_at",
    access: Access | None = None,
) -> dict[int, Any]:
    """Count an access of the ids `access` may see, atomically in SQL, so concurrent reads
    are all counted. Returns {id: row of `columns`} as written (no second read needed)."""
    if not ids:
        return {}
    cond, params = where(db, Filters(include_archived=True, access=access))
    stmt = text(
        "UPDATE memories SET access_count = access_count + 1, last_accessed_at = :now "
        f"WHERE id IN :ids AND {cond} RETURNING {columns}"
    ).bindparams(bindparam("ids", expanding=True))
    now = db.backend.encode("time", utcnow())
    with db.write() as conn:
        db.backend.lock_rows(conn, "memories", ids)  # in id order: hot rows cannot deadlock
        rows = conn.execute(stmt, {**params, "now": now, "ids": list(ids)})
        return {int(r.id): r for r in rows}


def archive_rows(conn: Connection, db: Database, ids: list[int], note: str) -> None:
    if not ids:
        return
    stmt = text(
        "UPDATE memories SET is_archived = :t, updated_at = :now, source_context = "
        "coalesce(source_context, '') || :note WHERE id IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    db.backend.lock_rows(conn, "memories", ids)
    conn.execute(
        stmt,
        {"t": True, "now": db.backend.encode("time", utcnow()), "note": note, "ids": list(ids)},
    )


def insert_edge(
    conn: Connection,
    db: Database,
    source: int,
    target: int,
    relation: str,
    strength: float = 1.0,
    bidirectional: bool = False,
    metadata: Any = None,
    created_by: str | None = None,
    auto_linked: bool = False,
) -> int | None:
    """Insert an edge; returns its id, or None when the same edge already exists."""
    values = {
        "created_at": utcnow(),
        "source_id": source,
        "target_id": target,
        "relation_type": relation,
        "strength": max(0.0, min(1.0, float(strength))),
        "bidirectional": bidirectional,
        "metadata": metadata,
        "created_by": created_by,
        "auto_linked": auto_linked,
    }
    sql = db.backend.insert_sql(
        EDGES,
        values,
        returning="id",
        on_conflict=" ON CONFLICT (source_id, target_id, relation_type) DO NOTHING",
    )
    row = conn.execute(text(sql), db.backend.encode_row(EDGES, values)).first()
    return int(row[0]) if row else None


# -- remember -----------------------------------------------------------------------------


@dataclass
class _Draft:
    """A memory on its way in: the row values, and what the caller is told about it."""

    values: dict[str, Any]
    vector: np.ndarray | None
    result: dict[str, Any]


def _find_duplicate(
    conn: Connection,
    digest: str,
    memory_type: str,
    projects: list[str],
    visibility: str,
    owner: str,
    now: Any,
) -> Any | None:
    """An identical live memory in the same scope: same content, type, projects and
    visibility (and owner, for private ones, so nobody learns of another's private memory)."""
    rows = conn.execute(
        text(
            "SELECT id, subject, projects, instance_id, (embedding IS NOT NULL) AS embedded "
            "FROM memories WHERE content_hash = :h AND memory_type = :t AND is_archived = :f "
            "AND visibility = :v AND (expires_at IS NULL OR expires_at > :now)"
        ),
        {"h": digest, "t": memory_type, "f": False, "v": visibility, "now": now},
    ).all()
    want = sorted(projects)
    return next(
        (
            r
            for r in rows
            if sorted(decode_strings(r.projects)) == want
            and (visibility != PRIVATE or r.instance_id == owner)
        ),
        None,
    )


def embed(
    db: Database, embedder: Embedder, subject: str | None, content: str
) -> tuple[np.ndarray | None, str | None, dict[str, Any]]:
    """(vector, None, note) or (None, why, {}): a failing embedder never loses the memory.
    `note` says when only the first tokens were embedded."""
    try:
        vectors.check_embedder(db, embedder)
        vec = embedder.embed_documents([document_text(subject, content)])[0]
    except MemoryPalaceError as exc:
        return None, exc.message, {}
    except Exception as exc:  # an embedder bug must not lose the memory either
        log.exception("embedding failed")
        return None, str(exc), {}
    tokens = embedder.token_limit(document_text(subject, content))
    if tokens is None:
        return vec, None, {}
    return (
        vec,
        None,
        {
            "embedded_tokens": tokens,
            "note": f"only the first {tokens} tokens are in the vector (the embedder's "
            "limit); keyword search covers the whole text",
        },
    )


def _conflicts(
    db: Database,
    embedder: Embedder,
    vec: np.ndarray | None,
    subject: str | None,
    digest: str,
    projects: list[str],
    reach: Access,
) -> list[dict[str, Any]]:
    """Live memories in the same projects, visible to everyone who will see the new one, with
    the same subject or a near-identical text (cosine >= CONFLICT_SIMILARITY) but other
    content: most similar first, same-subject ones before the others."""
    scope = Filters.make(project=projects, access=reach)
    found: dict[int, dict[str, Any]] = {}
    if subject and subject.strip():
        cond, params = where(db, scope)
        with db.read() as conn:
            for r in conn.execute(
                text(
                    f"SELECT id FROM memories WHERE {cond} AND lower(subject) = lower(:c_subject) "
                    "AND (content_hash IS NULL OR content_hash <> :c_hash) ORDER BY id DESC LIMIT 5"
                ),
                {**params, "c_subject": subject.strip(), "c_hash": digest},
            ):
                found[int(r.id)] = {"id": int(r.id), "reason": "same subject"}
    sims: dict[int, float] = {}
    if vec is not None:
        hits = vectors.search(db, embedder, vec, 5, scope)
        sims = dict(hits)
        for mid, sim in hits:
            if sim >= CONFLICT_SIMILARITY and mid not in found:
                found[mid] = {"id": mid, "reason": "similar text"}
        sims.update(vectors.similarities(db, embedder, vec, [i for i in found if i not in sims]))
    rows = fetch(db, list(found), reach)
    out = []
    for mid, item in found.items():
        r = rows.get(mid)
        if r is None or content_hash(r.content) == digest:
            continue
        content = r.content or ""
        item.update(
            subject=r.subject,
            content=content if len(content) <= 200 else content[:197] + "...",
            instance_id=r.instance_id,
        )
        if mid in sims:
            item["similarity"] = round(sims[mid], 4)
        out.append(item)
    out.sort(key=lambda c: (c["reason"] != "same subject", -c.get("similarity", 0.0), -c["id"]))
    return out


def _first_changeable(db: Database, caller: Caller, conflicts: list[dict[str, Any]]) -> int | None:
    """The first conflicting memory the caller may replace (its own, or any for an admin)."""
    for c in conflicts:
        if c["instance_id"] == caller.instance or caller.role == "admin" or not caller.verified:
            return int(c["id"])
    return None


def _link_access(visibility: str, mine: Access) -> Access:
    """Which neighbours a new memory may link to: only ones everybody who sees it may see, so
    an edge never reveals a private or other-scope memory (a private one sees the owner's)."""
    if visibility == PRIVATE:
        return mine
    return Access(NOBODY, () if visibility == SHARED else (visibility,))


def _neighbours(
    db: Database,
    embedder: Embedder,
    settings: Settings,
    vec: np.ndarray,
    projects: list[str],
    exclude: int | None,
    access: Access,
) -> list[tuple[int, float]]:
    cfg = settings.auto_link
    scope = Filters.make(project=projects if cfg.same_project_only else None, access=access)
    k = cfg.max_suggestions + 10
    return [(i, s) for i, s in vectors.search(db, embedder, vec, k, scope) if i != exclude]


def _auto_link(
    conn: Connection,
    db: Database,
    settings: Settings,
    new_id: int,
    neighbours: list[tuple[int, float]],
    subjects: dict[int, str | None],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Edges to near neighbours (>= link_threshold) and suggestions for the next band."""
    cfg = settings.auto_link
    link_at, suggest_at, most = cfg.link_threshold, cfg.suggest_threshold, cfg.max_suggestions
    links: list[dict[str, Any]] = []
    suggestions: list[dict[str, Any]] = []
    for target, sim in neighbours:
        if sim >= link_at:
            if insert_edge(
                conn,
                db,
                new_id,
                target,
                "relates_to",
                sim,
                bidirectional=True,
                metadata={"auto_linked": True, "method": "ann"},
                created_by="auto_link",
                auto_linked=True,
            ):
                links.append(
                    {
                        "target": target,
                        "target_subject": subjects.get(target),
                        "type": "relates_to",
                        "score": round(sim, 4),
                    }
                )
        elif sim >= suggest_at and len(suggestions) < most:
            suggestions.append(
                {"target": target, "target_subject": subjects.get(target), "score": round(sim, 4)}
            )
    return links, suggestions


def _insert_memory(conn: Connection, db: Database, draft: _Draft) -> int:
    sql = db.backend.insert_sql(MEMORIES, draft.values, returning="id")
    return int(conn.execute(text(sql), db.backend.encode_row(MEMORIES, draft.values)).scalar())


def _supersede(conn: Connection, db: Database, new_id: int, old_id: int, by: str) -> None:
    insert_edge(
        conn,
        db,
        new_id,
        old_id,
        "supersedes",
        1.0,
        metadata={"superseded_at": iso(utcnow())},
        created_by=by,
    )
    archive_rows(conn, db, [old_id], f" [SUPERSEDED by #{new_id}]")


def check_may_change(db: Database, caller: Caller, ids: list[int], what: str) -> dict[int, Any]:
    """The rows of `ids` the caller may change: visible to it, and its own unless it is an
    admin (others' shared memories). Raises NotFound for an id it cannot see."""
    rows = fetch(db, ids, access_for(db, caller))
    for mid in ids:
        if mid not in rows:
            raise NotFound(f"{what}: memory {mid} does not exist; check the id with memory_get")
        owner = rows[mid].instance_id
        if owner != caller.instance and caller.role != "admin" and caller.verified:
            raise PermissionDenied(
                f"{what}: memory {mid} belongs to {owner!r}; you are {caller.describe()}. "
                "Only its owner or an admin may change it.",
                memory_id=mid,
            )
    return rows


def remember(
    db: Database,
    embedder: Embedder,
    settings: Settings,
    caller: Caller,
    *,
    content: Annotated[str, P("The memory text.", min_length=1)],
    memory_type: Annotated[
        str,
        P("Open vocabulary: fact, decision, preference, event, insight, gotcha, architecture, ..."),
    ] = "fact",
    subject: Annotated[str | None, P("Short title.")] = None,
    instance_id: Annotated[
        str | None, P("Agent instance id, e.g. 'prime'. Defaults to MEMORY_PALACE_INSTANCE_ID.")
    ] = None,
    keywords: Annotated[list[str] | None, P("Keywords for exact search.")] = None,
    tags: Annotated[list[str] | None, P("Free tags.")] = None,
    foundational: Annotated[bool, P("Core memory: never archived, never stale.")] = False,
    project: Annotated[str | list[str], P("Project or list of projects.")] = DEFAULT_PROJECT,
    source_type: Annotated[
        Literal["conversation", "explicit", "inferred", "observation"], P("Where it came from.")
    ] = "explicit",
    source_context: Annotated[str | None, P("Free text about the source.")] = None,
    source_session_id: Annotated[str | None, P("Session the memory came from.")] = None,
    supersedes_id: Annotated[
        int | None, P("Id of a memory this one replaces; it is archived.", minimum=1)
    ] = None,
    visibility: Annotated[
        str | None,
        P(
            "Who may read it: shared (every instance), private (yours only) or a scope name "
            "(its members). Default: config default_visibility (shared)."
        ),
    ] = None,
    auto_link: Annotated[
        bool | None, P("Link to similar memories (default: config auto_link.enabled).")
    ] = None,
    ttl_seconds: TtlSeconds = None,
    expires_at: ExpiresAt = None,
    occurred_at: OccurredAt = None,
    on_conflict: Annotated[
        Literal["report", "supersede"],
        P(
            "report (default): list possible_conflicts (same subject, or near-identical text "
            "saying something else); supersede: replace the closest one you may change."
        ),
    ] = "report",
) -> dict[str, Any]:
    """Remember something: store a memory (fact, decision, preference, event, ...) with its
    embedding. Exact duplicates return the existing id. Similar memories are linked; ones
    that may contradict it are listed as possible_conflicts."""
    check_size(
        settings, "memory_set", content=content, subject=subject, keywords=" ".join(keywords or [])
    )
    projects = normalise_projects(project)
    instance = caller.instance or "default"
    seen_by = check_visibility(db, caller, visibility or settings.default_visibility, instance)
    expires = expiry("memory_set", ttl_seconds, expires_at)
    occurred = parse_time(occurred_at, "occurred_at", "memory_set") if occurred_at else None
    digest = content_hash(content)
    now = utcnow()
    stamp = db.backend.encode("time", now)
    with db.read() as conn:
        dup = _find_duplicate(conn, digest, memory_type, projects, seen_by, instance, stamp)
    if dup is not None:
        return _duplicate_result(dup)
    vec, failure, note = embed(db, embedder, subject, content)
    result: dict[str, Any] = dict(note)
    tags = list(tags or [])
    if vec is None:
        tags.append(EMBEDDING_FAILED_TAG)
        result["warning"] = (
            f"stored without an embedding: {failure} (tagged embedding_failed;"
            " run memory_reembed with missing_only)"
        )
    reach = _link_access(seen_by, access_for(db, caller))
    conflicts = _conflicts(db, embedder, vec, subject, digest, projects, reach)
    supersedes_id = _settle_conflicts(db, caller, conflicts, on_conflict, supersedes_id, result)
    do_link = settings.auto_link.enabled if auto_link is None else auto_link
    neighbours = (
        _neighbours(db, embedder, settings, vec, projects, supersedes_id, reach)
        if vec is not None and do_link
        else []
    )
    subjects = {i: r.subject for i, r in fetch(db, [i for i, _ in neighbours], reach).items()}
    if not caller.verified and instance not in settings.instances:  # a typo, perhaps
        result["instance_warning"] = (
            f"instance {instance!r} is not in config 'instances' ({', '.join(settings.instances)})"
        )
    draft = _Draft(
        {
            "created_at": now,
            "updated_at": now,
            "instance_id": instance,
            "projects": projects,
            "memory_type": memory_type,
            "subject": subject,
            "content": content,
            "content_hash": digest,
            "keywords": keywords,
            "tags": tags,
            "foundational": foundational,
            "source_type": source_type,
            "source_context": source_context,
            "source_session_id": source_session_id,
            "embedding": vec,
            "embedding_model": embedder.id if vec is not None else None,
            "embedding_dim": embedder.dim if vec is not None else None,
            "visibility": seen_by,
            "expires_at": expires,
            "occurred_at": occurred,
        },
        vec,
        result,
    )
    with db.write() as conn:
        # Checked again under a lock on this content, so concurrent writers store it once.
        db.backend.lock(conn, int(digest[:15], 16))
        dup = _find_duplicate(conn, digest, memory_type, projects, seen_by, instance, stamp)
        if dup is not None:
            return _duplicate_result(dup)
        new_id = _insert_memory(conn, db, draft)
        if supersedes_id is not None:
            _supersede(conn, db, new_id, supersedes_id, instance)
            result["superseded"] = supersedes_id
        watch.notify(db, conn, new_id)  # memory subscribers are woken once this commits
        links, suggestions = _auto_link(conn, db, settings, new_id, neighbours, subjects)
    return _stored(draft, new_id, links, suggestions)


def _settle_conflicts(
    db: Database,
    caller: Caller,
    conflicts: list[dict[str, Any]],
    on_conflict: str,
    supersedes_id: int | None,
    result: dict[str, Any],
) -> int | None:
    """The memory a new one replaces (given, or with on_conflict=supersede the first conflict
    the caller may change); the other conflicts are reported in `result`."""
    if conflicts and on_conflict == "supersede" and supersedes_id is None:
        supersedes_id = _first_changeable(db, caller, conflicts)
    if supersedes_id is not None:
        check_may_change(db, caller, [supersedes_id], "supersedes_id")
    conflicts = [c for c in conflicts if c["id"] != supersedes_id]
    if conflicts:
        result["possible_conflicts"] = conflicts
        result["conflict_note"] = (
            "existing memories say something else about the same thing; if this one replaces "
            "one, call memory_set with supersedes_id (or on_conflict='supersede'), or "
            "memory_update the old one"
        )
    return supersedes_id


def _stored(
    draft: _Draft,
    new_id: int,
    links: list[dict[str, Any]],
    suggestions: list[dict[str, Any]],
) -> dict[str, Any]:
    """What memory_set tells the caller about a memory it stored."""
    row, result = draft.values, draft.result
    result.update(
        id=new_id,
        subject=row["subject"],
        embedded=draft.vector is not None,
        visibility=row["visibility"],
    )
    if row["expires_at"] is not None:
        result["expires_at"] = iso(row["expires_at"])
    if links:
        result["links_created"] = links
    if suggestions:
        result["suggested_links"] = suggestions
    return result


def _duplicate_result(dup: Any) -> dict[str, Any]:
    return {
        "id": int(dup.id),
        "subject": dup.subject,
        "embedded": bool(dup.embedded),
        "duplicate_of": int(dup.id),
        "note": "an identical memory (same content, project and type) exists; nothing was written",
    }


# -- reads --------------------------------------------------------------------------------


def get(
    db: Database,
    settings: Settings,
    caller: Caller,
    *,
    memory_ids: Annotated[int | list[int], P("A memory id or a list of ids.", minimum=1)],
    detail_level: DetailLevel = "verbose",
    synthesize: Annotated[bool, P("Summarise several memories with the configured LLM.")] = False,
    include_graph: Annotated[bool, P("Add graph context.")] = True,
    graph_depth: Annotated[int, P("Graph hops for context (0-5).", minimum=0, maximum=5)] = 1,
    graph_mode: GraphMode = "summary",
    traverse: Annotated[
        bool, P("Return a breadth-first traversal instead of graph context.")
    ] = False,
    max_depth: Annotated[int, P("Traversal depth (1-5).", minimum=1, maximum=5)] = 3,
    direction: Direction = "both",
    relation_types: Annotated[list[str] | None, P("Only follow these edge types.")] = None,
    min_strength: Annotated[
        float | None, P("Only follow edges at least this strong (0-1).", minimum=0, maximum=1)
    ] = None,
) -> dict[str, Any]:
    """Fetch memories by id (one id or a list), with graph context or a graph traversal."""
    single = isinstance(memory_ids, int)
    ids = [memory_ids] if single else list(dict.fromkeys(memory_ids))
    if not ids:
        raise InvalidParams("memory_get: memory_ids must name at least one id")
    seen = access_for(db, caller)
    try:  # counts the access and reads the rows at once; what the caller may not see is absent
        rows = touch(db, ids, CARD_SQL, seen)
    except TransactionAborted:
        raise  # nothing was counted: Palace.call runs the call again
    except (BackendUnavailable, PermissionDenied) as exc:  # counting is best-effort: read on
        log.warning("memory_get: access not counted (%s)", exc.message)
        rows = fetch(db, ids, seen)
    found = [i for i in ids if i in rows]
    if single and not found:
        raise NotFound(
            f"memory {memory_ids} does not exist; find ids with memory_recall or memory_recent"
        )
    out: dict[str, Any]
    if single:
        out = {"memory": memory_dict(rows[found[0]], detail_level)}
    else:
        out = {"memories": [memory_dict(rows[i], detail_level) for i in found], "count": len(found)}
        if bound_reply(out["memories"], settings.limits.max_reply_bytes):
            out["truncated"] = True
        missing = [i for i in ids if i not in rows]
        if missing:
            out["not_found"] = missing
    with db.read():  # the graph reads below share one pooled connection
        if traverse:
            walks = {
                i: graph.traverse(db, i, max_depth, direction, relation_types, min_strength, seen)
                for i in found
            }
            if single:
                out["traversal"] = walks[found[0]]
            else:
                out["traversals"] = {str(i): w for i, w in walks.items()}
        elif include_graph and graph_depth > 0:
            ctx = graph.context(
                db, found, graph_depth, graph_mode, direction, relation_types, min_strength, seen
            )
            if ctx:
                out["graph_context"] = ctx
    if synthesize and len(found) > 1:
        out["note"] = LLM_NOTE
    return out


def recent(
    db: Database,
    settings: Settings,
    caller: Caller,
    *,
    limit: Annotated[int, P("How many (at most 200).", minimum=1, maximum=200)] = 20,
    verbose: Annotated[bool, P("Full memories instead of title cards.")] = False,
    project: Project = None,
    memory_type: MemoryType = None,
    instance_id: ByInstance = None,
    include_archived: IncludeArchived = False,
    since: Since = None,
    until: Until = None,
) -> dict[str, Any]:
    """List the newest memories as title cards."""
    start, end = time_bounds("memory_recent", since, until)
    with db.read() as conn:  # the access scopes too: one checkout
        cond, params = where(
            db,
            Filters.make(
                instance_id,
                project,
                memory_type,
                include_archived=include_archived,
                access=access_for(db, caller),
                since=start,
                until=end,
            ),
        )
        total = conn.execute(text(f"SELECT count(*) FROM memories WHERE {cond}"), params).scalar()
        rows = conn.execute(
            text(
                f"SELECT {CARD_SQL} FROM memories WHERE {cond} "
                "ORDER BY created_at DESC, id DESC LIMIT :limit"
            ),
            {**params, "limit": limit},
        ).all()
    detail = "verbose" if verbose else "summary"
    out = {
        "memories": [memory_dict(r, detail) for r in rows],
        "count": len(rows),
        "total_available": int(total),
    }
    if bound_reply(out["memories"], settings.limits.max_reply_bytes):
        out["truncated"] = True
    return out


IN_DEGREE_SQL = (
    "SELECT target_id, count(*) AS indeg FROM memory_edges "
    "WHERE auto_linked = :auto_false GROUP BY target_id"
)
"""Deliberate in-degree per memory: auto-links don't count toward centrality."""


# -- archive, link, unlink ----------------------------------------------------------------


def _archive_candidates(
    db: Database,
    caller: Caller,
    memory_ids: list[int] | None,
    older_than_days: int | None,
    max_access_count: int | None,
    memory_type: str | None,
    project: str | list[str] | None,
) -> list[Any]:
    seen = access_for(db, caller)
    if memory_ids:
        cond, params = where(db, Filters(access=seen), "m")
        cond += " AND m.id IN :ids"
        params["ids"] = list(memory_ids)
    else:
        if (
            older_than_days is None
            and max_access_count is None
            and not memory_type
            and project is None
        ):
            raise InvalidParams(
                "memory_archive: give memory_ids or at least one filter "
                "(older_than_days, max_access_count, memory_type, project)"
            )
        cond, params = where(
            db, Filters.make(project=project, memory_type=memory_type, access=seen), "m"
        )
        if older_than_days is not None:
            cond += " AND m.created_at < :cutoff"
            params["cutoff"] = db.backend.encode("time", utcnow() - timedelta(days=older_than_days))
        if max_access_count is not None:
            cond += " AND m.access_count <= :max_acc"
            params["max_acc"] = max_access_count
    params["auto_false"] = False
    stmt = text(
        f"SELECT m.id, m.subject, m.foundational, m.instance_id, coalesce(d.indeg, 0) AS indeg "
        f"FROM memories m LEFT JOIN ({IN_DEGREE_SQL}) d ON d.target_id = m.id "
        f"WHERE {cond} ORDER BY m.id"
    )
    if memory_ids:
        stmt = stmt.bindparams(bindparam("ids", expanding=True))
    with db.read() as conn:
        return list(conn.execute(stmt, params))


def archive(
    db: Database,
    caller: Caller,
    *,
    memory_ids: Annotated[
        list[int] | None, P("Ids to archive (override the filters).", minimum=1)
    ] = None,
    older_than_days: Annotated[
        int | None, P("Only memories older than this.", minimum=0, maximum=36500)
    ] = None,
    max_access_count: Annotated[
        int | None, P("Only memories accessed at most this often.", minimum=0)
    ] = None,
    memory_type: MemoryType = None,
    project: Project = None,
    centrality_protection: Annotated[bool, P("Skip memories with many incoming links.")] = True,
    min_centrality_threshold: Annotated[
        int, P("Incoming links that protect a memory.", minimum=1)
    ] = 5,
    dry_run: DryRun = True,
    reason: Annotated[str | None, P("Why; recorded on each archived memory.")] = None,
) -> dict[str, Any]:
    """Archive (soft-delete) memories by id or by filters. Dry run by default. Foundational
    memories are never archived; central ones are protected."""
    rows = _archive_candidates(
        db, caller, memory_ids, older_than_days, max_access_count, memory_type, project
    )
    others_need_admin = caller.verified and caller.role != "admin"
    chosen: list[int] = []
    skipped_foundational: list[int] = []
    skipped_central: list[int] = []
    skipped_owner: list[int] = []
    details: list[dict[str, Any]] = []
    for r in rows:
        entry: dict[str, Any] = {"id": int(r.id), "subject": r.subject, "in_degree": int(r.indeg)}
        if others_need_admin and r.instance_id != caller.instance:
            skipped_owner.append(int(r.id))  # another instance's shared memory: admins only
        elif r.foundational:
            skipped_foundational.append(int(r.id))
        elif centrality_protection and r.indeg >= min_centrality_threshold:
            skipped_central.append(int(r.id))
        else:
            if r.indeg >= 3:
                entry["warning"] = f"{int(r.indeg)} memories link here"
            chosen.append(int(r.id))
            details.append(entry)
    out: dict[str, Any] = {
        "skipped_foundational": skipped_foundational,
        "skipped_centrality": skipped_central,
        "skipped_not_owner": skipped_owner,
        "warning_count": sum(1 for d in details if "warning" in d),
        "details": details,
    }
    if memory_ids:
        out["not_found_or_archived"] = sorted(set(memory_ids) - {int(r.id) for r in rows})
    if dry_run:
        out["would_archive"] = len(chosen)
        out["note"] = "dry run: nothing changed; pass dry_run=false to archive"
        return out
    with db.write() as conn:
        archive_rows(conn, db, chosen, f" [ARCHIVED: {reason or 'manual'}]")
    out["archived_count"] = len(chosen)
    out["note"] = "archived memories are hidden from recall; include_archived=true shows them"
    return out


def link(
    db: Database,
    caller: Caller,
    *,
    source_id: Annotated[int, P("Source memory id.", minimum=1)],
    target_id: Annotated[int, P("Target memory id.", minimum=1)],
    relation_type: Annotated[str, P("Edge type.", min_length=1)],
    strength: Annotated[float, P("0-1 (clamped).")] = 1.0,
    bidirectional: Annotated[bool, P("The edge holds both ways.")] = False,
    metadata: Annotated[dict[str, Any] | None, P("Free JSON metadata.")] = None,
    created_by: Annotated[str | None, P("Who made the edge.")] = None,
    archive_old: Annotated[bool, P("With supersedes: archive the target.")] = False,
) -> dict[str, Any]:
    """Create a typed edge between two memories (supersedes, relates_to, derived_from,
    contradicts, exemplifies, refines, or a custom type)."""
    if source_id == target_id:
        raise InvalidParams("memory_link: a memory cannot link to itself")
    found = fetch(db, [source_id, target_id], access_for(db, caller))
    for mid in (source_id, target_id):
        if mid not in found:
            raise NotFound(f"memory {mid} does not exist; check the id with memory_get")
    if archive_old and relation_type == "supersedes":
        check_may_change(db, caller, [target_id], "memory_link archive_old")
    with db.write() as conn:
        edge_id = insert_edge(
            conn,
            db,
            source_id,
            target_id,
            relation_type,
            strength,
            bidirectional,
            metadata,
            created_by or caller.instance,
        )
        if edge_id is None:
            existing = conn.execute(
                text(
                    "SELECT id FROM memory_edges WHERE source_id = :s AND target_id = :t AND "
                    "relation_type = :r"
                ),
                {"s": source_id, "t": target_id, "r": relation_type},
            ).scalar()
            raise Conflict(
                f"edge {source_id} -[{relation_type}]-> {target_id} already exists "
                f"(id {existing}); unlink it first to change it",
                existing_edge_id=int(existing),
            )
        out: dict[str, Any] = {
            "id": edge_id,
            "relation_type": relation_type,
            "bidirectional": bidirectional,
            "message": f"linked {source_id} -[{relation_type}]-> {target_id}",
        }
        if archive_old and relation_type == "supersedes":
            archive_rows(conn, db, [target_id], f" [SUPERSEDED by #{source_id}]")
            out["old_memory_archived"] = True
    return out


def unlink(
    db: Database,
    caller: Caller,
    *,
    source_id: Annotated[int, P("Source memory id.", minimum=1)],
    target_id: Annotated[int, P("Target memory id.", minimum=1)],
    relation_type: Annotated[str | None, P("Only this type; omit for all.")] = None,
) -> dict[str, Any]:
    """Remove edges from source to target (all types, or one)."""
    found = fetch(db, [source_id, target_id], access_for(db, caller))
    for mid in (source_id, target_id):
        if mid not in found:
            raise NotFound(f"memory {mid} does not exist; check the id with memory_get")
    sql = "DELETE FROM memory_edges WHERE source_id = :s AND target_id = :t"
    params: dict[str, Any] = {"s": source_id, "t": target_id}
    if relation_type:
        sql += " AND relation_type = :r"
        params["r"] = relation_type
    with db.write() as conn:
        removed = conn.execute(text(sql), params).rowcount
    return {
        "removed": int(removed),
        "message": f"removed {removed} edge(s) from {source_id} to {target_id}",
    }


def stats(db: Database, caller: Caller) -> dict[str, Any]:
    """Counts by type, instance and project, the most accessed and the newest memories."""
    source, element = db.backend.strings_elements("memories", "projects", "p")
    # Only what the caller may see is counted: another instance's private memories do not
    # show, not even as a number.
    everything = Filters(include_archived=True, access=access_for(db, caller))
    seen, params = where(db, everything)
    s_seen, _ = where(db, everything, "s")
    t_seen, _ = where(db, everything, "t")
    live = f"{seen} AND is_archived = :f"
    params["f"] = False
    with db.read() as conn:
        c = conn.execute(
            text(
                "SELECT count(*) AS total, "
                "coalesce(sum(CASE WHEN is_archived THEN 0 ELSE 1 END), 0) AS active, "
                "coalesce(sum(CASE WHEN is_archived THEN 1 ELSE 0 END), 0) AS archived, "
                "coalesce(sum(CASE WHEN foundational AND NOT is_archived THEN 1 ELSE 0 END), 0) "
                "AS foundational, "
                "coalesce(sum(CASE WHEN embedding IS NOT NULL THEN 1 ELSE 0 END), 0) AS embedded "
                f"FROM memories WHERE {seen}"
            ),
            params,
        ).one()

        def rows(sql: str) -> list[Any]:
            return list(conn.execute(text(sql), params))

        def counts(sql: str) -> dict[str, int]:
            return {k: int(v) for k, v in rows(sql)}

        by_type = counts(
            f"SELECT coalesce(memory_type, '?'), count(*) FROM memories "
            f"WHERE {live} GROUP BY 1 ORDER BY 2 DESC"
        )
        by_instance = counts(
            f"SELECT coalesce(instance_id, '?'), count(*) FROM memories "
            f"WHERE {live} GROUP BY 1 ORDER BY 2 DESC"
        )
        by_project = counts(
            f"SELECT {element}, count(*) FROM memories, {source} "
            f"WHERE {live} GROUP BY 1 ORDER BY 2 DESC"
        )
        most = rows(
            f"SELECT id, subject, access_count FROM memories WHERE {live} "
            "ORDER BY access_count DESC, id LIMIT 5"
        )
        newest = rows(
            f"SELECT id, subject FROM memories WHERE {live} "
            "ORDER BY created_at DESC, id DESC LIMIT 5"
        )
        edges = conn.execute(
            text(
                "SELECT count(*) FROM memory_edges e JOIN memories s ON s.id = e.source_id "
                f"JOIN memories t ON t.id = e.target_id WHERE {s_seen} AND {t_seen}"
            ),
            params,
        ).scalar()
        models = counts(
            f"SELECT embedding_model, count(*) FROM memories WHERE {seen} "
            "AND embedding IS NOT NULL GROUP BY 1"
        )
        # Expired memories are invisible; counted here until the sweep purges them.
        expired_cond, expired_params = where(db, replace(everything, include_expired=True))
        expired = conn.execute(
            text(
                f"SELECT count(*) FROM memories WHERE {expired_cond} AND expires_at IS NOT NULL "
                "AND expires_at <= :expired_now"
            ),
            {**expired_params, "expired_now": db.backend.encode("time", utcnow())},
        ).scalar()
    return {
        "total_memories": int(c.total),
        "active_memories": int(c.active),
        "archived_memories": int(c.archived),
        "foundational_memories": int(c.foundational),
        "embedded_memories": int(c.embedded),
        "expired_memories": int(expired),
        "total_edges": int(edges),
        "by_type": by_type,
        "by_instance": by_instance,
        "by_project": by_project,
        "most_accessed": [f"#{r.id}: {r.subject or ''} ({r.access_count})" for r in most],
        "recently_added": [f"#{r.id}: {r.subject or ''}" for r in newest],
        "embedding_models": models,
        "database": db.masked_url,
    }


__all__ = ["archive", "get", "link", "recent", "remember", "stats", "unlink"]
