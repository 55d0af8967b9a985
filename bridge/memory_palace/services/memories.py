"""Memories: remember, get, recent, archive, link, unlink and stats on either backend."""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import bindparam, text

from ..db.engine import Database
from ..db.values import (
    json_param,
    jsonb_sql,
    list_out,
    list_param,
    time_out,
    time_param,
    utcnow,
    vector_param,
    vector_sql,
)
from ..errors import Conflict, InvalidParams, MemoryPalaceError, NotFound
from . import graph, vectors
from .filters import Filters, where

if TYPE_CHECKING:
    from ..palace import Palace

log = logging.getLogger("memory_palace.memories")

COLUMNS = (
    "id, created_at, updated_at, last_accessed_at, access_count, instance_id, projects, "
    "memory_type, subject, content, keywords, tags, foundational, source_type, "
    "source_context, source_session_id, is_archived, embedding_model, "
    "(embedding IS NOT NULL) AS embedded"
)
EMBEDDING_FAILED_TAG = "embedding_failed"
LLM_NOTE = (
    "synthesis needs an LLM and none is configured (config llm_model); returning the raw results"
)


def normalise_projects(project: str | list[str] | None) -> list[str]:
    if project is None:
        return ["life"]
    items = [project] if isinstance(project, str) else list(project)
    out = list(dict.fromkeys(p.strip() for p in items if p and p.strip()))
    return out or ["life"]


def content_hash(content: str) -> str:
    return hashlib.sha256(re.sub(r"\s+", " ", content.strip().lower()).encode()).hexdigest()


def document_text(subject: str | None, content: str) -> str:
    return f"{subject}\n{content}" if subject else content


def memory_dict(row: Any, detail: str = "verbose") -> dict[str, Any]:
    projects = list_out(row.projects)
    card = {
        "id": int(row.id),
        "subject": row.subject,
        "memory_type": row.memory_type,
        "projects": projects,
        "project": projects[0] if projects else None,
        "created_at": time_out(row.created_at),
        "foundational": bool(row.foundational),
    }
    if detail == "summary":
        content = row.content or ""
        card["content"] = content if len(content) <= 200 else content[:197] + "..."
        return card
    card.update(
        content=row.content,
        instance_id=row.instance_id,
        keywords=list_out(row.keywords),
        tags=list_out(row.tags),
        source_type=row.source_type,
        source_context=row.source_context,
        source_session_id=row.source_session_id,
        updated_at=time_out(row.updated_at),
        last_accessed_at=time_out(row.last_accessed_at),
        access_count=int(row.access_count or 0),
        is_archived=bool(row.is_archived),
        embedded=bool(row.embedded),
        embedding_model=row.embedding_model,
    )
    return card


def fetch(db: Database, ids: list[int]) -> dict[int, Any]:
    if not ids:
        return {}
    stmt = text(f"SELECT {COLUMNS} FROM memories WHERE id IN :ids").bindparams(
        bindparam("ids", expanding=True)
    )
    with db.read() as conn:
        return {int(r.id): r for r in conn.execute(stmt, {"ids": list(ids)})}


def touch(
    db: Database, ids: list[int], columns: str = "id, access_count, last_accessed_at"
) -> dict[int, Any]:
    """Count an access, atomically in SQL, so concurrent recalls are all counted.

    Returns {id: row of `columns`} as written, so callers need not read the rows again.
    """
    if not ids:
        return {}
    sql = (
        "UPDATE memories SET access_count = access_count + 1, last_accessed_at = :now "
        f"WHERE id IN :ids RETURNING {columns}"
    )
    params = {"now": time_param(db, utcnow()), "ids": list(ids)}
    if db.is_postgres:
        # One round trip on an autocommit connection: a multi-statement query is one implicit
        # transaction, so SET LOCAL holds for the UPDATE. An access count may lag a crash by a
        # moment (no wait for the WAL flush); recall need not wait for the disk.
        ctx, sql = db.read(), "SET LOCAL synchronous_commit = off; " + sql
    else:
        ctx = db.write()
    with ctx as conn:
        rows = conn.execute(text(sql).bindparams(bindparam("ids", expanding=True)), params)
        return {int(r.id): r for r in rows}


