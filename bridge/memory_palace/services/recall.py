"""Hybrid recall: vector top-k and keyword top-k fused by Reciprocal Rank Fusion, then blended
with access and deliberate centrality. Scores use fixed scales, so they mean the same across
queries (the original normalised by the best candidate of each query)."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, text

from ..db.engine import Database
from ..errors import EmbedderUnavailable, InvalidParams, Timeout
from . import graph, vectors
from .filters import Filters, where
from .memories import LLM_NOTE, card, fetch, touch

if TYPE_CHECKING:
    from ..palace import Palace

CANDIDATES = 50
ACCESS_SCALE = 100  # log(1+access)/log(1+100): 100 accesses count as fully "popular"
CENTRALITY_SCALE = 10  # 10 deliberate incoming links count as fully "central"
TOKEN_RE = re.compile(r"\w+", re.UNICODE)
# PostgreSQL's 'english' configuration drops these; FTS5 has no stop words, so a question like
# "what does Alice like to drink" would otherwise match every memory containing "to".
STOP_WORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "but", "by", "do", "does", "did", "for", "from", "had", "has", "have", "how", "i", "in", "is", "it", "its", "me", "my", "of", "on", "or", "our", "so", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "to", "was", "we", "were", "what", "when", "where", "which", "who", "why", "will", "with", "you", "your"]
)


def fts5_query(query: str) -> str | None:
    """An FTS5 MATCH expression: every word quoted (no operator injection), OR-ed."""
    tokens = list(dict.fromkeys(TOKEN_RE.findall(query)))
    content = [t for t in tokens if t.lower() not in STOP_WORDS] or tokens
    return " OR ".join(f'"{t}"' for t in content) or None


def keyword_search(db: Database, query: str, k: int, f: Filters) -> list[tuple[int, float]]:
    cond, params = where(db, f, "m")
    if db.is_postgres:
        # websearch_to_tsquery ANDs the words; OR them so a partial match still ranks.
        sql = (
            "SELECT m.id, ts_rank_cd(m.tsv, q) AS r FROM memories m, "
            "CAST(replace(CAST(websearch_to_tsquery('english', :q) AS text), ' & ', ' | ') "
            "AS tsquery) AS q "
            f"WHERE m.tsv @@ q AND {cond} ORDER BY r DESC, m.id LIMIT :k"
        )
        params["q"] = query
    else:
        match = fts5_query(query)
        if match is None:
            return []
        sql = (
            "SELECT m.id, bm25(memories_fts, 4.0, 1.0, 2.0) AS r FROM memories_fts "
            "JOIN memories m ON m.id = memories_fts.rowid "
            f"WHERE memories_fts MATCH :q AND {cond} ORDER BY r, m.id LIMIT :k"
        )
        params["q"] = match
    params["k"] = k
    with db.read() as conn:
        return [(int(r[0]), float(r[1])) for r in conn.execute(text(sql), params)]


def _subject_ids(db: Database, f: Filters) -> set[int] | None:
    """SQLite's vector index has no subject column: pre-select ids for a subject filter."""
    if db.is_postgres or not f.subject:
        return None
    cond, params = where(db, f)
    with db.read() as conn:
        return {
            int(r[0]) for r in conn.execute(text(f"SELECT id FROM memories WHERE {cond}"), params)
        }


def _in_degrees(db: Database, ids: list[int]) -> dict[int, int]:
    if not ids:
        return {}
    stmt = text(
        "SELECT target_id, count(*) FROM memory_edges WHERE auto_linked = :f "
        "AND target_id IN :ids GROUP BY target_id"
    ).bindparams(bindparam("ids", expanding=True))
    with db.read() as conn:
        return {int(a): int(b) for a, b in conn.execute(stmt, {"f": False, "ids": ids})}


