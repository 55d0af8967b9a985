"""Recall: dense and keyword candidates, scored on absolute scales and summed.

    relevance = cosine + keyword_weight * keyword + identifier_weight * identifier_match
    score     = weights.similarity * relevance + weights.access * access
                + weights.centrality * centrality + weights.recency * recency

- cosine: the query's similarity to the memory's vector, centred on the memories the filter
  allows so that generic ones do not lead every list (vectors.Query; recall.centre_weight);
  the vector index's top `limit` hits, see vector_depth, and every keyword candidate;
- keyword: coverage above keyword_threshold, rescaled to [0, 1]. Coverage is BM25 over the
  filtered memories divided by the most any memory could score for the query (lexical.py), so
  a keyword match counts the same in every query, and a leg that found nothing adds nothing
  (rank fusion made "found by both legs" win). Below the threshold a match is one common word
  (a speaker's name, "customer"): noise that reordered good semantic matches;
- identifier_match: the query's identifier-like tokens found whole in the memory;
- recency: 0.5 ** (age / recall.half_life_days) on occurred_at, else created_at (foundational
  memories count 1); its weight is 0 (off) by default.
The defaults were chosen on bench/bench_quality.py (tuned on its dev split, checked on test).
Reads never write: access counts come from deliberate reads (memory_get), decay, and are capped,
so a recall cannot change the next one's ranking.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Literal

import numpy as np
from sqlalchemy import bindparam, text

from ..config import Recall as RecallConfig
from ..config import Settings
from ..db.backend import Hits
from ..db.engine import Database
from ..db.filters import Filters
from ..db.values import decode_strings, decode_time, iso, utcnow
from ..embeddings import Embedder
from ..errors import EmbedderUnavailable, InvalidParams
from ..params import (
    ByInstance,
    DetailLevel,
    GraphMode,
    IncludeArchived,
    MemoryType,
    P,
    Project,
    Since,
    Until,
)
from . import graph, lexical, vectors, when
from .access import Caller, access_for
from .memories import IN_DEGREE_SQL, LLM_NOTE, fetch, memory_dict, time_bounds

ACCESS_SCALE = 100  # log(1+access)/log(1+100): 100 deliberate reads count as fully "popular"
ACCESS_HALF_LIFE = timedelta(days=30)  # an access counts half after a month untouched
CENTRALITY_SCALE = 10  # 10 deliberate incoming links count as fully "central"
Search = Literal["hybrid", "vector", "keyword"]
#: (keyword_weight, keyword_threshold) when config leaves them unset, by embedder kind. With a
#: language model, keywords refine semantic ranking; with the hashing embedder (vectors of
#: surface text, no meaning) keyword relevance leads and the cosine breaks ties. Both chosen on
#: bench/bench_quality.py's dev split and checked on its test split.
KEYWORD_DEFAULTS = {True: (0.3, 0.2), False: (5.0, 0.0)}


@dataclass
class Candidate:
    id: int
    vector_rank: int | None = None
    cosine: float | None = None  # what relevance adds: centred (vectors.Query) or plain
    plain: float | None = None  # the plain cosine, for results (recall.plain_cosines)
    keyword_rank: int | None = None
    coverage: float = 0.0
    identifier: float = 0.0
    relevance: float = 0.0
    access: float = 0.0
    centrality: float = 0.0
    recency: float = 0.0
    score: float = 0.0

    @property
    def found_by(self) -> str:
        legs = [
            name
            for name, rank in (("vector", self.vector_rank), ("keyword", self.keyword_rank))
            if rank is not None
        ]
        return "both" if len(legs) == 2 else legs[0] if legs else "none"

    def explain(self) -> dict[str, Any]:
        return {
            "vector_rank": self.vector_rank,
            "cosine": None if self.plain is None else round(self.plain, 4),
            "centred_cosine": None if self.cosine is None else round(self.cosine, 4),
            "keyword_rank": self.keyword_rank,
            "keyword_coverage": round(self.coverage, 4),
            "identifier_match": round(self.identifier, 4),
            "relevance": round(self.relevance, 4),
            "access": round(self.access, 4),
            "centrality": round(self.centrality, 4),
            "recency": round(self.recency, 4),
            "score": round(self.score, 4),
        }


@dataclass
class Found:
    """One recall's candidates and what the legs found."""

    candidates: dict[int, Candidate] = field(default_factory=dict)
    vector_hits: int = 0
    keyword_hits: int = 0
    embedded_query: bool = False
    warning: str | None = None
    query: vectors.Query | None = None  # the embedded query, as the cosines were taken

    def get(self, mid: int) -> Candidate:
        return self.candidates.setdefault(mid, Candidate(mid))

    @property
    def method(self) -> str:
        if self.vector_hits and self.keyword_hits:
            return "hybrid"
        return "vector" if self.vector_hits else "keyword" if self.keyword_hits else "none"


