"""Maintenance: audit (set-based SQL checks, index-backed duplicates) and batched, resumable
re-embedding that records the embedder on every row."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, text

from ..db import schema
from ..db.engine import Database
from ..db.values import list_out, time_param, utcnow, vector_param, vector_sql
from ..errors import Conflict, MemoryPalaceError
from . import vectors
from .filters import Filters, projects_sql, where
from .memories import EMBEDDING_FAILED_TAG, document_text, in_degree_sql

if TYPE_CHECKING:
    from ..palace import Palace

log = logging.getLogger("memory_palace.maintenance")

CHECKS = (
    "duplicates",
    "stale",
    "orphan_edges",
    "missing_embeddings",
    "contradictions",
    "unlinked",
    "cross_project_auto_links",
)
THRESHOLDS = {
    "duplicate_similarity": 0.92,
    "stale_days": 90,
    "stale_max_access": 2,
    "stale_min_centrality": 3,
}
Progress = Callable[[int, int], None]


def _rows(db: Database, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with db.read() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql), params)]


def _duplicates(
    palace: Palace, db: Database, f: Filters, threshold: float, limit: int
) -> list[dict[str, Any]]:
    embedder = palace.embedder
    if not db.is_postgres:
        index = vectors.sqlite_index(db, embedder.id, embedder.dim)
        pairs = sorted(index.pairwise_max(threshold, f), key=lambda p: -p[2])[:limit]
    else:
        cond, params = where(db, f, "a")
        inner, _ = where(db, f, "b")
        # Each memory asks the HNSW index for its nearest neighbour: n index probes, not n^2.
        sql = (
            f"SELECT a.id AS a, nb.id AS b, 1 - nb.d AS sim FROM memories a "
            f"CROSS JOIN LATERAL (SELECT b.id, b.embedding <=> a.embedding AS d FROM memories b "
            f"WHERE b.id <> a.id AND b.embedding IS NOT NULL AND b.embedding_model = :model "
            f"AND {inner} ORDER BY b.embedding <=> a.embedding LIMIT 1) nb "
            f"WHERE a.embedding IS NOT NULL AND a.embedding_model = :model AND {cond} "
            f"AND 1 - nb.d >= :th AND a.id < nb.id ORDER BY sim DESC LIMIT :lim"
        )
        with db.snapshot() as conn:
            conn.execute(text("SELECT set_config('hnsw.ef_search', '100', true)"))
            pairs = [
                (int(r.a), int(r.b), float(r.sim))
                for r in conn.execute(
                    text(sql), {**params, "model": embedder.id, "th": threshold, "lim": limit}
                )
            ]
    return [{"memory_a": a, "memory_b": b, "similarity": round(s, 4)} for a, b, s in pairs]


def audit(
    palace: Palace,
    db: Database,
    *,
    checks: list[str] | None = None,
    thresholds: dict[str, Any] | None = None,
    project: str | None = None,
    limit_per_category: int = 20,
) -> dict[str, Any]:
    th = {**THRESHOLDS, **(thresholds or {})}
    f = Filters.make(project=project)
    lim = limit_per_category
    out: dict[str, Any] = {}
    cond, params = where(db, f, "m")
    params = {**params, "lim": lim, "auto_false": False, "t": True}
    for check in checks or CHECKS:
        if check == "duplicates":
            out[check] = _duplicates(palace, db, f, float(th["duplicate_similarity"]), lim)
        elif check == "stale":
            out[check] = _rows(
                db,
                (
                    f"SELECT m.id, m.subject, m.access_count, coalesce(d.indeg, 0) AS in_degree "
                    f"FROM memories m LEFT JOIN ({in_degree_sql()}) d ON d.target_id = m.id "
                    f"WHERE {cond} AND m.foundational = :f_false AND m.created_at < :cutoff "
                    f"AND m.access_count <= :max_acc AND coalesce(d.indeg, 0) < :min_c "
                    f"ORDER BY m.created_at LIMIT :lim"
                ),
                {
                    **params,
                    "f_false": False,
                    "cutoff": time_param(db, utcnow() - timedelta(days=int(th["stale_days"]))),
                    "max_acc": int(th["stale_max_access"]),
                    "min_c": int(th["stale_min_centrality"]),
                },
            )
        elif check == "orphan_edges":
            out[check] = _rows(
                db,
                (
                    "SELECT e.id AS edge_id, e.source_id, e.target_id, e.relation_type "
                    "FROM memory_edges e JOIN memories s ON s.id = e.source_id "
                    "JOIN memories t ON t.id = e.target_id "
                    "WHERE (s.is_archived = :t OR t.is_archived = :t) AND e.relation_type <> "
                    "'supersedes' ORDER BY e.id LIMIT :lim"
                ),
                params,
            )
        elif check == "missing_embeddings":
            out[check] = _rows(
                db,
                (
                    f"SELECT m.id, m.subject, m.embedding_model FROM memories m WHERE {cond} AND "
                    f"(m.embedding IS NULL OR m.embedding_model IS NULL OR m.embedding_model <> "
                    f":model) ORDER BY m.id LIMIT :lim"
                ),
                {**params, "model": palace.embedder.id},
            )
        elif check == "contradictions":
            out[check] = _rows(
                db,
                (
                    "SELECT e.source_id, s.subject AS source_subject, e.target_id, "
                    "t.subject AS target_subject FROM memory_edges e "
                    "JOIN memories s ON s.id = e.source_id JOIN memories t ON t.id = e.target_id "
                    "WHERE e.relation_type = 'contradicts' AND s.is_archived = :f_false "
                    "AND t.is_archived = :f_false ORDER BY e.id LIMIT :lim"
                ),
                {**params, "f_false": False},
            )
        elif check == "unlinked":
            out[check] = _rows(
                db,
                (
                    f"SELECT m.id, m.subject FROM memories m WHERE {cond} AND NOT EXISTS "
                    f"(SELECT 1 FROM memory_edges e WHERE e.source_id = m.id OR e.target_id = m.id) "
                    f"ORDER BY m.id LIMIT :lim"
                ),
                params,
            )
        elif check == "cross_project_auto_links":
            share = (
                "s.projects && t.projects"
                if db.is_postgres
                else "EXISTS (SELECT 1 FROM json_each(s.projects) a, json_each(t.projects) b "
                "WHERE a.value = b.value)"
            )
            out[check] = _rows(
                db,
                (
                    "SELECT e.id AS edge_id, e.source_id, e.target_id, e.strength FROM memory_edges e "
                    "JOIN memories s ON s.id = e.source_id JOIN memories t ON t.id = e.target_id "
                    f"WHERE e.auto_linked = :t AND e.relation_type = 'relates_to' AND NOT ({share}) "
                    "ORDER BY e.id LIMIT :lim"
                ),
                params,
            )
    for row_list in out.values():
        for row in row_list:
            for key in ("strength",):
                if key in row and row[key] is not None:
                    row[key] = round(float(row[key]), 4)
    out["summary"] = {
        **{f"{k}_found": len(v) for k, v in out.items()},
        "total_issues": sum(len(v) for v in out.values()),
    }
    return out


def reembed(
    palace: Palace,
    db: Database,
    *,
    older_than_days: int | None = None,
    memory_ids: list[int] | None = None,
    project: str | None = None,
    all_memories: bool = False,
    missing_only: bool = False,
    batch_size: int = 50,
    dry_run: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Re-embed in committed batches, in id order. An interrupted run is resumed by running
    it again with missing_only (rows already done carry the current embedder id)."""
    embedder = palace.embedder
    stored_dim = schema.vector_dim(db)
    resize = stored_dim is not None and stored_dim != embedder.dim
    if resize and not all_memories:
        raise Conflict(
            f"the database stores {stored_dim}-d vectors and the embedder {embedder.id} makes "
            f"{embedder.dim}-d ones; one database cannot mix dimensions. Re-embed everything: "
            "memory_reembed with all_memories=true and dry_run=false (CLI: memory-palace "
            "reembed --all --execute)"
        )
    mode = (
        "ids"
        if memory_ids
        else "all"
        if all_memories
        else "missing"
        if missing_only
        else "filters"
        if (older_than_days is not None or project)
        else "missing"
    )
    conds = ["1 = 1"]
    params: dict[str, Any] = {"model": embedder.id}
    if mode == "ids":
        conds.append("id IN :ids")
        params["ids"] = list(memory_ids or [])
    if mode == "missing" or (missing_only and mode != "missing"):
        conds.append("(embedding IS NULL OR embedding_model IS NULL OR embedding_model <> :model)")
    if older_than_days is not None:
        conds.append("created_at < :cutoff")
        params["cutoff"] = time_param(db, utcnow() - timedelta(days=older_than_days))
    if project:
        conds.append(projects_sql(db, (project,), params))
    cond = " AND ".join(conds)

    def stmt(sql: str) -> Any:
        s = text(sql)
        return s.bindparams(bindparam("ids", expanding=True)) if mode == "ids" else s

    with db.read() as conn:
        total = int(
            conn.execute(stmt(f"SELECT count(*) FROM memories WHERE {cond}"), params).scalar()
        )
    result: dict[str, Any] = {
        "mode": mode,
        "total": total,
        "embedder": embedder.id,
        "dimension": embedder.dim,
    }
    if dry_run:
        result["would_reembed"] = total
        result["note"] = "dry run: nothing changed; pass dry_run=false to re-embed" + (
            f" (this also resizes vectors from {stored_dim} to {embedder.dim} dimensions)"
            if resize
            else ""
        )
        return result
    if resize:
        schema.resize_vectors(db, embedder.dim)
    done = failed = 0
    failed_ids: list[int] = []
    last_id = 0
    while True:
        with db.read() as conn:
            batch = conn.execute(
                stmt(
                    f"SELECT id, subject, content, tags FROM memories WHERE {cond} AND id > :last "
                    "ORDER BY id LIMIT :n"
                ),
                {**params, "last": last_id, "n": batch_size},
            ).all()
        if not batch:
            break
        last_id = int(batch[-1].id)
        try:
            vecs = embedder.embed_documents([document_text(r.subject, r.content) for r in batch])
        except MemoryPalaceError as exc:
            log.warning("re-embedding batch up to #%d failed: %s", last_id, exc.message)
            failed += len(batch)
            failed_ids.extend(int(r.id) for r in batch)
            if progress:
                progress(done + failed, total)
            continue
        with db.write() as conn:
            conn.execute(
                text(
                    f"UPDATE memories SET embedding = {vector_sql(db, 'emb')}, embedding_model = "
                    ":model, embedding_dim = :dim WHERE id = :id"
                ),
                [
                    {
                        "emb": vector_param(db, v),
                        "model": embedder.id,
                        "dim": embedder.dim,
                        "id": int(r.id),
                    }
                    for r, v in zip(batch, vecs)
                ],
            )
            _clear_failed_tags(
                conn, db, [int(r.id) for r in batch if EMBEDDING_FAILED_TAG in list_out(r.tags)]
            )
        done += len(batch)
        if progress:
            progress(done + failed, total)
    db.cache.pop(("embedder_ok", embedder.id), None)
    result.update(reembedded=done, failed=failed, failed_ids=failed_ids[:20])
    return result


def _clear_failed_tags(conn: Any, db: Database, ids: list[int]) -> None:
    if not ids:
        return
    if db.is_postgres:
        conn.execute(
            text("UPDATE memories SET tags = array_remove(tags, :tag) WHERE id = ANY(:ids)"),
            {"tag": EMBEDDING_FAILED_TAG, "ids": ids},
        )
        return
    stmt = text(
        "UPDATE memories SET tags = (SELECT json_group_array(value) FROM json_each(tags) "
        "WHERE value <> :tag) WHERE id IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    conn.execute(stmt, {"tag": EMBEDDING_FAILED_TAG, "ids": ids})
