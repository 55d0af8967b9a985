"""Hybrid recall: vector top-k and keyword top-k fused by Reciprocal Rank Fusion, then blended
with access and deliberate centrality. Scores use fixed scales, so they mean the same across
queries (the original normalised by the best candidate of each query)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from sqlalchemy import bindparam, text

from ..config import Settings
from ..db.engine import Database
from ..db.filters import Filters
from ..db.values import iso
from ..embeddings import Embedder
from ..errors import EmbedderUnavailable, InvalidParams
from ..params import ByInstance, DetailLevel, GraphMode, IncludeArchived, MemoryType, P, Project
from . import graph, vectors
from .memories import LLM_NOTE, fetch, memory_dict, touch

CANDIDATES = 50
ACCESS_SCALE = 100  # log(1+access)/log(1+100): 100 accesses count as fully "popular"
CENTRALITY_SCALE = 10  # 10 deliberate incoming links count as fully "central"


@dataclass
class Candidates:
    """What the two legs found for one query."""

    vector: list[tuple[int, float]] = field(default_factory=list)
    keyword: list[tuple[int, float]] = field(default_factory=list)
    similarity: dict[int, float] = field(default_factory=dict)
    embedded_query: bool = False  # False when the embedder failed: keyword search only
    warning: str | None = None

    def found_by(self, mid: int) -> str:
        legs = [
            name
            for name, hits in (("vector", self.vector), ("keyword", self.keyword))
            if any(h[0] == mid for h in hits)
        ]
        return "both" if len(legs) == 2 else legs[0]

    @property
    def method(self) -> str:
        if self.vector and self.keyword:
            return "hybrid"
        return "vector" if self.vector else "keyword" if self.keyword else "none"


def _in_degrees(db: Database, ids: list[int]) -> dict[int, int]:
    if not ids:
        return {}
    stmt = text(
        "SELECT target_id, count(*) FROM memory_edges WHERE auto_linked = :f "
        "AND target_id IN :ids GROUP BY target_id"
    ).bindparams(bindparam("ids", expanding=True))
    with db.read() as conn:
        return {int(a): int(b) for a, b in conn.execute(stmt, {"f": False, "ids": ids})}


def _query_vector(
    db: Database, embedder: Embedder, query: str
) -> tuple[np.ndarray | None, str | None]:
    try:
        vectors.check_embedder(db, embedder)  # a mismatch (Conflict) still raises: needs a fix
        return embedder.embed_query(query), None
    except EmbedderUnavailable as exc:  # keyword search still answers
        return None, (
            f"vector search skipped: {exc.message}; results come from keyword search only"
        )


def gather(db: Database, embedder: Embedder, query: str, f: Filters, k: int) -> Candidates:
    """Both legs' top-k, and the cosine of every candidate that has a vector."""
    qvec, warning = _query_vector(db, embedder, query)
    found = Candidates(warning=warning, embedded_query=qvec is not None)
    found.keyword = db.backend.keyword_search(db, query, k, f)
    if qvec is not None:
        found.vector = vectors.search(db, embedder, qvec, k, f)
        found.similarity = dict(found.vector)
        # keyword-only hits get their cosine too, from the stored vectors
        missing = [i for i, _ in found.keyword if i not in found.similarity]
        found.similarity.update(vectors.similarities(db, embedder, qvec, missing))
    return found


def rank(db: Database, settings: Settings, found: Candidates) -> list[tuple[float, int, Any]]:
    """(score, id, row) best first."""
    rrf_k = settings.rrf_k
    fused: dict[int, float] = {}
    for hits in (found.vector, found.keyword):
        for position, (mid, _) in enumerate(hits, start=1):
            fused[mid] = fused.get(mid, 0.0) + 1.0 / (rrf_k + position)
    best = 2.0 / (rrf_k + 1)  # rank 1 in both lists: rank relevance 1.0
    rows = fetch(db, list(fused))
    degrees = _in_degrees(db, list(fused))
    w = settings.weights
    scored = []
    for mid, rrf in fused.items():
        row = rows.get(mid)
        if row is None:
            continue
        # Rank fusion alone is flat at the top of small result sets (rank 1 vs 2 differ by
        # ~1%), so half the relevance is the absolute cosine: stable across queries.
        relevance = rrf / best
        if found.embedded_query:
            relevance = 0.5 * relevance + 0.5 * max(0.0, found.similarity.get(mid, 0.0))
        access = min(1.0, math.log1p(row.access_count or 0) / math.log1p(ACCESS_SCALE))
        centrality = min(1.0, math.log1p(degrees.get(mid, 0)) / math.log1p(CENTRALITY_SCALE))
        score = w["similarity"] * relevance + w["access"] * access + w["centrality"] * centrality
        scored.append((score, mid, row))
    scored.sort(key=lambda x: (-x[0], x[1]))
    return scored


def recall(
    db: Database,
    embedder: Embedder,
    settings: Settings,
    *,
    query: Annotated[
        str, P("What to look for: a question, topic, name, id or error string.", min_length=1)
    ],
    instance_id: ByInstance = None,
    project: Project = None,
    memory_type: MemoryType = None,
    subject: Annotated[str | None, P("Only memories whose subject contains this text.")] = None,
    min_foundational: Annotated[bool | None, P("Only foundational memories.")] = None,
    include_archived: IncludeArchived = False,
    limit: Annotated[int, P("Maximum results (at most 100).", minimum=1)] = 20,
    detail_level: DetailLevel = "verbose",
    synthesize: Annotated[bool, P("Summarise the results with the configured LLM.")] = False,
    include_graph: Annotated[bool, P("Add graph context for the top results.")] = True,
    graph_top_n: Annotated[
        int, P("How many top results get graph context.", minimum=0, maximum=100)
    ] = 5,
    graph_depth: Annotated[int, P("Graph hops (1-5).", minimum=0, maximum=5)] = 1,
    graph_mode: GraphMode = "summary",
) -> dict[str, Any]:
    """Search memories by meaning and by exact words (hybrid vector + keyword search), with
    optional graph context. Each result says how it was found."""
    if limit > settings.max_limit:
        raise InvalidParams(
            f"memory_recall: limit {limit} is above the maximum "
            f"{settings.max_limit}; ask for fewer results or page with filters"
        )
    f = Filters.make(instance_id, project, memory_type, subject, min_foundational, include_archived)
    with db.read():  # the reads below share one pooled connection
        found = gather(db, embedder, query, f, max(CANDIDATES, limit))
        top = rank(db, settings, found)[:limit]
        top_ids = [mid for _, mid, _ in top]
        touched = touch(db, top_ids)
        memories = []
        for score, mid, row in top:
            item = memory_dict(row, detail_level)
            new = touched.get(mid)
            if detail_level != "summary" and new is not None:
                item["access_count"] = int(new.access_count)
                item["last_accessed_at"] = iso(new.last_accessed_at)
            item["found_by"] = found.found_by(mid)
            item["score"] = round(score, 4)
            if mid in found.similarity:
                item["similarity_score"] = round(found.similarity[mid], 4)
            memories.append(item)
        out: dict[str, Any] = {
            "memories": memories,
            "count": len(memories),
            "search_method": found.method,
        }
        if found.warning:
            out["warning"] = found.warning
        if include_graph and graph_top_n > 0 and graph_depth > 0 and top_ids:
            ctx = graph.context(db, top_ids[:graph_top_n], graph_depth, graph_mode)
            if ctx:
                out["graph_context"] = ctx
    if synthesize:
        out["note"] = LLM_NOTE
    return out