def card(row: Any, detail: str, touched: dict[int, Any]) -> dict[str, Any]:
    """memory_dict with the access count just written by touch()."""
    out = memory_dict(row, detail)
    new = touched.get(int(row.id))
    if detail != "summary" and new is not None:
        out["access_count"] = int(new.access_count)
        out["last_accessed_at"] = time_out(new.last_accessed_at)
    return out


def _archive(conn: Any, db: Database, ids: list[int], note: str) -> None:
    if not ids:
        return
    concat = "coalesce(source_context, '') || :note"
    stmt = text(
        f"UPDATE memories SET is_archived = :t, updated_at = :now, source_context = "
        f"{concat} WHERE id IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    conn.execute(stmt, {"t": True, "now": time_param(db, utcnow()), "note": note, "ids": list(ids)})


def insert_edge(
    conn: Any,
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
    row = conn.execute(
        text(
            "INSERT INTO memory_edges (created_at, source_id, target_id, relation_type, strength, "
            "bidirectional, metadata, created_by, auto_linked) VALUES (:now, :s, :t, :r, :st, :bi, "
            f"{jsonb_sql(db, 'meta')}, :by, :auto) "
            "ON CONFLICT (source_id, target_id, relation_type) DO NOTHING RETURNING id"
        ),
        {
            "now": time_param(db, utcnow()),
            "s": source,
            "t": target,
            "r": relation,
            "st": max(0.0, min(1.0, float(strength))),
            "bi": bidirectional,
            "meta": json_param(db, metadata),
            "by": created_by,
            "auto": auto_linked,
        },
    ).first()
    return int(row[0]) if row else None


def _find_duplicate(db: Database, digest: str, memory_type: str, projects: list[str]) -> Any | None:
    with db.read() as conn:
        rows = conn.execute(
            text(
                "SELECT id, subject, projects, (embedding IS NOT NULL) AS embedded FROM memories "
                "WHERE content_hash = :h AND memory_type = :t AND is_archived = :f"
            ),
            {"h": digest, "t": memory_type, "f": False},
        ).all()
    want = sorted(projects)
    return next((r for r in rows if sorted(list_out(r.projects)) == want), None)


def remember(
    palace: Palace,
    db: Database,
    *,
    content: str,
    memory_type: str = "fact",
    subject: str | None = None,
    instance_id: str | None = None,
    keywords: list[str] | None = None,
    tags: list[str] | None = None,
    foundational: bool = False,
    project: str | list[str] | None = "life",
    source_type: str = "explicit",
    source_context: str | None = None,
    source_session_id: str | None = None,
    supersedes_id: int | None = None,
    auto_link: bool | None = None,
) -> dict[str, Any]:
    projects = normalise_projects(project)
    instance = instance_id or palace.instance_id
    digest = content_hash(content)
    dup = _find_duplicate(db, digest, memory_type, projects)
    if dup is not None:
        return {
            "id": int(dup.id),
            "subject": dup.subject,
            "embedded": bool(dup.embedded),
            "duplicate_of": int(dup.id),
            "note": "an identical memory (same content, project and type) exists; "
            "nothing was written",
        }
    if supersedes_id is not None and not fetch(db, [supersedes_id]):
        raise NotFound(
            f"supersedes_id {supersedes_id} does not exist in this database; "
            "check the id with memory_get or memory_recall"
        )

    result: dict[str, Any] = {}
    tags = list(tags or [])
    vec: np.ndarray | None = None
    embedder = palace.embedder
    try:
        palace.check_embedder(db)
        vec = embedder.embed_documents([document_text(subject, content)])[0]
    except MemoryPalaceError as exc:
        result["warning"] = f"stored without an embedding: {exc.message}"
    except Exception as exc:
        log.exception("embedding failed")
        result["warning"] = f"stored without an embedding: {exc}"
    if vec is None:
        tags.append(EMBEDDING_FAILED_TAG)
        result["warning"] += " (tagged embedding_failed; run memory_reembed with missing_only)"

    link_cfg = palace.settings.auto_link
    do_link = link_cfg.get("enabled", True) if auto_link is None else auto_link
    neighbours: list[tuple[int, float]] = []
    if vec is not None and do_link:
        scope = Filters.make(project=projects if link_cfg.get("same_project_only", True) else None)
        k = int(link_cfg.get("max_suggestions", 10)) + 10
        hits = vectors.search(db, embedder.id, embedder.dim, vec, k, scope)
        neighbours = [(i, s) for i, s in hits if i != supersedes_id]

    now = time_param(db, utcnow())
    if instance not in palace.settings.instances:
        result["instance_warning"] = (
            f"instance {instance!r} is not in config 'instances' "
            f"({', '.join(palace.settings.instances)})"
        )
    subjects = {i: r.subject for i, r in fetch(db, [i for i, _ in neighbours]).items()}
    projects_sql = "CAST(:projects AS TEXT[])" if db.is_postgres else ":projects"
    with db.write() as conn:
        new_id = int(
            conn.execute(
                text(
                    "INSERT INTO memories (created_at, updated_at, instance_id, projects, memory_type, "
                    "subject, content, content_hash, keywords, tags, foundational, source_type, "
                    "source_context, source_session_id, embedding, embedding_model, embedding_dim) "
                    f"VALUES (:now, :now, :inst, {projects_sql}, "
                    ":type, :subject, :content, :hash, :keywords, :tags, :foundational, :stype, :sctx, "
                    f":sid, {vector_sql(db, 'emb')}, :model, :dim) RETURNING id"
                ),
                {
                    "now": now,
                    "inst": instance,
                    "projects": list_param(db, projects),
                    "type": memory_type,
                    "subject": subject,
                    "content": content,
                    "hash": digest,
                    "keywords": list_param(db, keywords),
                    "tags": list_param(db, tags),
                    "foundational": foundational,
                    "stype": source_type,
                    "sctx": source_context,
                    "sid": source_session_id,
                    "emb": vector_param(db, vec),
                    "model": embedder.id if vec is not None else None,
                    "dim": embedder.dim if vec is not None else None,
                },
            ).scalar()
        )
        if supersedes_id is not None:
            insert_edge(
                conn,
                db,
                new_id,
                supersedes_id,
                "supersedes",
                1.0,
                metadata={"superseded_at": time_out(utcnow())},
                created_by=instance,
            )
            _archive(conn, db, [supersedes_id], f" [SUPERSEDED by #{new_id}]")
            result["superseded"] = supersedes_id
        links, suggestions = [], []
        link_at = float(link_cfg.get("link_threshold", 0.75))
        suggest_at = float(link_cfg.get("suggest_threshold", 0.675))
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
            elif sim >= suggest_at and len(suggestions) < int(link_cfg.get("max_suggestions", 10)):
                suggestions.append(
                    {
                        "target": target,
                        "target_subject": subjects.get(target),
                        "score": round(sim, 4),
                    }
                )
    result.update(id=new_id, subject=subject, embedded=vec is not None)
    if links:
        result["links_created"] = links
    if suggestions:
        result["suggested_links"] = suggestions
    return result


def get(
    palace: Palace,
    db: Database,
    *,
    memory_ids: int | list[int],
    detail_level: str = "verbose",
    synthesize: bool = False,
    include_graph: bool = True,
    graph_depth: int = 1,
    graph_mode: str = "summary",
    traverse: bool = False,
    max_depth: int = 3,
    direction: str = "both",
    relation_types: list[str] | None = None,
    min_strength: float | None = None,
) -> dict[str, Any]:
    single = isinstance(memory_ids, int)
    ids = [memory_ids] if single else list(dict.fromkeys(memory_ids))
    if not ids:
        raise InvalidParams("memory_get: memory_ids must name at least one id")
    with db.read():  # one pooled connection for every read below
        rows = touch(db, ids, COLUMNS)  # counts the access and reads the rows at once
        found = [i for i in ids if i in rows]
        if single and not found:
            raise NotFound(
                f"memory {memory_ids} does not exist; find ids with memory_recall or memory_recent"
            )
        out: dict[str, Any]
        if single:
            out = {"memory": memory_dict(rows[found[0]], detail_level)}
        else:
            out = {
                "memories": [memory_dict(rows[i], detail_level) for i in found],
                "count": len(found),
            }
            missing = [i for i in ids if i not in rows]
            if missing:
                out["not_found"] = missing
        if traverse:
            walks = {
                i: graph.traverse(db, i, max_depth, direction, relation_types, min_strength)
                for i in found
            }
            if single:
                out["traversal"] = walks[found[0]]
            else:
                out["traversals"] = {str(i): w for i, w in walks.items()}
        elif include_graph and graph_depth > 0:
            ctx = graph.context(
                db, found, graph_depth, graph_mode, direction, relation_types, min_strength
            )
            if ctx:
                out["graph_context"] = ctx
        if synthesize and len(found) > 1:
            out["note"] = LLM_NOTE
        return out


def recent(
    palace: Palace,
    db: Database,
    *,
    limit: int = 20,
    verbose: bool = False,
    project: str | list[str] | None = None,
    memory_type: str | None = None,
    instance_id: str | None = None,
    include_archived: bool = False,
) -> dict[str, Any]:
    cond, params = where(
        db, Filters.make(instance_id, project, memory_type, include_archived=include_archived)
    )
    with db.read() as conn:
        total = conn.execute(text(f"SELECT count(*) FROM memories WHERE {cond}"), params).scalar()
        rows = conn.execute(
            text(
                f"SELECT {COLUMNS} FROM memories WHERE {cond} "
                "ORDER BY created_at DESC, id DESC LIMIT :limit"
            ),
            {**params, "limit": limit},
        ).all()
    detail = "verbose" if verbose else "summary"
    return {
        "memories": [memory_dict(r, detail) for r in rows],
        "count": len(rows),
        "total_available": int(total),
    }


def in_degree_sql() -> str:
    """Deliberate in-degree per memory: auto-links don't count toward centrality."""
    return (
        "SELECT target_id, count(*) AS indeg FROM memory_edges "
        "WHERE auto_linked = :auto_false GROUP BY target_id"
    )


def archive(
    palace: Palace,
    db: Database,
    *,
    memory_ids: list[int] | None = None,
    older_than_days: int | None = None,
    max_access_count: int | None = None,
    memory_type: str | None = None,
    project: str | list[str] | None = None,
    centrality_protection: bool = True,
    min_centrality_threshold: int = 5,
    dry_run: bool = True,
    reason: str | None = None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"auto_false": False}
    if memory_ids:
        cond = "m.id IN :ids AND m.is_archived = :f_false"
        params.update(ids=list(memory_ids), f_false=False)
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
        cond, fp = where(db, Filters.make(project=project, memory_type=memory_type), "m")
        params.update(fp)
        if older_than_days is not None:
            cond += " AND m.created_at < :cutoff"
            params["cutoff"] = time_param(db, utcnow() - timedelta(days=older_than_days))
        if max_access_count is not None:
            cond += " AND m.access_count <= :max_acc"
            params["max_acc"] = max_access_count
    stmt = text(
        f"SELECT m.id, m.subject, m.foundational, coalesce(d.indeg, 0) AS indeg "
        f"FROM memories m LEFT JOIN ({in_degree_sql()}) d ON d.target_id = m.id "
        f"WHERE {cond} ORDER BY m.id"
    )
    if memory_ids:
        stmt = stmt.bindparams(bindparam("ids", expanding=True))
    with db.read() as conn:
        rows = conn.execute(stmt, params).all()
    chosen, skipped_foundational, skipped_central, details = [], [], [], []
    warnings = 0
    for r in rows:
        entry = {"id": int(r.id), "subject": r.subject, "in_degree": int(r.indeg)}
        if r.foundational:
            skipped_foundational.append(int(r.id))
            continue
        if centrality_protection and r.indeg >= min_centrality_threshold:
            skipped_central.append(int(r.id))
            continue
        if r.indeg >= 3:
            entry["warning"] = f"{int(r.indeg)} memories link here"
            warnings += 1
        chosen.append(int(r.id))
        details.append(entry)
    out: dict[str, Any] = {
        "skipped_foundational": skipped_foundational,
        "skipped_centrality": skipped_central,
        "warning_count": warnings,
        "details": details,
    }
    if memory_ids:
        out["not_found_or_archived"] = sorted(set(memory_ids) - {int(r.id) for r in rows})
    if dry_run:
        out["would_archive"] = len(chosen)
        out["note"] = "dry run: nothing changed; pass dry_run=false to archive"
        return out
    with db.write() as conn:
        _archive(conn, db, chosen, f" [ARCHIVED: {reason or 'manual'}]")
    out["archived_count"] = len(chosen)
    out["note"] = "archived memories are hidden from recall; include_archived=true shows them"
    return out


def link(
    palace: Palace,
    db: Database,
    *,
    source_id: int,
    target_id: int,
    relation_type: str,
    strength: float = 1.0,
    bidirectional: bool = False,
    metadata: dict | None = None,
    created_by: str | None = None,
    archive_old: bool = False,
) -> dict[str, Any]:
    if source_id == target_id:
        raise InvalidParams("memory_link: a memory cannot link to itself")
    found = fetch(db, [source_id, target_id])
    for mid in (source_id, target_id):
        if mid not in found:
            raise NotFound(f"memory {mid} does not exist; check the id with memory_get")
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
            created_by or palace.instance_id,
        )
        if edge_id is None:
            existing = conn.execute(
                text(
                    "SELECT id FROM memory_edges WHERE source_id = :s AND target_id = :t "
                    "AND relation_type = :r"
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
            _archive(conn, db, [target_id], f" [SUPERSEDED by #{source_id}]")
            out["old_memory_archived"] = True
    return out


def unlink(
    palace: Palace,
    db: Database,
    *,
    source_id: int,
    target_id: int,
    relation_type: str | None = None,
) -> dict[str, Any]:
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


def stats(palace: Palace, db: Database) -> dict[str, Any]:
    """Aggregates in SQL; never loads memory rows into Python."""
    project_rows = (
        "SELECT p, count(*) FROM memories, unnest(projects) AS p "
        "WHERE NOT is_archived GROUP BY p ORDER BY 2 DESC"
        if db.is_postgres
        else "SELECT json_each.value, count(*) FROM memories, json_each(memories.projects) "
        "WHERE is_archived = 0 GROUP BY 1 ORDER BY 2 DESC"
    )
    with db.read() as conn:
        c = conn.execute(
            text(
                "SELECT count(*) AS total, "
                "coalesce(sum(CASE WHEN is_archived THEN 0 ELSE 1 END), 0) AS active, "
                "coalesce(sum(CASE WHEN is_archived THEN 1 ELSE 0 END), 0) AS archived, "
                "coalesce(sum(CASE WHEN foundational AND NOT is_archived THEN 1 ELSE 0 END), 0) "
                "AS foundational, "
                "coalesce(sum(CASE WHEN embedding IS NOT NULL THEN 1 ELSE 0 END), 0) AS embedded "
                "FROM memories"
            )
        ).one()
        by_type = dict(
            conn.execute(
                text(
                    "SELECT coalesce(memory_type, '?'), count(*) FROM memories WHERE is_archived = :f "
                    "GROUP BY 1 ORDER BY 2 DESC"
                ),
                {"f": False},
            ).all()
        )
        by_instance = dict(
            conn.execute(
                text(
                    "SELECT coalesce(instance_id, '?'), count(*) FROM memories WHERE is_archived = :f "
                    "GROUP BY 1 ORDER BY 2 DESC"
                ),
                {"f": False},
            ).all()
        )
        by_project = dict(conn.execute(text(project_rows)).all())
        most = conn.execute(
            text(
                "SELECT id, subject, access_count FROM memories WHERE is_archived = :f "
                "ORDER BY access_count DESC, id LIMIT 5"
            ),
            {"f": False},
        ).all()
        newest = conn.execute(
            text(
                "SELECT id, subject FROM memories WHERE is_archived = :f "
                "ORDER BY created_at DESC, id DESC LIMIT 5"
            ),
            {"f": False},
        ).all()
        edges = conn.execute(text("SELECT count(*) FROM memory_edges")).scalar()
        models = dict(
            conn.execute(
                text(
                    "SELECT embedding_model, count(*) FROM memories WHERE embedding IS NOT NULL "
                    "GROUP BY 1"
                )
            ).all()
        )
    return {
        "total_memories": int(c.total),
        "active_memories": int(c.active),
        "archived_memories": int(c.archived),
        "foundational_memories": int(c.foundational),
        "embedded_memories": int(c.embedded),
        "total_edges": int(edges),
        "by_type": {k: int(v) for k, v in by_type.items()},
        "by_instance": {k: int(v) for k, v in by_instance.items()},
        "by_project": {k: int(v) for k, v in by_project.items()},
        "most_accessed": [f"#{r.id}: {r.subject or ''} ({r.access_count})" for r in most],
        "recently_added": [f"#{r.id}: {r.subject or ''}" for r in newest],
        "embedding_models": {k: int(v) for k, v in models.items()},
        "database": db.masked_url,
    }


__all__ = ["archive", "get", "link", "recent", "remember", "stats", "unlink"]
