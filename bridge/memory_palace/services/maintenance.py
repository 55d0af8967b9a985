"""Maintenance: audit (set-based SQL checks, index-backed duplicates) and batched, resumable
re-embedding that records the embedder on every row."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, Literal, get_args

from sqlalchemy import bindparam, text

from ..db import schema
from ..db.engine import Database
from ..db.filters import Access, Filters, where
from ..db.values import decode_strings, utcnow
from ..embeddings import Embedder
from ..errors import Conflict, EmbedderUnavailable, InvalidParams
from ..params import DryRun, P
from . import vectors
from .access import Caller, access_for
from .memories import EMBEDDING_FAILED_TAG, IN_DEGREE_SQL, document_text

log = logging.getLogger("memory_palace.maintenance")

Check = Literal[
    "duplicates",
    "stale",
    "orphan_edges",
    "missing_embeddings",
    "contradictions",
    "unlinked",
    "cross_project_auto_links",
]
CHECKS: tuple[str, ...] = get_args(Check)
THRESHOLDS: dict[str, float] = {
    "duplicate_similarity": 0.92,
    "stale_days": 90,
    "stale_max_access": 2,
    "stale_min_centrality": 3,
}
Progress = Callable[[int, int], None]


def _thresholds(given: dict[str, Any] | None) -> dict[str, float]:
    out = dict(THRESHOLDS)
    for key, value in (given or {}).items():
        if key not in THRESHOLDS:
            raise InvalidParams(
                f"memory_audit: unknown threshold {key!r}; use {', '.join(THRESHOLDS)}",
                param="thresholds",
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise InvalidParams(
                f"memory_audit: threshold {key!r} must be a number >= 0, got {value!r}",
                param="thresholds",
            )
        out[key] = float(value)
    return out


class _Audit:
    """One audit run: shared filter SQL and parameters, one method per check."""

    def __init__(
        self,
        db: Database,
        embedder: Embedder,
        access: Access,
        project: str | None,
        limit: int,
        th: dict[str, float],
    ) -> None:
        self.db, self.embedder, self.th = db, embedder, th
        self.f = Filters.make(project=project, access=access)
        self.cond, fp = where(db, self.f, "m")
        # Checks that join edges to both ends see only memories the caller may see.
        both = Filters(include_archived=True, access=access)
        self.ends = f"{where(db, both, 's')[0]} AND {where(db, both, 't')[0]}"
        self.params = {**fp, "lim": limit, "auto_false": False, "t": True, "f_false": False}

    def rows(self, sql: str, **extra: Any) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            out = [dict(r._mapping) for r in conn.execute(text(sql), {**self.params, **extra})]
        for row in out:
            if row.get("strength") is not None:
                row["strength"] = round(float(row["strength"]), 4)
        return out

    def duplicates(self) -> list[dict[str, Any]]:
        pairs = self.db.backend.similar_pairs(
            self.db,
            self.embedder.id,
            self.embedder.dim,
            self.th["duplicate_similarity"],
            self.f,
            self.params["lim"],
        )
        return [{"memory_a": a, "memory_b": b, "similarity": round(s, 4)} for a, b, s in pairs]

    def stale(self) -> list[dict[str, Any]]:
        cutoff = utcnow() - timedelta(days=self.th["stale_days"])
        return self.rows(
            f"SELECT m.id, m.subject, m.access_count, coalesce(d.indeg, 0) AS in_degree "
            f"FROM memories m LEFT JOIN ({IN_DEGREE_SQL}) d ON d.target_id = m.id "
            f"WHERE {self.cond} AND m.foundational = :f_false AND m.created_at < :cutoff "
            f"AND m.access_count <= :max_acc AND coalesce(d.indeg, 0) < :min_c "
            f"ORDER BY m.created_at LIMIT :lim",
            cutoff=self.db.backend.encode("time", cutoff),
            max_acc=int(self.th["stale_max_access"]),
            min_c=int(self.th["stale_min_centrality"]),
        )

    def orphan_edges(self) -> list[dict[str, Any]]:
        return self.rows(
            "SELECT e.id AS edge_id, e.source_id, e.target_id, e.relation_type "
            "FROM memory_edges e JOIN memories s ON s.id = e.source_id "
            "JOIN memories t ON t.id = e.target_id WHERE (s.is_archived = :t OR "
            f"t.is_archived = :t) AND e.relation_type <> 'supersedes' AND {self.ends} "
            "ORDER BY e.id LIMIT :lim"
        )

    def missing_embeddings(self) -> list[dict[str, Any]]:
        return self.rows(
            f"SELECT m.id, m.subject, m.embedding_model FROM memories m WHERE {self.cond} AND "
            f"(m.embedding IS NULL OR m.embedding_model IS NULL OR m.embedding_model <> :model) "
            f"ORDER BY m.id LIMIT :lim",
            model=self.embedder.id,
        )

    def contradictions(self) -> list[dict[str, Any]]:
        return self.rows(
            "SELECT e.source_id, s.subject AS source_subject, e.target_id, "
            "t.subject AS target_subject FROM memory_edges e "
            "JOIN memories s ON s.id = e.source_id JOIN memories t ON t.id = e.target_id "
            "WHERE e.relation_type = 'contradicts' AND s.is_archived = :f_false "
            f"AND t.is_archived = :f_false AND {self.ends} ORDER BY e.id LIMIT :lim"
        )

    def unlinked(self) -> list[dict[str, Any]]:
        return self.rows(
            f"SELECT m.id, m.subject FROM memories m WHERE {self.cond} AND NOT EXISTS "
            f"(SELECT 1 FROM memory_edges e WHERE e.source_id = m.id OR e.target_id = m.id) "
            f"ORDER BY m.id LIMIT :lim"
        )

    def cross_project_auto_links(self) -> list[dict[str, Any]]:
        share = self.db.backend.strings_overlap("s.projects", "t.projects")
        return self.rows(
            "SELECT e.id AS edge_id, e.source_id, e.target_id, e.strength FROM memory_edges e "
            "JOIN memories s ON s.id = e.source_id JOIN memories t ON t.id = e.target_id "
            f"WHERE e.auto_linked = :t AND e.relation_type = 'relates_to' AND NOT ({share}) "
            f"AND {self.ends} ORDER BY e.id LIMIT :lim"
        )


def audit(
    db: Database,
    embedder: Embedder,
    caller: Caller,
    *,
    checks: Annotated[list[Check] | None, P("Checks to run; omit for all.")] = None,
    thresholds: Annotated[
        dict[str, Any] | None,
        P(
            "Overrides: duplicate_similarity (0.92), stale_days (90), stale_max_access (2), "
            "stale_min_centrality (3)."
        ),
    ] = None,
    project: Annotated[str | None, P("Only this project.")] = None,
    limit_per_category: Annotated[
        int, P("Maximum findings per check.", minimum=1, maximum=10_000)
    ] = 20,
) -> dict[str, Any]:
    """Find quality problems: duplicates, stale memories, orphan edges, missing embeddings,
    contradictions, unlinked memories, cross-project auto-links."""
    run = _Audit(
        db, embedder, access_for(db, caller), project, limit_per_category, _thresholds(thresholds)
    )
    out: dict[str, Any] = {check: getattr(run, check)() for check in checks or CHECKS}
    out["summary"] = {
        **{f"{k}_found": len(v) for k, v in out.items()},
        "total_issues": sum(len(v) for v in out.values()),
    }
    return out


# -- reembed ------------------------------------------------------------------------------


def _selection(
    db: Database,
    embedder: Embedder,
    mode: str,
    memory_ids: list[int] | None,
    missing_only: bool,
    older_than_days: int | None,
    project: str | None,
) -> tuple[str, dict[str, Any]]:
    conds = ["1 = 1"]
    params: dict[str, Any] = {"model": embedder.id}
    if mode == "ids":
        conds.append("id IN :ids")
        params["ids"] = list(memory_ids or [])
    if mode == "missing" or missing_only:
        conds.append("(embedding IS NULL OR embedding_model IS NULL OR embedding_model <> :model)")
    if older_than_days is not None:
        conds.append("created_at < :cutoff")
        params["cutoff"] = db.backend.encode("time", utcnow() - timedelta(days=older_than_days))
    if project:
        conds.append(db.backend.strings_any("projects", [project], params, "p"))
    return " AND ".join(conds), params


def _store_vectors(db: Database, embedder: Embedder, batch: list[Any], vecs: Any) -> None:
    encode = db.backend.encode
    with db.write() as conn:
        conn.execute(
            text(
                f"UPDATE memories SET embedding = {db.backend.bind('vector', 'emb')}, "
                "embedding_model = :model, embedding_dim = :dim WHERE id = :id"
            ),
            [
                {
                    "emb": encode("vector", v),
                    "model": embedder.id,
                    "dim": embedder.dim,
                    "id": int(r.id),
                }
                for r, v in zip(batch, vecs, strict=True)
            ],
        )
        failed = [int(r.id) for r in batch if EMBEDDING_FAILED_TAG in decode_strings(r.tags)]
        if failed:
            conn.execute(
                text(
                    f"UPDATE memories SET tags = {db.backend.strings_remove('tags', 'tag')} "
                    "WHERE id IN :ids"
                ).bindparams(bindparam("ids", expanding=True)),
                {"tag": EMBEDDING_FAILED_TAG, "ids": failed},
            )


def reembed(
    db: Database,
    embedder: Embedder,
    *,
    older_than_days: Annotated[
        int | None, P("Only memories older than this.", minimum=0, maximum=36500)
    ] = None,
    memory_ids: Annotated[list[int] | None, P("Only these ids.", minimum=1)] = None,
    project: Annotated[str | None, P("Only this project.")] = None,
    all_memories: Annotated[
        bool, P("Every memory (needed to change embedder or dimension).")
    ] = False,
    missing_only: Annotated[
        bool, P("Only memories without an embedding from this embedder.")
    ] = False,
    batch_size: Annotated[int, P("Memories per batch and commit.", minimum=1, maximum=1000)] = 50,
    dry_run: DryRun = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Re-embed memories with the configured embedder: missing only, by ids, by filters, or
    all. Dry run by default; batched and resumable."""
    # An interrupted run is resumed by running it again with missing_only: rows already done
    # carry the current embedder id.
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
    cond, params = _selection(
        db, embedder, mode, memory_ids, missing_only, older_than_days, project
    )

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
    done, failed_ids, last_id = 0, [], 0
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
        except EmbedderUnavailable as exc:
            log.warning("re-embedding batch up to #%d failed: %s", last_id, exc.message)
            failed_ids.extend(int(r.id) for r in batch)
        else:
            _store_vectors(db, embedder, batch, vecs)
            done += len(batch)
        if progress:
            progress(done + len(failed_ids), total)
    vectors.forget_embedder_check(db, embedder)
    result.update(reembedded=done, failed=len(failed_ids), failed_ids=failed_ids[:20])
    return result