class _QueryVector:
    """The query's embedding. With `overlap` it runs on a thread of its own while the caller
    runs the keyword leg: the model call releases the GIL (onnxruntime, or an HTTP request to
    Ollama), so the two legs take the longer one's time instead of their sum. The embedder
    check (a cached database read) stays on the caller's thread: a recall holds at most one
    pooled connection at a time."""

    def __init__(self, db: Database, embedder: Embedder, query: str, overlap: bool) -> None:
        self.vector: np.ndarray | None = None
        self.warning: str | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        try:  # a mismatch (Conflict) still raises: it needs a fix
            vectors.check_embedder(db, embedder)
        except EmbedderUnavailable as exc:  # e.g. Ollama down while its model is detected
            self._skip(exc)
            return
        if overlap:
            self._thread = threading.Thread(
                target=self._embed, args=(embedder, query), name="mp-query-vector", daemon=True
            )
            self._thread.start()
        else:
            self._embed(embedder, query)

    def _skip(self, exc: EmbedderUnavailable) -> None:  # keyword search still answers
        self.warning = (
            f"vector search skipped: {exc.message}; results come from keyword search only"
        )

    def _embed(self, embedder: Embedder, query: str) -> None:
        try:
            self.vector = embedder.embed_query(query)
        except EmbedderUnavailable as exc:
            self._skip(exc)
        except BaseException as exc:  # raised on the caller's thread by result()
            self._error = exc

    def result(self) -> tuple[np.ndarray | None, str | None]:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self.vector, self.warning


def _texts(db: Database, ids: set[int]) -> dict[int, str]:
    """Subject, content and keywords of memories, for identifier matching."""
    return {
        mid: lexical.memory_text(r.subject, r.content, decode_strings(r.keywords))
        for mid, r in fetch(db, list(ids)).items()
    }


def _keyword_leg(
    db: Database, cfg: RecallConfig, query: str, f: Filters
) -> tuple[Hits, dict[int, float]]:
    """(id, coverage) best first, and the identifier match of the memories holding one."""
    ids = lexical.identifiers(query)
    hits = db.backend.keyword_scores(db, query, f, cfg, [lexical.terms(i) for i in ids])
    matched = {}
    for mid, body in _texts(db, hits.holding).items() if ids else ():
        match = lexical.identifier_match(ids, body)
        if match:
            matched[mid] = match
    return hits.scored, matched


def keyword_scale(cfg: RecallConfig, embedder: Embedder) -> tuple[float, float]:
    """(keyword_weight, keyword_threshold): configured, else chosen by the embedder kind."""
    weight, floor = KEYWORD_DEFAULTS[bool(getattr(embedder, "semantic", True))]
    return (
        weight if cfg.keyword_weight is None else cfg.keyword_weight,
        floor if cfg.keyword_threshold is None else cfg.keyword_threshold,
    )


def vector_depth(settings: Settings, limit: int) -> int:
    """How many vector hits a recall of `limit` results needs. The score grows with the
    cosine plus non-negative keyword terms, and the keyword leg brings every memory it
    matches with its cosine, so a memory past the `limit`-th vector hit that the keyword leg
    did not find scores below all of those hits: `limit` hits are enough. Access,
    centrality and recency weights can lift deeper hits: then `recall.candidates`."""
    w = settings.weights
    if w["access"] or w["centrality"] or w.get("recency"):
        return max(settings.recall.candidates, limit)
    return limit