def recall(
    palace: Palace,
    db: Database,
    *,
    query: str,
    instance_id: str | None = None,
    project: str | list[str] | None = None,
    memory_type: str | None = None,
    subject: str | None = None,
    min_foundational: bool | None = None,
    include_archived: bool = False,
    limit: int = 20,
    detail_level: str = "verbose",
    synthesize: bool = False,
    include_graph: bool = True,
    graph_top_n: int = 5,
    graph_depth: int = 1,
    graph_mode: str = "summary",
) -> dict[str, Any]:
    cap = palace.settings.max_limit
    if limit > cap:
        raise InvalidParams(
            f"memory_recall: limit {limit} is above the maximum {cap}; ask for "
            "fewer results or page with filters"
        )
    with db.read():  # one pooled connection for every read below
        f = Filters.make(
            instance_id, project, memory_type, subject, min_foundational, include_archived
        )
        k = max(CANDIDATES, limit)
        embedder = palace.embedder
        warning = None
        try:
            palace.check_embedder(db)  # a mismatch (Conflict) still raises: it needs a fix
            qvec = embedder.embed_query(query)
        except (EmbedderUnavailable, Timeout) as exc:  # keyword search still answers
            qvec, warning = (
                None,
                (f"vector search skipped: {exc.message}; results come from keyword search only"),
            )
        vec_hits = (
            []
            if qvec is None
            else vectors.search(db, embedder.id, embedder.dim, qvec, k, f, _subject_ids(db, f))
        )
        kw_hits = keyword_search(db, query, k, f)

        rrf_k = palace.settings.rrf_k
        fused: dict[int, float] = {}
        found_by: dict[int, set[str]] = {}
        for name, hits in (("vector", vec_hits), ("keyword", kw_hits)):
            for rank, (mid, _) in enumerate(hits, start=1):
                fused[mid] = fused.get(mid, 0.0) + 1.0 / (rrf_k + rank)
                found_by.setdefault(mid, set()).add(name)
        best = 2.0 / (rrf_k + 1)  # rank 1 in both lists: rank relevance 1.0
        ids = list(fused)
        similarity = dict(vec_hits)
        if qvec is not None:  # keyword-only hits get their cosine too, from the stored vectors
            missing = [i for i in ids if i not in similarity]
            similarity.update(vectors.similarities(db, embedder.id, embedder.dim, qvec, missing))
        rows = fetch(db, ids)
        degrees = _in_degrees(db, ids)
        w = palace.settings.weights
        scored = []
        for mid in ids:
            row = rows.get(mid)
            if row is None:
                continue
            # Rank fusion alone is flat at the top of small result sets (rank 1 vs 2 differ by
            # ~1%), so half the relevance is the absolute cosine: stable across queries.
            relevance = fused[mid] / best
            if qvec is not None:
                relevance = 0.5 * relevance + 0.5 * max(0.0, similarity.get(mid, 0.0))
            access = min(1.0, math.log1p(row.access_count or 0) / math.log1p(ACCESS_SCALE))
            centrality = min(1.0, math.log1p(degrees.get(mid, 0)) / math.log1p(CENTRALITY_SCALE))
            score = (
                w["similarity"] * relevance + w["access"] * access + w["centrality"] * centrality
            )
            scored.append((score, mid))
        scored.sort(key=lambda x: (-x[0], x[1]))
        top = scored[:limit]
        top_ids = [mid for _, mid in top]
        touched = touch(db, top_ids)

        memories = []
        for score, mid in top:
            item = card(rows[mid], detail_level, touched)
            how = found_by[mid]
            item["found_by"] = "both" if len(how) == 2 else next(iter(how))
            item["score"] = round(score, 4)
            if mid in similarity:
                item["similarity_score"] = round(similarity[mid], 4)
            memories.append(item)
        method = (
            "hybrid"
            if vec_hits and kw_hits
            else "vector"
            if vec_hits
            else "keyword"
            if kw_hits
            else "none"
        )
        out: dict[str, Any] = {
            "memories": memories,
            "count": len(memories),
            "search_method": method,
        }
        if warning:
            out["warning"] = warning
        if include_graph and graph_top_n > 0 and graph_depth > 0 and top_ids:
            ctx = graph.context(db, top_ids[:graph_top_n], graph_depth, graph_mode)
            if ctx:
                out["graph_context"] = ctx
        if synthesize:
            out["note"] = LLM_NOTE
        return out
