"""memory_recall on both backends: semantic and keyword search, every filter, limits and scores."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from memory_palace import Palace
from memory_palace.db import postgres
from memory_palace.db.engine import Database
from memory_palace.db.filters import Access, Filters
from memory_palace.db.tables import MEMORIES
from memory_palace.db.values import utcnow
from memory_palace.embeddings import HashingEmbedder
from memory_palace.errors import EmbedderUnavailable, InvalidParams
from memory_palace.services.recall import KEYWORD_DEFAULTS
from sqlalchemy import event, text

from tests.fixtures.db import (
    BACKENDS,
    POSTGRES,
    POSTGRES_VECTOR8,
    Statements,
    build_palace,
    pg_url_for,
)

MODEL = "hash:v1-384"
BULK_ROWS = 6000


def add(palace: Palace, content: str, **kw: Any) -> int:
    kw.setdefault("auto_link", False)
    return palace.call("memory_set", {"content": content, **kw})["id"]


def recall(palace: Palace, query: str, **kw: Any) -> list[tuple[int, str]]:
    out = palace.call("memory_recall", {"query": query, "include_graph": False, **kw})
    return [(m["id"], m["found_by"]) for m in out["memories"]]


def ids(palace: Palace, query: str, **kw: Any) -> list[int]:
    return sorted(i for i, _ in recall(palace, query, **kw))


def test_semantic_recall_ranks_shared_words_first(palace: Palace) -> None:
    cat = add(palace, "the cat sleeps on the warm windowsill all afternoon")
    car = add(palace, "the car needs new winter tyres before december")
    tax = add(palace, "file the tax return before the end of april")
    assert recall(palace, "where does the cat sleep")[0] == (cat, "both")
    # a misspelt query: no keyword hit, the character n-grams of the embedding still find it
    out = palace.call("memory_recall", {"query": "windwsill aftrnoon", "include_graph": False})
    assert out["search_method"] == "vector"
    assert next((m["id"], m["found_by"]) for m in out["memories"]) == (cat, "vector")
    assert {m["id"] for m in out["memories"]} == {cat, car, tax}
    assert recall(palace, "winter tyres for the car")[0] == (car, "both")


def test_keyword_recall_finds_exact_terms_vectors_miss(palace: Palace) -> None:
    err = add(palace, "the proxy drops idle sockets; clients log ERR_CONN_RESET after 60s")
    ticket = add(palace, "PROJ-4711 tracks the flaky login test")
    add(palace, "reset the connection pool when the proxy restarts")
    db = palace.database()
    with db.write() as conn:  # vectors cannot find these any more: only keywords can
        conn.execute(
            text(
                "UPDATE memories SET embedding = NULL, embedding_model = NULL WHERE id IN (:a, :b)"
            ),
            {"a": err, "b": ticket},
        )
    # only keyword search can find them; RRF ranks a keyword-only rank 1 like a vector-only one
    for query, want in (("ERR_CONN_RESET", err), ("PROJ-4711", ticket)):
        hits = recall(palace, query)
        assert [i for i, how in hits if how != "vector"] == [want], query
        assert dict(hits)[want] == "keyword"
    out = palace.call("memory_recall", {"query": "PROJ-4711", "include_graph": False})
    assert out["search_method"] == "hybrid"


def test_score_is_cosine_plus_keyword_coverage_and_explains_itself(palace: Palace) -> None:
    a = add(palace, "grafana dashboards live in the monitoring repo")
    add(palace, "lunch is at noon")
    out = palace.call(
        "memory_recall",
        {"query": "grafana dashboards monitoring repo", "include_graph": False, "explain": True},
    )
    top = out["memories"][0]
    assert (top["id"], top["found_by"]) == (a, "both")
    why = top["explain"]
    assert why["vector_rank"] == 1 and why["keyword_rank"] == 1
    assert why["cosine"] == pytest.approx(top["similarity_score"], abs=1e-4)
    assert 0 < why["keyword_coverage"] <= 1 and why["identifier_match"] == 0
    # relevance = (centred) cosine + weight * coverage above the threshold, rescaled; the
    # defaults depend on the embedder (the hashing one is not semantic); access and centrality
    # weigh 0. Two memories are too few to centre on: the centred cosine is the plain one.
    weight, floor = KEYWORD_DEFAULTS[False]
    keyword = (why["keyword_coverage"] - floor) / (1 - floor)
    assert why["centred_cosine"] == why["cosine"]
    assert why["relevance"] == pytest.approx(why["centred_cosine"] + weight * keyword, abs=1e-3)
    assert top["score"] == pytest.approx(why["relevance"], abs=1e-3) == why["score"]
    # the second memory shares no word: the keyword leg adds nothing to it
    second = out["memories"][1]["explain"]
    assert second["keyword_rank"] is None and second["keyword_coverage"] == 0


def test_exact_match_beats_a_popular_near_match(make_palace, db_url: str) -> None:
    # even with access weighted in, reads of a near match cannot lift it over the exact one
    palace = make_palace(db_url, recall={"weights": {"similarity": 0.7, "access": 0.3}})
    near = add(palace, "sentinel zebra A written first by the other writer")
    exact = add(palace, "sentinel zebra B written last")
    for _ in range(50):
        palace.call("memory_get", {"memory_ids": near, "include_graph": False})
    out = palace.call(
        "memory_recall",
        {"query": "sentinel zebra B written last", "include_graph": False, "explain": True},
    )
    assert [m["id"] for m in out["memories"]][:2] == [exact, near]
    assert out["memories"][1]["explain"]["access"] > 0.8  # counted, capped, not enough


def test_centrality_counts_deliberate_links_only(make_palace, db_url: str) -> None:
    palace = make_palace(db_url, recall={"weights": {"similarity": 0.85, "centrality": 0.15}})
    target = add(palace, "the incident runbook lives in the wiki")
    others = [add(palace, f"unrelated note number {i}") for i in range(5)]
    db = palace.database()

    def score() -> float:
        hit = palace.call(
            "memory_recall", {"query": "incident runbook wiki", "include_graph": False}
        )["memories"][0]
        assert hit["id"] == target
        return hit["score"]

    base = score()
    with db.write() as conn:
        for o in others:
            conn.execute(
                text(
                    "INSERT INTO memory_edges (created_at, source_id, target_id, "
                    "relation_type, strength, auto_linked) VALUES "
                    "(:now, :s, :t, 'relates_to', 0.9, :a)"
                ),
                {"now": db.backend.encode("time", utcnow()), "s": o, "t": target, "a": True},
            )
    assert score() == base
    for o in others:
        palace.call(
            "memory_link", {"source_id": o, "target_id": target, "relation_type": "derived_from"}
        )
    assert score() > base


def test_recall_never_counts_accesses_and_notes_synthesis(palace: Palace) -> None:
    a = add(palace, "the staging database is refreshed on sundays")
    out = palace.call(
        "memory_recall",
        {"query": "staging database refresh", "synthesize": True, "include_graph": False},
    )
    assert "note" in out and out["memories"][0]["id"] == a
    palace.call("memory_recall", {"query": "staging database refresh"})
    got = palace.call("memory_get", {"memory_ids": a, "include_graph": False})["memory"]
    assert got["access_count"] == 1  # the deliberate read only


FILLER_WORDS = (
    "deploy cache service latency backup restore invoice customer ticket release "
    "staging cluster queue worker timeout retry token vault metric alert"
)


def filler(palace: Palace, n: int, seed: int = 3) -> None:
    """n memories of mixed vocabulary: memory_set's INSERT for all of them in one transaction,
    then their vectors from memory_reembed in batches (ranking is under test, not the write
    path, which took 30 ms a row on PostgreSQL)."""
    rng = np.random.default_rng(seed)
    words = FILLER_WORDS.split()
    now = utcnow()
    rows = [
        {
            "created_at": now,
            "updated_at": now,
            "projects": ["bulk"],
            "subject": f"note {i}",
            "content": f"note {i}: " + " ".join(rng.choice(words, size=8)),
            "keywords": [str(rng.choice(words))],
        }
        for i in range(n)
    ]
    db = palace.database()
    with db.write() as conn:
        conn.execute(
            text(db.backend.insert_sql(MEMORIES, rows[0])),
            [db.backend.encode_row(MEMORIES, r) for r in rows],
        )
    done = palace.call("memory_reembed", {"all_memories": True, "dry_run": False})
    assert done["reembedded"] == n


@pytest.mark.slow
def test_unique_identifier_ranks_first_among_a_thousand(palace: Palace) -> None:
    filler(palace, 1000)
    in_content = add(
        palace, "the nightly export failed with KW200 after the vault rotated", project="bulk"
    )
    in_keywords = add(
        palace, "the export job retried three times", project="bulk", keywords=["XQ-7781"]
    )
    near = add(palace, "KW2000 and XQ-77810 are unrelated near misses", project="bulk")
    for query, want in (
        ("KW200", in_content),
        ("XQ-7781", in_keywords),
        ("what happened with KW200", in_content),
        ("status of XQ-7781", in_keywords),
    ):
        hits = recall(palace, query, limit=3)
        assert hits[0][0] == want, (query, hits)
        assert near not in [i for i, _ in hits[:1]]
    out = palace.call("memory_recall", {"query": "KW200", "limit": 1, "include_graph": False})
    assert [m["id"] for m in out["memories"]] == [in_content]


def test_keyword_only_rank_one_is_in_the_top_three(palace: Palace) -> None:
    for i in range(30):
        add(palace, f"the quarterly offsite agenda item {i} about planning and budgets")
    hit = add(palace, "zygomorphic orchids need filtered light")
    db = palace.database()
    with db.write() as conn:  # only the keyword leg can find it now
        conn.execute(text("UPDATE memories SET embedding = NULL WHERE id = :i"), {"i": hit})
    out = palace.call(
        "memory_recall",
        {"query": "which plant is zygomorphic", "include_graph": False, "explain": True},
    )
    top3 = out["memories"][:3]
    assert hit in [m["id"] for m in top3]
    mine = next(m for m in top3 if m["id"] == hit)
    assert mine["found_by"] == "keyword" and mine["explain"]["keyword_rank"] == 1


def test_repeated_recalls_do_not_change_other_rankings(palace: Palace) -> None:
    for i in range(20):
        add(palace, f"generic chat turn number {i}: wow that sounds amazing")
    queries = ["amazing chat", "turn number 7", "what sounds amazing"]
    before = {q: recall(palace, q, limit=10) for q in queries}
    for _ in range(20):
        recall(palace, "wow amazing", limit=10)
    assert {q: recall(palace, q, limit=10) for q in queries} == before


def test_a_short_recall_is_the_head_of_a_long_one(palace: Palace) -> None:
    """The vector leg fetches only `limit` hits (recall.vector_depth): what it leaves out
    could not have ranked in the top `limit` anyway, so a recall of 5 is the first 5 of a
    recall of 60, in every search mode and under a filter. Four words of ten make many
    memories alike (equal cosines): ties go by id in every leg."""
    rng = np.random.default_rng(3)
    words = [
        "harbor",
        "crane",
        "schedule",
        "pilot",
        "tide",
        "cargo",
        "berth",
        "manifest",
        "customs",
        "ledger",
    ]
    for i in range(120):
        text_ = " ".join(rng.choice(words, size=4)) + f" note {i}"
        add(palace, text_, project="odd" if i % 2 else "even")

    def ranked(query: str, limit: int, **extra: Any) -> list[tuple[int, float]]:
        params = {"query": query, "include_graph": False, "limit": limit, **extra}
        return [(m["id"], m["score"]) for m in palace.call("memory_recall", params)["memories"]]

    for query in ("pilot tide", "customs ledger cargo", "note 17", "an unrelated question"):
        for extra in ({}, {"project": "odd"}, {"search": "vector"}):
            assert ranked(query, 5, **extra) == ranked(query, 60, **extra)[:5], (query, extra)


def test_search_modes(palace: Palace) -> None:
    err = add(palace, "clients log ERR_CONN_RESET when the proxy restarts")
    cat = add(palace, "the cat sleeps on the warm windowsill")
    assert recall(palace, "ERR_CONN_RESET", search="keyword") == [(err, "keyword")]
    vec = recall(palace, "where does the cat sleep", search="vector")
    assert vec[0] == (cat, "vector") and {how for _, how in vec} == {"vector"}


@pytest.fixture
def filtered(palace: Palace) -> tuple[Palace, dict[str, int]]:
    m = {
        "a_c": add(
            palace,
            "widget alpha",
            project="a_c",
            memory_type="code_python",
            subject="Alpha Notes",
            instance_id="prime",
        ),
        "abc": add(
            palace,
            "widget beta",
            project="abc",
            memory_type="code-js",
            subject="beta notes",
            instance_id="other",
        ),
        "pct": add(
            palace,
            "widget gamma",
            project="100%",
            memory_type="fact",
            subject="50% off",
            foundational=True,
        ),
        "1000": add(
            palace,
            "widget delta",
            project=["1000", "shared"],
            memory_type="decision",
            subject="under_score",
        ),
        "arch": add(palace, "widget epsilon", project="a_c", memory_type="code_python"),
    }
    palace.call("memory_archive", {"memory_ids": [m["arch"]], "dry_run": False})
    return palace, m


def test_project_filter_is_exact_and_overlaps(filtered: tuple[Palace, dict[str, int]]) -> None:
    palace, m = filtered
    assert ids(palace, "widget") == sorted([m["a_c"], m["abc"], m["pct"], m["1000"]])
    assert recall(palace, "widget", project="a_c") == [(m["a_c"], "both")]
    assert ids(palace, "widget", project="abc") == [m["abc"]]
    assert ids(palace, "widget", project="100%") == [m["pct"]]
    assert ids(palace, "widget", project="1000") == [m["1000"]]
    assert ids(palace, "widget", project="shared") == [m["1000"]]
    for wildcard in ("a%", "a_", "_bc", "%", "10%", "100_"):
        assert recall(palace, "widget", project=wildcard) == [], wildcard
    assert ids(palace, "widget", project=["a_c", "1000"]) == sorted([m["a_c"], m["1000"]])
    assert ids(palace, "widget", project=["a%", "100%"]) == [m["pct"]]
    assert recall(palace, "widget", project=[]) == []
    assert ids(palace, "widget", project="a_c", include_archived=True) == sorted(
        [m["a_c"], m["arch"]]
    )


def test_type_subject_instance_foundational_filters(
    filtered: tuple[Palace, dict[str, int]],
) -> None:
    palace, m = filtered
    assert ids(palace, "widget", memory_type="code*") == sorted([m["a_c"], m["abc"]])
    assert ids(palace, "widget", memory_type="code_python") == [m["a_c"]]
    assert ids(palace, "widget", memory_type="code_*") == [m["a_c"]]  # '_' is literal
    assert recall(palace, "widget", memory_type="code?python") == []  # only '*' is a wildcard
    assert recall(palace, "widget", memory_type="code[_]python") == []
    assert recall(palace, "widget", memory_type="CODE*") == []  # types are case-sensitive
    assert recall(palace, "widget", memory_type="code") == []
    assert ids(palace, "widget", memory_type="*") == ids(palace, "widget")
    assert ids(palace, "widget", memory_type="*i*") == sorted([m["1000"]])
    assert ids(palace, "widget", subject="alpha") == [m["a_c"]]  # case-insensitive contains
    assert ids(palace, "widget", subject="NOTES") == sorted([m["a_c"], m["abc"]])
    assert ids(palace, "widget", subject="%") == [m["pct"]]
    assert ids(palace, "widget", subject="_") == [m["1000"]]
    assert recall(palace, "widget", subject="r%s") == []
    assert recall(palace, "widget", instance_id="prime") == [(m["a_c"], "both")]
    assert recall(palace, "widget", min_foundational=True) == [(m["pct"], "both")]
    assert ids(palace, "widget", include_archived=True, memory_type="code_python") == sorted(
        [m["a_c"], m["arch"]]
    )
    assert recall(palace, "widget", project="a_c", instance_id="other") == []


def test_limit_cap(palace: Palace) -> None:
    add(palace, "something to find")
    with pytest.raises(InvalidParams, match="limit 101 is above the maximum 100"):
        palace.call("memory_recall", {"query": "something", "limit": 101})
    assert palace.call("memory_recall", {"query": "something", "limit": 100})["count"] == 1


def bulk_insert(db: Database, n: int, every: int, seed: int = 7) -> np.ndarray:
    """Insert n embedded rows fast (one statement batch); every `every`-th is in project 'ten'."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 384)).astype(np.float32)
    vecs = centres[rng.integers(0, 20, n)] + 0.6 * rng.normal(size=(n, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    now = utcnow()
    rows = [
        {
            "created_at": now,
            "updated_at": now,
            "instance_id": "default",
            "projects": ["ten"] if i % every == 0 else ["rest"],
            "memory_type": "fact",
            "content": f"bulk row {i}",
            "embedding": vecs[i],
            "embedding_model": MODEL,
            "embedding_dim": 384,
        }
        for i in range(n)
    ]
    insert = text(db.backend.insert_sql(MEMORIES, rows[0]))
    with db.write() as conn:
        if db.backend is postgres.BACKEND:  # one HNSW build after the rows: 3x faster
            conn.exec_driver_sql("DROP INDEX idx_memories_embedding_hnsw")
        conn.execute(insert, [db.backend.encode_row(MEMORIES, r) for r in rows])
        if db.backend is postgres.BACKEND:
            conn.exec_driver_sql(postgres.HNSW_INDEX)
        conn.exec_driver_sql("ANALYZE memories")
    return vecs


@dataclass
class Bulk:
    palace: Palace
    vecs: np.ndarray  # the vector of each row
    id_of: dict[int, int]  # row number -> memory id
    kind: str  # the backend parameter


@pytest.fixture(scope="module")
def bulk(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Bulk:
    """BULK_ROWS embedded rows in a database of the backend given by indirect parametrisation,
    written once per module: the tests only read it."""
    data_dir = tmp_path_factory.mktemp("bulk")
    if request.param.startswith("postgres"):
        fixture = "pg_server_url" if request.param == "postgres" else "pg_vector8_url"
        server = request.getfixturevalue(fixture)
        url = pg_url_for(server, f"mp_test_{uuid.uuid4().hex[:12]}")
    else:
        url = f"sqlite:///{data_dir / 'memories.db'}"
    palace = build_palace(data_dir / "data", url)
    db = palace.database()
    vecs = bulk_insert(db, BULK_ROWS, every=10)
    with db.read() as conn:
        id_of = {
            int(r[1].split()[-1]): int(r[0])
            for r in conn.execute(text("SELECT id, content FROM memories"))
        }
    return Bulk(palace, vecs, id_of, request.param)


@pytest.mark.parametrize("bulk", [*BACKENDS, POSTGRES_VECTOR8], indirect=True)
def test_filtered_recall_fills_the_limit(bulk: Bulk) -> None:
    check_filtered_recall(bulk)


@pytest.mark.parametrize("bulk", [POSTGRES, POSTGRES_VECTOR8], indirect=True)
@pytest.mark.parametrize("path", ["hnsw", "fallback"])
def test_filtered_hnsw_recall_fills_the_limit(
    bulk: Bulk, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no exact scan up front: ef_search is sized for the filter (750 here)
    monkeypatch.setattr(postgres, "EXACT_SCAN_ROWS", 0)
    if path == "fallback":  # ef_search too small to fill: the exact scan must take over
        monkeypatch.setattr(postgres, "OVERFETCH", 0.2)
    check_filtered_recall(bulk)


@pytest.mark.parametrize("bulk", [POSTGRES, POSTGRES_VECTOR8], indirect=True)
def test_hnsw_may_return_fewer_than_wanted_but_never_fewer_than_needed(
    bulk: Bulk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a filter, HNSW without iterative scans (pgvector < 0.8) keeps what its largest
    ef_search leaves: fewer than the k wanted is accepted when it holds the `need`ed rows,
    instead of an exact scan. With iterative scans (>= 0.8) the index pass itself fills k."""
    monkeypatch.setattr(postgres, "EXACT_SCAN_ROWS", 0)
    monkeypatch.setattr(postgres, "EF_MAX", 300)  # leaves ~30 of the 10 % filter
    db, vecs, id_of = bulk.palace.database(), bulk.vecs, bulk.id_of
    iterative = postgres.pg_iterative(db.facts.get("pgvector_version"))
    assert iterative or bulk.kind != "postgres-pgvector-0.8"
    ten = np.array([i for i in range(BULK_ROWS) if i % 10 == 0])
    rng = np.random.default_rng(2)
    statements = Statements(db.engine)
    with db.read() as conn:  # the searches below share this connection
        # at 6,000 rows the planner would rather scan the filter's rows than the HNSW index
        conn.exec_driver_sql("SET enable_seqscan = off; SET enable_bitmapscan = off")
        try:
            for _ in range(3):
                q = vecs[rng.integers(0, BULK_ROWS)] + 0.3 * rng.normal(size=384)
                q = (q / np.linalg.norm(q)).astype(np.float32)
                f = Filters.make(project="ten")
                start = len(statements.seen)
                some = db.backend.vector_search(db, MODEL, 384, q, 100, f, need=20)
                assert 20 <= len(some) <= 100 and (len(some) == 100) is iterative
                want = {id_of[int(i)] for i in ten[np.argsort(-(vecs[ten] @ q))[:20]]}
                assert len(want & {h for h, _ in some[:20]}) >= 14  # approximate, ef 300
                full = db.backend.vector_search(db, MODEL, 384, q, 100, f)  # need = k
                assert len(full) == 100
                # the exact scan (OFFSET 0 keeps the index out) ran only where HNSW fell short
                exact = statements.since(start, containing="OFFSET 0")
                assert len(exact) == (0 if iterative else 1), exact
                asked = statements.since(start, containing="hnsw.iterative_scan")
                assert bool(asked) is iterative
        finally:
            conn.exec_driver_sql("RESET enable_seqscan; RESET enable_bitmapscan")
            statements.close()


def check_filtered_recall(bulk: Bulk) -> None:
    palace, vecs, id_of, n = bulk.palace, bulk.vecs, bulk.id_of, BULK_ROWS
    db = palace.database()
    ten = np.array([i for i in range(n) if i % 10 == 0])
    rng = np.random.default_rng(1)
    for trial in range(5):
        q = vecs[rng.integers(0, n)] + 0.3 * rng.normal(size=384).astype(np.float32)
        q /= np.linalg.norm(q)
        hits = db.backend.vector_search(db, MODEL, 384, q, 50, Filters.make(project="ten"))
        assert len(hits) == 50
        exact = ten[np.argsort(-(vecs[ten] @ q))[:50]]
        want = {id_of[int(i)] for i in exact}
        overlap = len(want & {h for h, _ in hits}) / 50
        assert overlap >= 0.9, (trial, overlap)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    out = palace.call(
        "memory_recall",
        {"query": "bulk row", "project": "ten", "limit": 100, "include_graph": False},
    )
    assert out["count"] == 100
    assert all(mem["projects"] == ["ten"] for mem in out["memories"])
    unfiltered = db.backend.vector_search(db, MODEL, 384, vecs[3], 50, Filters.make())
    assert len(unfiltered) == 50 and unfiltered[0][0] == id_of[3]


# (query, the memories its keyword half must find): operators of FTS5 and websearch_to_tsquery are
# plain words, OR-ed; the vector half finds both memories whatever the query.
OPERATOR_QUERIES = [
    ('"quoted phrase" here', {"quoted"}),
    ("-verbose flag", {"verbose"}),  # not 'everything without verbose, or flag'
    ("a OR b AND NOT c", set()),
    ("it's: (x & y) | !z <-> w*", set()),
    ("the", set()),  # only a stop word
    ("???", set()),
    ("NEAR(a b)", set()),
    ("col:value ^start", set()),
]


@pytest.mark.parametrize(
    "query, by_keyword", OPERATOR_QUERIES, ids=[q for q, _ in OPERATOR_QUERIES]
)
def test_operator_like_queries_are_plain_words(
    palace: Palace, query: str, by_keyword: set[str]
) -> None:
    names = {
        add(palace, "the verbose flag prints every request"): "verbose",
        add(palace, "a quoted phrase about lunch"): "quoted",
    }
    hits = recall(palace, query)
    assert sorted(names[i] for i, _ in hits) == ["quoted", "verbose"]
    assert {names[i] for i, how in hits if how != "vector"} == by_keyword


def test_pg_ef_search_sizing() -> None:
    assert postgres.pg_ef_search(50, 100_000, 100_000) == postgres.EF_MIN
    assert postgres.pg_ef_search(50, 10_000, 100_000) == 750
    assert postgres.pg_ef_search(50, 5_000, 100_000) is None  # beyond EF_MAX: exact scan
    assert postgres.pg_ef_search(10, 0, 0) is None


class FailingQueryEmbedder(HashingEmbedder):
    """Stores fine, but raises `error` when a query comes."""

    def __init__(self, dim: int, error: Exception) -> None:
        super().__init__(dim)
        self.error = error

    def embed_query(self, text: str) -> np.ndarray:
        raise self.error


def test_recall_falls_back_to_keywords_when_the_embedder_is_down(
    make_palace: Callable[..., Palace], db_url: str
) -> None:
    palace = make_palace(
        db_url,
        embedder=FailingQueryEmbedder(
            384, EmbedderUnavailable("cannot reach Ollama at http://localhost:11434; start it")
        ),
    )
    hit = add(palace, "the VPN endpoint is vpn.example.org")
    add(palace, "unrelated lunch note")
    out = palace.call("memory_recall", {"query": "VPN endpoint", "include_graph": False})
    assert [(m["id"], m["found_by"]) for m in out["memories"]] == [(hit, "keyword")]
    assert out["search_method"] == "keyword" and "cannot reach Ollama" in out["warning"]


def test_keyword_scores_are_the_best_ranked_that_pass_the_filter(palace: Palace) -> None:
    """Keyword scores cover exactly the memories the filter allows, best first, cut at the
    cap; statistics come from that set."""
    for i in range(40):
        words = " ".join(["harbor"] * (1 + i % 5))
        add(palace, f"{words} crane schedule {i}", project="ten" if i % 10 == 0 else "rest")
    db = palace.database()
    with db.write() as conn:  # most are another agent's private memories now
        conn.execute(
            text(
                "UPDATE memories SET visibility = 'private', instance_id = 'other' "
                "WHERE id % 4 <> 0"
            )
        )
    recall_cfg = palace.settings.recall

    def scored(f: Filters, cap: int) -> list[int]:
        cfg = recall_cfg.model_copy(update={"keyword_candidates": cap})
        return [m for m, _ in db.backend.keyword_scores(db, "harbor", f, cfg, []).scored]

    everything = scored(Filters.make(), 1000)
    assert len(everything) == 40
    mine = Filters.make(access=Access("me"))
    for f, cap in (
        (Filters.make(), 8),
        (Filters.make(project="ten"), 3),
        (Filters.make(), 40),
        (mine, 4),  # visibility drops most of what ranks first
        (mine, 30),
    ):
        allowed = set(scored(f, 1000))
        assert (allowed <= set(everything) and len(allowed) < 40) or f == Filters.make()
        assert scored(f, cap) == [m for m in everything if m in allowed][:cap], (f, cap)
    # A word in every memory of the filter is worth little there, though rare elsewhere.
    pilot = add(palace, "harbor pilot boarding", project="ten")
    ten = db.backend.keyword_scores(db, "crane pilot", Filters.make(project="ten"), recall_cfg, [])
    assert ten.scored[0][0] == pilot and ten.total == 5
    assert all(cov < ten.scored[0][1] / 2 for _, cov in ten.scored[1:])


def test_a_word_postgres_drops_is_weighed_as_common_as_it_is(palace: Palace) -> None:
    """ "her" is one of PostgreSQL's stop words (not ours): its index finds no memory by it, so
    only the candidates some other word found can count it. Counted among them alone, it
    looked rare and outweighed the word that found them; its weight must follow how common it
    is in the filter, as on SQLite, where every memory is counted."""
    for i in range(40):
        words = ["harbor", f"note{i}"] + ["her"] * (i % 2 == 0) + ["decide"] * (i % 5 == 0)
        add(palace, " ".join(words))
    db = palace.database()
    hits = db.backend.keyword_scores(db, "decide her", Filters.make(), palace.settings.recall, [])
    with db.read() as conn:
        body = dict(conn.execute(text("SELECT id, content FROM memories")).all())
    both = [c for m, c in hits.scored if "decide" in body[m] and "her" in body[m]]
    alone = [c for m, c in hits.scored if "decide" in body[m] and "her" not in body[m]]
    assert len(both) == len(alone) == 4
    # "her" is in half the memories, "decide" in a fifth: "her" adds under half of what
    # "decide" is worth (counted among the 8 candidates alone, it more than doubled it)
    assert max(both) < 1.5 * min(alone), (both, alone)


def test_capped_keyword_candidates_keep_the_rare_words(palace: Palace) -> None:
    """When more memories match than the keyword leg scores, the ones it keeps hold the
    query's rare words, not the common word many times over."""
    rare = add(palace, "the zeppelin mooring mast")
    for i in range(30):
        add(palace, f"harbor harbor harbor crane {i}")
    db = palace.database()
    with db.write() as conn:  # the statistics PostgreSQL's autovacuum keeps on a live table
        conn.execute(text("ANALYZE memories"))
    cfg = palace.settings.recall.model_copy(update={"keyword_candidates": 10})
    hits = db.backend.keyword_scores(db, "harbor zeppelin", Filters.make(), cfg, [])
    assert hits.scored[0][0] == rare, hits.scored


@pytest.mark.parametrize(
    "query",
    [
        "the of and",  # stop words only
        "\\\\ '' :: & | !",  # tsquery operators, quotes and backslashes, no word
        "o'neil's a\\b foo:AB (x|y) !z <-> *",
        "zeppelin " * 300,
    ],
)
def test_any_text_is_a_query(palace: Palace, query: str) -> None:
    add(palace, "o'neil moored the zeppelin at foo")
    for search in ("keyword", "hybrid"):
        out = palace.call("memory_recall", {"query": query, "search": search})
        assert isinstance(out["memories"], list)
        if "zeppelin" in query or "neil" in query:
            assert len(out["memories"]) == 1, (query, search)


def test_keyword_search_sees_other_processes_changes_and_forgets(
    make_palace: Callable[..., Palace], db_url: str
) -> None:
    """Another process's edits and deletions reach this process's keyword search at once,
    and a deleted memory's words leave this process's keyword index."""
    mine, other = make_palace(db_url), make_palace(db_url)
    mid = add(mine, "the zebra crossing near the quarry")
    add(mine, "a quarry of granite")
    assert [m for m, _ in recall(mine, "zebra", search="keyword")] == [mid]
    other.call(
        "memory_update",
        {"memory_id": mid, "content": "the yak pasture near the quarry", "reason": "moved"},
    )
    assert recall(mine, "zebra", search="keyword") == []
    assert [m for m, _ in recall(mine, "yak", search="keyword")] == [mid]
    granite = recall(mine, "granite", search="keyword")[0][0]
    other.call("memory_update", {"memory_id": granite, "keywords": ["kw777"], "reason": "tag"})
    assert [m for m, _ in recall(mine, "kw777", search="keyword")] == [granite]
    other.call("memory_forget", {"memory_ids": [mid], "dry_run": False})
    assert recall(mine, "yak", search="keyword") == []
    db = mine.database()
    if db.backend.kind == "sqlite":
        from memory_palace.db.sqlite_index import keyword_index

        postings = keyword_index(db, mine.settings.recall.fields).m.postings
        assert "yak" not in postings and "zebra" not in postings and "granit" in postings


class WaitingEmbedder(HashingEmbedder):
    """Embeds a query only once the keyword leg has run (or 5 s have passed)."""

    def __init__(self, dim: int, keyword_ran: threading.Event) -> None:
        super().__init__(dim)
        self.keyword_ran = keyword_ran
        self.saw_keyword_leg: list[bool] = []
        self.patience = 5.0

    def embed_query(self, text: str) -> np.ndarray:
        self.saw_keyword_leg.append(self.keyword_ran.wait(self.patience))
        return super().embed_query(text)


def test_the_query_is_embedded_while_the_keyword_leg_runs(
    make_palace: Callable[..., Palace], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = threading.Event()
    palace = make_palace(db_url, embedder=WaitingEmbedder(384, ran))
    hit = add(palace, "the VPN endpoint is vpn.example.org")
    add(palace, "unrelated lunch note")
    backend = type(palace.database().backend)
    keyword_scores = backend.keyword_scores

    def scores(self: Any, *args: Any, **kwargs: Any) -> Any:
        ran.set()
        return keyword_scores(self, *args, **kwargs)

    monkeypatch.setattr(backend, "keyword_scores", scores)
    out = palace.call("memory_recall", {"query": "VPN endpoint", "include_graph": False})
    assert palace.embedder.saw_keyword_leg == [True]  # embedded after the leg began, not before
    assert out["memories"][0]["id"] == hit and out["search_method"] == "hybrid"
    ran.clear()  # a vector-only recall has no keyword leg to wait for: embedded in line
    palace.embedder.patience = 0.1
    out = palace.call("memory_recall", {"query": "VPN endpoint", "search": "vector"})
    assert palace.embedder.saw_keyword_leg[-1] is False and out["memories"][0]["id"] == hit


def test_an_embedder_failure_on_its_thread_reaches_the_caller(
    make_palace: Callable[..., Palace], db_url: str
) -> None:
    palace = make_palace(db_url, embedder=FailingQueryEmbedder(384, RuntimeError("model bug 42")))
    add(palace, "the VPN endpoint is vpn.example.org")
    with pytest.raises(RuntimeError, match="model bug 42"):
        palace.call("memory_recall", {"query": "VPN endpoint"})


def test_a_sqlite_recall_reads_the_change_log_once_and_still_sees_every_write(
    make_palace: Callable[..., Palace], sqlite_url: str
) -> None:
    """The in-process indexes (keyword postings, vectors) each check the change log: a recall
    reads its newest sequence once for all of them, and a write in between (another process's,
    or this thread's inside the same read) is still seen by the next sync."""
    from memory_palace.db.sqlite_index import keyword_index

    mine, other = make_palace(sqlite_url), make_palace(sqlite_url)
    first = add(mine, "the heron nests by the weir")
    db = mine.database()
    statements = Statements(db.engine)
    try:
        assert [m for m, _ in recall(mine, "heron")] == [first]  # brings both indexes up
        start = len(statements.seen)
        assert [m for m, _ in recall(mine, "heron")] == [first]  # hybrid: both indexes
        newest = statements.since(start, containing="max(seq)")
        assert len(newest) == 1, newest  # was one per index sync
        second = add(other, "a heron fishing at dawn")
        assert {m for m, _ in recall(mine, "heron")} == {first, second}
        index = keyword_index(db, mine.settings.recall.fields)
        with db.read():
            index.search(["heron"], Filters.make(), None, (1.2, 0.75), 10)
            third = add(mine, "the heron flew off")  # this thread writes inside the read
            hits = index.search(["heron"], Filters.make(), None, (1.2, 0.75), 10)
        assert {i for i, _ in hits.scored} == {first, second, third}
    finally:
        statements.close()


def test_a_recall_checks_out_one_pooled_connection(
    make_palace: Callable[..., Palace], db_url: str
) -> None:
    """Access, both legs, result rows and graph context share one checkout (and its pre-ping)."""
    palace = make_palace(db_url)
    a = add(palace, "the lighthouse keeper logs the fog")
    b = add(palace, "fog horns at the lighthouse")
    palace.call("memory_link", {"source_id": a, "target_id": b, "relation_type": "related"})
    recall(palace, "lighthouse fog")  # warm: indexes loaded, schema checked
    engine = palace.database().engine
    checkouts: list[int] = []

    def note(*_: Any) -> None:
        checkouts.append(1)

    event.listen(engine, "checkout", note)
    try:
        out = palace.call("memory_recall", {"query": "lighthouse fog", "include_graph": True})
    finally:
        event.remove(engine, "checkout", note)
    assert {m["id"] for m in out["memories"]} == {a, b} and out.get("graph_context")
    assert len(checkouts) == 1


class TableEmbedder(HashingEmbedder):
    """A language model stand-in whose vectors are given per text (hashing for the rest)."""

    semantic = True

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        super().__init__(384)
        self.id = "test:table-384"
        self.table = {t: v / np.linalg.norm(v) for t, v in table.items()}

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        hashed = HashingEmbedder.embed_query
        return np.stack([self.table.get(t, hashed(self, t)) for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self.table.get(text, super().embed_query(text))


def axis(i: int) -> np.ndarray:
    v = np.zeros(384, np.float32)
    v[i] = 1.0
    return v


def test_generic_memories_do_not_lead_every_recall(
    make_palace: Callable[..., Palace], db_url: str
) -> None:
    """Thirty generic turns near the filter's centre (axis 0: what they all share, like a
    speaker's name) are nearer the query by plain cosine than the one turn that answers it
    (axis 1); centred on the filter, the answer comes first."""
    generic = {f"Theo: generic turn {i}": axis(0) + 0.15 * axis(2 + i) for i in range(30)}
    answer = "Theo: my therapist suggested yoga"
    question = "What did Theo's therapist recommend?"
    table = {
        **generic,
        answer: 0.3 * axis(0) + 0.95 * axis(1),
        question: 0.9 * axis(0) + 0.44 * axis(1),
    }
    for weight, first in ((0.0, False), (None, True)):
        config = {} if weight is None else {"recall": {"centre_weight": weight}}
        palace = make_palace(db_url, embedder=TableEmbedder(table), **config)
        for text_ in generic:
            add(palace, text_, project="chat")
        target = add(palace, answer, project="chat")
        add(palace, "elsewhere", project="other")
        params = {"query": question, "project": "chat", "search": "vector", "limit": 5}
        out = palace.call("memory_recall", {**params, "include_graph": False, "explain": True})
        ids = [m["id"] for m in out["memories"]]
        assert (ids[0] == target) is first, (weight, ids)
        if not first:  # plain cosine: every generic turn outranks the answer
            assert target not in ids
        top = out["memories"][0]
        # results report the plain cosine; the ranking used the centred one
        assert top["explain"]["cosine"] == top["similarity_score"] <= 1.0
        centred = top["explain"]["centred_cosine"]
        assert (centred > top["similarity_score"]) is first  # the answer gained, hubs lost
        # a short recall is still the head of a long one: the centre moves every score alike
        longer = palace.call("memory_recall", {**params, "limit": 20, "include_graph": False})
        assert [m["id"] for m in longer["memories"]][:5] == ids


def test_vector_mean_is_the_mean_of_the_newest_matching_vectors(
    make_palace: Callable[..., Palace], db_url: str
) -> None:
    embedder = TableEmbedder({f"m{i}": axis(i) for i in range(6)})
    palace = make_palace(db_url, embedder=embedder)
    for i in range(6):
        add(palace, f"m{i}", project="odd" if i % 2 else "even")
    db = palace.database()
    mean, rows = db.backend.vector_mean(db, embedder.id, 384, Filters.make(project="odd"), 2)
    assert rows == 2 and np.allclose(mean, (axis(3) + axis(5)) / 2, atol=1e-6)
    mean, rows = db.backend.vector_mean(db, embedder.id, 384, Filters.make(), 100)
    assert rows == 6 and np.allclose(mean, sum(axis(i) for i in range(6)) / 6, atol=1e-6)
    assert db.backend.vector_mean(db, embedder.id, 384, Filters.make(project="none"), 5) is None


def test_a_sqlite_filter_mean_follows_every_write(
    make_palace: Callable[..., Palace], sqlite_url: str
) -> None:
    """SQLite keeps a filter's mean until its vector index changes (another process's write
    included); PostgreSQL keeps it VECTOR_MEAN_TTL seconds."""
    embedder = TableEmbedder({f"m{i}": axis(i) for i in range(4)})
    mine = make_palace(sqlite_url, embedder=embedder)
    other = make_palace(sqlite_url, embedder=TableEmbedder({"m3": axis(3)}))
    for i in range(3):
        add(mine, f"m{i}")
    db, f = mine.database(), Filters.make()
    with db.read():
        assert db.backend.vector_mean(db, embedder.id, 384, f, 2)[1] == 2
    add(other, "m3")
    with db.read():
        mean, rows = db.backend.vector_mean(db, embedder.id, 384, f, 2)
    assert rows == 2 and np.allclose(mean, (axis(2) + axis(3)) / 2, atol=1e-6)


@pytest.mark.postgres
def test_postgres_reads_a_filter_mean_once_per_ttl(
    make_palace: Callable[..., Palace], pg_url: str
) -> None:
    """The centre of a filter is averaged once and reused for VECTOR_MEAN_TTL seconds (the
    expiry cutoff in the filter's parameters, new on every call, is not part of the key)."""
    palace = make_palace(pg_url, embedder=TableEmbedder({}))
    for i in range(25):
        add(palace, f"note {i} about the harbour", project="p")
    statements = Statements(palace.database().engine)
    try:
        for _ in range(3):
            recall(palace, "harbour", project="p")
        assert len(statements.since(0, containing="avg(embedding)")) == 1
    finally:
        statements.close()