def gather(
    db: Database,
    embedder: Embedder,
    settings: Settings,
    query: str,
    f: Filters,
    search: str,
    limit: int,
) -> Found:
    """Candidates from the legs `search` asks for, with every signal filled in."""
    cfg = settings.recall
    depth = vector_depth(settings, limit)
    out = Found()
    pending = None
    if search != "keyword":
        pending = _QueryVector(db, embedder, query, overlap=search != "vector")
    scored: Hits = []
    matched: dict[int, float] = {}
    if search != "vector":
        scored, matched = _keyword_leg(db, cfg, query, f)
    out.keyword_hits = len(scored)
    qvec = None
    if pending is not None:
        qvec, out.warning = pending.result()
    centred = None
    if qvec is not None:
        out.embedded_query = True
        centred = out.query = vectors.query(db, embedder, qvec, f, cfg.centre_weight)
        # an index that returns fewer than wanted (PostgreSQL's HNSW under a filter) is fine
        # as long as it fills the limit: no exact scan then
        hits = vectors.search(db, embedder, centred.vector, depth, f, need=limit)
        for position, (mid, cos) in enumerate(hits, start=1):
            c = out.get(mid)
            c.vector_rank, c.cosine = position, centred.score(cos)
        out.vector_hits = len(hits)
    # A keyword candidate below the threshold adds nothing to its cosine, and when the vector
    # leg filled the limit its cosine is below the limit-th hit's (else the leg had found it):
    # it cannot rank, so it is neither kept nor scored.
    floor = None
    if qvec is not None and out.vector_hits >= depth == limit:
        floor = keyword_scale(cfg, embedder)[1]
    for position, (mid, cov) in enumerate(scored, start=1):
        c = out.candidates.get(mid)
        if c is None:
            if floor is not None and cov <= floor and mid not in matched:
                continue
            c = out.candidates[mid] = Candidate(mid)
        c.keyword_rank, c.coverage = position, cov
        c.identifier = matched.get(mid, 0.0)
    if centred is not None and scored:  # keyword-only candidates: from stored vectors
        missing = [m for m, c in out.candidates.items() if c.cosine is None]
        for mid, cos in vectors.similarities(db, embedder, centred.vector, missing).items():
            out.candidates[mid].cosine = centred.score(cos)
    return out


def _popularity(db: Database, ids: list[int]) -> dict[int, tuple[float, float]]:
    """(access, centrality) in [0, 1] per memory: deliberate reads decaying with time since
    the last one, and deliberate (not auto-linked) incoming edges; both on fixed scales."""
    if not ids:
        return {}
    now = utcnow()
    stmt = text(
        f"SELECT m.id, m.access_count, m.last_accessed_at, coalesce(d.indeg, 0) "
        f"FROM memories m LEFT JOIN ({IN_DEGREE_SQL}) d ON d.target_id = m.id "
        "WHERE m.id IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    out = {}
    with db.read() as conn:
        for mid, count, last, indeg in conn.execute(stmt, {"ids": ids, "auto_false": False}):
            access = min(1.0, math.log1p(count or 0) / math.log1p(ACCESS_SCALE))
            if access and last is not None:
                age = (now - decode_time(last)).total_seconds()
                access *= 0.5 ** (max(age, 0.0) / ACCESS_HALF_LIFE.total_seconds())
            centrality = min(1.0, math.log1p(indeg) / math.log1p(CENTRALITY_SCALE))
            out[int(mid)] = (access, centrality)
    return out


def _recency(db: Database, ids: list[int], half_life_days: float) -> dict[int, float]:
    """0.5 ** (age / half-life) per memory, age from occurred_at (else created_at) to now;
    foundational memories (and future events) count 1."""
    if not ids:
        return {}
    now = utcnow()
    stmt = text(
        "SELECT id, foundational, coalesce(occurred_at, created_at) AS at FROM memories "
        "WHERE id IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    half_life = half_life_days * 86400.0
    out = {}
    with db.read() as conn:
        for mid, foundational, at in conn.execute(stmt, {"ids": ids}):
            age = max(0.0, (now - decode_time(at)).total_seconds()) if at is not None else 0.0
            out[int(mid)] = 1.0 if foundational else 0.5 ** (age / half_life)
    return out


def plain_cosines(db: Database, embedder: Embedder, found: Found, top: list[Candidate]) -> None:
    """The plain cosine of each result, which users read as "how similar" (1 for the same
    text); ranking used the centred one."""
    if found.query is None or not found.query.centred:
        for c in top:
            c.plain = c.cosine
        return
    ids = [c.id for c in top if c.cosine is not None]
    plain = vectors.similarities(db, embedder, found.query.plain, ids) if ids else {}
    for c in top:
        c.plain = plain.get(c.id)


def rank(
    db: Database, settings: Settings, embedder: Embedder, found: Found, search: str
) -> list[Candidate]:
    """Score every candidate (see the module docstring), best first."""
    cfg, w = settings.recall, settings.weights
    weight, floor = keyword_scale(cfg, embedder)
    pool = list(found.candidates.values())
    if w["access"] or w["centrality"]:
        pop = _popularity(db, [c.id for c in pool])
        for c in pool:
            c.access, c.centrality = pop.get(c.id, (0.0, 0.0))
    if w.get("recency"):
        ages = _recency(db, [c.id for c in pool], cfg.half_life_days)
        for c in pool:
            c.recency = ages.get(c.id, 0.0)
    for c in pool:
        keyword = max(0.0, c.coverage - floor) / (1.0 - floor)
        lexical_part = weight * keyword + cfg.identifier_weight * c.identifier
        if search == "vector":
            c.relevance = c.cosine or 0.0
        elif search == "keyword" or not found.embedded_query:
            c.relevance = lexical_part
        else:
            c.relevance = (c.cosine or 0.0) + lexical_part
        c.score = (
            w["similarity"] * c.relevance
            + w["access"] * c.access
            + w["centrality"] * c.centrality
            + w.get("recency", 0.0) * c.recency
        )
    pool.sort(key=lambda c: (-c.score, c.id))
    return pool


def recall(
    db: Database,
    embedder: Embedder,
    settings: Settings,
    caller: Caller,
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
    limit: Annotated[
        int, P("Maximum results (at most recall.max_limit, 100 by default).", minimum=1)
    ] = 20,
    detail_level: DetailLevel = "verbose",
    search: Annotated[
        Search,
        P(
            "hybrid (default): meaning and exact words; vector: meaning "
            "only; keyword: exact words only."
        ),
    ] = "hybrid",
    explain: Annotated[
        bool,
        P(
            "Add each result's signals: vector rank and cosine, keyword "
            "rank and coverage, identifier match, access, centrality, score."
        ),
    ] = False,
    synthesize: Annotated[bool, P("Summarise the results with the configured LLM.")] = False,
    include_graph: Annotated[bool, P("Add graph context for the top results.")] = True,
    graph_top_n: Annotated[
        int, P("How many top results get graph context.", minimum=0, maximum=100)
    ] = 5,
    graph_depth: Annotated[int, P("Graph hops (1-5).", minimum=0, maximum=5)] = 1,
    graph_mode: GraphMode = "summary",
    since: Since = None,
    until: Until = None,
    dates: Annotated[
        bool,
        P(
            "Understand a relative date in the query (today, yesterday, N days ago, last N "
            "days, this/last week, month or year, in March [2026]): it becomes since/until "
            "(UTC days; explicit since/until win) and is searched no further."
        ),
    ] = False,
) -> dict[str, Any]:
    """Search memories by meaning and by exact words (hybrid vector + keyword search), with
    optional graph context. Each result says how it was found."""
    if limit > settings.max_limit:
        raise InvalidParams(
            f"memory_recall: limit {limit} is above the maximum "
            f"{settings.max_limit}; ask for fewer results or page with filters"
        )
    start, end = time_bounds("memory_recall", since, until)
    span = when.find(query, utcnow()) if dates else None
    if span is not None:
        query = span.query
        start = start or span.since
        end = end or span.until
    with db.read():  # every read below shares this one pooled connection
        seen = access_for(db, caller)
        f = Filters.make(
            instance_id,
            project,
            memory_type,
            subject,
            min_foundational,
            include_archived,
            seen,
            since=start,
            until=end,
        )
        found = gather(db, embedder, settings, query, f, search, limit)
        top = rank(db, settings, embedder, found, search)[:limit]
        plain_cosines(db, embedder, found, top)
        rows = fetch(db, [c.id for c in top])
        memories = []
        for c in top:
            if c.id not in rows:
                continue  # deleted between the search and the read
            item = memory_dict(rows[c.id], detail_level)
            item["found_by"] = c.found_by
            item["score"] = round(c.score, 4)
            if c.plain is not None:
                item["similarity_score"] = round(c.plain, 4)
            if explain:
                item["explain"] = c.explain()
            memories.append(item)
        out: dict[str, Any] = {
            "memories": memories,
            "count": len(memories),
            "search_method": found.method,
        }
        if found.warning:
            out["warning"] = found.warning
        if span is not None:
            out["dates"] = {"phrase": span.phrase, "since": iso(start), "until": iso(end)}
        top_ids = [m["id"] for m in memories]
        if include_graph and graph_top_n > 0 and graph_depth > 0 and top_ids:
            ctx = graph.context(db, top_ids[:graph_top_n], graph_depth, graph_mode, access=seen)
            if ctx:
                out["graph_context"] = ctx
    if synthesize:
        out["note"] = LLM_NOTE
    return out
