"""Retrieval quality of memory_recall against plain baselines computed in the same run.

Loads bench/quality/memories.jsonl into a fresh database through memory_set (the product's own
write path: embeddings, FTS/tsvector, auto-links, supersedes), then runs every query of
bench/quality/queries.jsonl through memory_recall (limit 10, summary, no graph) and through
baselines over the same candidates (same filter, non-archived memories only):

  cosine   numpy cosine over the same embedder's document vectors (subject + "\\n" + content)
  bm25     bm25s (Lucene BM25, NLTK English stop words, Snowball stemmer) over subject + content +
           keywords, its IDF computed over the filtered candidate set
  rrf      Reciprocal Rank Fusion (k=60) of the cosine and bm25 top-50 lists
  vector / keyword   memory_recall's own two legs alone

Every query is then run a second time through memory_recall, after the whole first pass, to
show what the access-count updates of the first pass do to the ranking.

Usage: python bench/bench_quality.py [--backend sqlite|postgres|both] [--embedder local|hash|both]
       [--split dev|test|all] [--categories a,b] [--config-json '{...}'] [--limit-queries N]
       [--json PATH] [--dump PATH] [--quiet]
PostgreSQL: MEMORY_PALACE_TEST_PG_URL (a superuser URL) or a pgserver started in a temp dir.
Quality targets are reported, not asserted: the exit code is 0 unless the run crashes.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from memory_palace import Palace, load_settings
from memory_palace.db.engine import Database, dispose_engines
from memory_palace.embeddings import create_embedder
from memory_palace.errors import InvalidParams
from memory_palace.services.memories import document_text
from sqlalchemy import text
from sqlalchemy.engine import make_url

DATA = Path(__file__).resolve().parent / "quality"
LIMIT = 10  # memory_recall limit and the depth of every metric
POOL = 50  # baseline lists fused by rrf (what memory_recall fuses, recall.CANDIDATES)
RRF_K = 60
# NLTK's English list (179 words). Lucene's default 33 keeps "what", "did", "when": questions
# would then match every chat turn that asks something, a weaker baseline than the product.
STOPWORDS = "en_plus"
METHODS = ["recall", "pass2", "vector", "keyword", "cosine", "bm25", "rrf"]
BASELINES = ["cosine", "bm25", "rrf"]
METRICS = ["R@1", "R@5", "MRR", "nDCG"]
MIN_QUERIES = 50  # per category, for the data check
CATEGORIES = [
    "paraphrase",
    "exact_id",
    "project_filtered",
    "superseded",
    "conversation",
    "keyword_overlap",
]


# --- data -----------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_data(root: Path = DATA) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return read_jsonl(root / "memories.jsonl"), read_jsonl(root / "queries.jsonl")


def validate_data(
    memories: list[dict[str, Any]],
    queries: list[dict[str, Any]],
    min_per_category: int = MIN_QUERIES,
) -> list[str]:
    """Problems with the data set (empty list when it is sound)."""
    problems: list[str] = []
    by_id = {m["id"]: m for m in memories}
    if len(by_id) != len(memories):
        problems.append("duplicate memory ids")
    seen: set[str] = set()
    archived = {m["supersedes"] for m in memories if m.get("supersedes")}
    for m in memories:
        if m.get("supersedes") and m["supersedes"] not in seen:
            problems.append(f"{m['id']} supersedes {m['supersedes']}, which is stored later")
        seen.add(m["id"])
    # memory_set returns the existing id for identical content in the same project and type
    dup = collections.Counter(
        (m["project"], m["memory_type"], " ".join(m["content"].lower().split())) for m in memories
    )
    problems += [f"identical content stored twice: {k[2][:60]!r}" for k, n in dup.items() if n > 1]
    counts: collections.Counter[str] = collections.Counter()
    groups: dict[str, set[str]] = collections.defaultdict(set)
    for q in queries:
        counts[q["category"]] += 1
        groups[q["group"]].add(q["split"])
        if q["split"] not in ("dev", "test"):
            problems.append(f"{q['id']}: split {q['split']!r}")
        targets = q.get("targets") or {}
        if not any(g == 2 for g in targets.values()):
            problems.append(f"{q['id']}: no target of grade 2")
        for t in targets:
            if t not in by_id:
                problems.append(f"{q['id']}: target {t} does not exist")
            elif t in archived:
                problems.append(f"{q['id']}: target {t} is archived by a later memory")
            project = (q.get("filters") or {}).get("project")
            if t in by_id and project and by_id[t]["project"] != project:
                problems.append(f"{q['id']}: target {t} is outside the filter project {project}")
            mtype = (q.get("filters") or {}).get("memory_type")
            if t in by_id and mtype and by_id[t]["memory_type"] != mtype:
                problems.append(f"{q['id']}: target {t} is not of the filter type {mtype}")
        if q["category"] == "exact_id":
            ident = q.get("identifier")
            if not ident or ident.lower() not in q["text"].lower():
                problems.append(f"{q['id']}: the query does not contain its identifier")
            else:
                hits = [m["id"] for m in memories if contains_token(m, ident)]
                if hits != list(targets):
                    problems.append(f"{q['id']}: identifier {ident} is in {hits}")
    for cat in CATEGORIES:
        if counts[cat] < min_per_category:
            problems.append(f"category {cat}: {counts[cat]} queries (< {min_per_category})")
    problems += [f"group {g} is in both splits" for g, s in groups.items() if len(s) > 1]
    return problems


def contains_token(m: dict[str, Any], ident: str) -> bool:
    """`ident` as a whole token (KW200 is not in KW2000) in the content or a keyword."""
    text = m["content"] + "\n" + "\n".join(m.get("keywords", []))
    if ident.lower() not in text.lower():
        return False
    pat = re.compile(r"(?<![\w.-])" + re.escape(ident) + r"(?![\w-]|\.\w)", re.IGNORECASE)
    return bool(pat.search(m["content"]) or any(pat.fullmatch(k) for k in m.get("keywords", [])))


def select_queries(
    queries: list[dict[str, Any]], split: str, categories: list[str] | None, limit: int | None
) -> list[dict[str, Any]]:
    out = [
        q
        for q in queries
        if (split == "all" or q["split"] == split)
        and (not categories or q["category"] in categories)
    ]
    if limit:
        # every category keeps some queries in a quick run
        per: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for q in out:
            per[q["category"]].append(q)
        take = max(1, limit // max(1, len(per)))
        out = [q for qs in per.values() for q in qs[:take]]
    return out


# --- metrics ----------------------------------------------------------------------------------


def first_rank(ranked: list[str], targets: dict[str, int]) -> int | None:
    """1-based rank of the first grade-2 target in the top LIMIT, None if absent."""
    for i, mid in enumerate(ranked[:LIMIT], start=1):
        if targets.get(mid, 0) == 2:
            return i
    return None


def score_query(ranked: list[str], targets: dict[str, int]) -> dict[str, float]:
    """R@k: share of the grade-2 targets in the top k. MRR@10: first grade-2 target.
    nDCG@10: graded gains 2^g - 1 (context turns have grade 1)."""
    top = ranked[:LIMIT]
    answers = [t for t, g in targets.items() if g == 2]
    rank = first_rank(top, targets)
    dcg = sum((2 ** targets.get(mid, 0) - 1) / math.log2(i + 2) for i, mid in enumerate(top))
    ideal = sorted(targets.values(), reverse=True)[:LIMIT]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return {
        "R@1": sum(t in top[:1] for t in answers) / len(answers),
        "R@5": sum(t in top[:5] for t in answers) / len(answers),
        "MRR": 1.0 / rank if rank else 0.0,
        "nDCG": dcg / idcg if idcg else 0.0,
    }


def aggregate(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {m: float("nan") for m in METRICS}
    return {m: statistics.fmean(r[m] for r in rows) for m in METRICS}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


# --- baselines --------------------------------------------------------------------------------


class Bm25Index:
    """bm25s over one candidate set, so IDF is computed over exactly the filtered memories."""

    def __init__(self, keys: list[str], texts: list[str]) -> None:
        import bm25s
        import Stemmer

        self.bm25s = bm25s
        self.stemmer = Stemmer.Stemmer("english")
        self.keys = keys
        self.retriever = bm25s.BM25()  # Lucene variant, k1=1.5, b=0.75
        self.retriever.index(
            bm25s.tokenize(texts, stopwords=STOPWORDS, stemmer=self.stemmer, show_progress=False),
            show_progress=False,
        )

    def search(self, query: str, k: int) -> list[str]:
        tokens = self.bm25s.tokenize(
            [query],
            stopwords=STOPWORDS,
            stemmer=self.stemmer,
            return_ids=False,
            show_progress=False,
        )[0]
        if not tokens:
            return []
        scores = self.retriever.get_scores(tokens)
        order = np.argsort(-scores, kind="stable")[:k]
        return [self.keys[i] for i in order if scores[i] > 0]


def rrf(*lists: list[str], k: int = RRF_K) -> list[str]:
    fused: dict[str, float] = collections.defaultdict(float)
    for ranked in lists:
        for rank, key in enumerate(ranked, start=1):
            fused[key] += 1.0 / (k + rank)
    return [key for key, _ in sorted(fused.items(), key=lambda kv: -kv[1])]


class Baselines:
    """Cosine, BM25 and RRF over the non-archived memories matching a query's filters."""

    def __init__(
        self, memories: list[dict[str, Any]], doc_vecs: np.ndarray, archived: set[str]
    ) -> None:
        self.memories = memories
        self.vecs = doc_vecs
        self.live = np.array([m["id"] not in archived for m in memories])
        self.keys = [m["id"] for m in memories]
        self.indexes: dict[tuple[str | None, str | None], tuple[np.ndarray, Bm25Index]] = {}

    def _candidates(
        self, project: str | None, memory_type: str | None
    ) -> tuple[np.ndarray, Bm25Index]:
        key = (project, memory_type)
        if key not in self.indexes:
            mask = self.live.copy()
            if project:
                mask &= np.array([m["project"] == project for m in self.memories])
            if memory_type:
                mask &= np.array([m["memory_type"] == memory_type for m in self.memories])
            rows = np.nonzero(mask)[0]
            texts = [
                " ".join(
                    [
                        self.memories[i].get("subject") or "",
                        self.memories[i]["content"],
                        " ".join(self.memories[i].get("keywords", [])),
                    ]
                )
                for i in rows
            ]
            self.indexes[key] = (rows, Bm25Index([self.keys[i] for i in rows], texts))
        return self.indexes[key]

    def answer_vs_generic(self, q: dict[str, Any], qvec: np.ndarray) -> tuple[float, float]:
        """Cosine of the query to its answer and to the closest generic turn it is searched with
        (how far apart the embedder puts them)."""
        rows, _ = self._candidates((q.get("filters") or {}).get("project"), None)
        pos = {self.keys[i]: i for i in rows}
        answer = max(float(self.vecs[pos[t]] @ qvec) for t, g in q["targets"].items() if g == 2)
        generic = [i for i in rows if self.memories[i]["role"] == "generic_turn"]
        best = float(np.max(self.vecs[generic] @ qvec)) if generic else float("nan")
        return answer, best

    def rank(
        self, query: str, qvec: np.ndarray, project: str | None, memory_type: str | None
    ) -> dict[str, list[str]]:
        rows, bm25 = self._candidates(project, memory_type)
        sims = self.vecs[rows] @ qvec
        order = np.argsort(-sims, kind="stable")[:POOL]
        cosine = [self.keys[rows[i]] for i in order]
        lexical = bm25.search(query, POOL)
        return {"cosine": cosine, "bm25": lexical, "rrf": rrf(cosine, lexical)}


# --- the product ------------------------------------------------------------------------------


class CachedEmbedder:
    """The configured embedder, with the corpus' document vectors computed up front in batches.

    memory_set still calls embed_documents for every memory; it gets the same model's vector for
    the same text, so loading skips only the per-call model overhead. Queries are embedded live.
    """

    def __init__(self, inner: Any, docs: list[str], batch: int = 64) -> None:
        self.inner = inner
        self.id = inner.id
        self.dim = inner.dim
        self.semantic = inner.semantic
        vecs = [inner.embed_documents(docs[i : i + batch]) for i in range(0, len(docs), batch)]
        self.matrix = np.vstack(vecs).astype(np.float32)
        self.cache = {d: self.matrix[i] for i, d in enumerate(docs)}

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        if all(t in self.cache for t in texts):
            return np.stack([self.cache[t] for t in texts])
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> np.ndarray:
        return self.inner.embed_query(text)

    def token_limit(self, text: str) -> int | None:
        return self.inner.token_limit(text)


def make_palace(
    url: str, root: Path, embedder_name: str, embedder: Any, extra: dict[str, Any]
) -> Palace:
    data_dir = Path(tempfile.mkdtemp(dir=root, prefix="data"))
    config = deep_merge({"database": {"url": url}, "embedder": embedder_name}, extra)
    (data_dir / "config.json").write_bytes(orjson.dumps(config))
    return Palace(load_settings(data_dir, env={}), embedder=embedder)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def load_memories(palace: Palace, memories: list[dict[str, Any]]) -> dict[str, int]:
    """memory_set for every memory in file order; returns data id -> database id."""
    ids: dict[str, int] = {}
    for m in memories:
        params: dict[str, Any] = {
            "content": m["content"],
            "memory_type": m["memory_type"],
            "project": m["project"],
            "source_type": m["source_type"],
        }
        for name in ("subject", "keywords", "source_session_id"):
            if m.get(name):
                params[name] = m[name]
        if m.get("supersedes"):
            params["supersedes_id"] = ids[m["supersedes"]]
        out = palace.call("memory_set", params)
        if "duplicate_of" in out:
            raise SystemExit(f"{m['id']} was stored as a duplicate of #{out['duplicate_of']}")
        ids[m["id"]] = int(out["id"])
    return ids


def access_snapshot(db: Database) -> list[tuple[Any, ...]]:
    with db.read() as conn:
        return [
            tuple(r)
            for r in conn.execute(text("SELECT id, access_count, last_accessed_at FROM memories"))
        ]


def access_restore(db: Database, rows: list[tuple[Any, ...]]) -> None:
    """Undo the access counts written by the leg-only recalls, so memory_recall's first pass
    starts from the state right after loading."""
    with db.write() as conn:
        conn.execute(
            text("UPDATE memories SET access_count = :c, last_accessed_at = :t WHERE id = :i"),
            [{"i": i, "c": c, "t": t} for i, c, t in rows],
        )


def recall_ids(
    palace: Palace, query: dict[str, Any], extra: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    params: dict[str, Any] = {
        "query": query["text"],
        "limit": LIMIT,
        "include_graph": False,
        "detail_level": "summary",
        **(query.get("filters") or {}),
    }
    params.update(extra or {})
    return palace.call("memory_recall", params)["memories"]


def make_leg_search(
    palace: Palace, db: Database
) -> tuple[Callable[[str, dict[str, Any]], list[int]], str]:
    """memory_recall's vector or keyword leg alone, top LIMIT database ids.

    Uses memory_recall's `search` parameter where the installed version has it; otherwise the
    internal functions it calls today. Delete the fallback once `search` has shipped."""
    try:
        palace.call(
            "memory_recall",
            {"query": "probe", "limit": 1, "include_graph": False, "search": "vector"},
        )
        return (
            lambda leg, q: [h["id"] for h in recall_ids(palace, q, {"search": leg})],
            "memory_recall(search=...)",
        )
    except InvalidParams as exc:
        if "search" not in str(exc):
            raise
    from memory_palace.services import recall as recall_service
    from memory_palace.services import vectors
    from memory_palace.services.filters import Filters

    embedder = palace.embedder

    def legacy(leg: str, q: dict[str, Any]) -> list[int]:
        filters = q.get("filters") or {}
        f = Filters.make(project=filters.get("project"), memory_type=filters.get("memory_type"))
        if leg == "keyword":
            hits = recall_service.keyword_search(db, q["text"], LIMIT, f)
        else:
            qvec = embedder.embed_query(q["text"])
            hits = vectors.search(db, embedder.id, embedder.dim, qvec, LIMIT, f)
        return [mid for mid, _ in hits]

    return legacy, "internal keyword_search / vectors.search (no 'search' parameter yet)"


# --- one run ----------------------------------------------------------------------------------


@dataclass
class RunResult:
    backend: str
    embedder: str
    ranks: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # query -> method -> ids
    found_by: dict[str, list[str]] = field(default_factory=dict)  # pass-1 found_by per hit
    latency_ms: list[float] = field(default_factory=list)
    load_s: float = 0.0
    legs_api: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    # conversation queries: (cosine of the answer, best cosine of a generic turn)
    cos_gap: list[tuple[float, float]] = field(default_factory=list)


def run_one(
    backend: str,
    url: str,
    root: Path,
    embedder_name: str,
    cached: CachedEmbedder,
    memories: list[dict[str, Any]],
    queries: list[dict[str, Any]],
    extra: dict[str, Any],
    log: Callable[[str], None],
) -> RunResult:
    res = RunResult(backend, embedder_name)
    palace = make_palace(url, root, embedder_name, cached, extra)
    try:
        db = palace.database()
        t0 = time.perf_counter()
        ids = load_memories(palace, memories)
        res.load_s = time.perf_counter() - t0
        back = {v: k for k, v in ids.items()}
        with db.read() as conn:
            archived_db = {
                int(r[0])
                for r in conn.execute(
                    text("SELECT id FROM memories WHERE is_archived = :t"), {"t": True}
                )
            }
            res.counts = {
                "memories": int(conn.execute(text("SELECT count(*) FROM memories")).scalar()),
                "archived": len(archived_db),
                "auto_links": int(
                    conn.execute(
                        text("SELECT count(*) FROM memory_edges WHERE auto_linked = :t"),
                        {"t": True},
                    ).scalar()
                ),
            }
        archived = {back[i] for i in archived_db}
        log(
            f"  loaded {len(ids)} memories through memory_set in {res.load_s:.1f} s "
            f"({res.counts['archived']} archived, {res.counts['auto_links']} auto-links)"
        )

        # the legs first, then undo their access counts: recall's pass 1 starts clean
        snap = access_snapshot(db)
        leg, res.legs_api = make_leg_search(palace, db)
        for q in queries:
            r = res.ranks.setdefault(q["id"], {})
            for name in ("vector", "keyword"):
                r[name] = [back[i] for i in leg(name, q)]
        access_restore(db, snap)

        base = Baselines(memories, cached.matrix, archived)
        for q in queries:
            filters = q.get("filters") or {}
            qvec = cached.embed_query(q["text"])
            res.ranks[q["id"]].update(
                base.rank(q["text"], qvec, filters.get("project"), filters.get("memory_type"))
            )
            if q["category"] == "conversation":
                res.cos_gap.append(base.answer_vs_generic(q, qvec))

        for name in ("recall", "pass2"):
            for q in queries:
                t = time.perf_counter()
                hits = recall_ids(palace, q)
                if name == "recall":
                    res.latency_ms.append((time.perf_counter() - t) * 1000)
                    res.found_by[q["id"]] = [h.get("found_by", "?") for h in hits]
                res.ranks[q["id"]][name] = [back[h["id"]] for h in hits]
    finally:
        palace.close()
        dispose_engines()
    return res


def summarise(res: RunResult, queries: list[dict[str, Any]]) -> dict[str, Any]:
    cats = [c for c in CATEGORIES if any(q["category"] == c for q in queries)]
    cats += sorted({q["category"] for q in queries} - set(cats))
    per: dict[str, dict[str, dict[str, float]]] = {}
    for method in METHODS:
        rows = {q["id"]: score_query(res.ranks[q["id"]][method], q["targets"]) for q in queries}
        table = {c: aggregate([rows[q["id"]] for q in queries if q["category"] == c]) for c in cats}
        table["macro"] = {m: statistics.fmean(table[c][m] for c in cats) for m in METRICS}
        table["micro"] = aggregate(list(rows.values()))
        per[method] = table
    n = {c: sum(q["category"] == c for q in queries) for c in cats}
    n["macro"] = n["micro"] = len(queries)
    return {
        "backend": res.backend,
        "embedder": res.embedder,
        "categories": cats,
        "n": n,
        "metrics": per,
        "load_s": round(res.load_s, 2),
        "counts": res.counts,
        "legs_api": res.legs_api,
        "latency_ms": {"p50": statistics.median(res.latency_ms), "p95": pct(res.latency_ms, 95)}
        if res.latency_ms
        else {},
        "targets": targets(per, cats),
    }


def targets(per: dict[str, dict[str, dict[str, float]]], cats: list[str]) -> list[dict[str, Any]]:
    out = []
    for c in [*cats, "macro"]:
        rec = per["recall"][c]
        item: dict[str, Any] = {"category": c}
        for m in ("R@5", "MRR"):
            best = max(BASELINES, key=lambda b: per[b][c][m])
            item[m] = {
                "recall": rec[m],
                "best": per[best][c][m],
                "best_method": best,
                "pass": rec[m] >= per[best][c][m] - 1e-9,
            }
        item["pass2"] = {
            "dR@5": per["pass2"][c]["R@5"] - rec["R@5"],
            "dMRR": per["pass2"][c]["MRR"] - rec["MRR"],
        }
        item["pass2"]["pass"] = (
            abs(item["pass2"]["dR@5"]) <= 0.01 and abs(item["pass2"]["dMRR"]) <= 0.01
        )
        if c == "exact_id":
            item["R@1"] = {"recall": rec["R@1"], "pass": rec["R@1"] >= 0.98}
        out.append(item)
    return out


def fmt(v: float) -> str:
    return " nan" if math.isnan(v) else f"{v:.3f}"[1:] if v < 1 else "1.00"


def print_table(s: dict[str, Any]) -> None:
    width = 4 * 5 + 3
    print(
        f"\n{s['backend']} + {s['embedder']}: {s['n']['micro']} queries; memory_recall p50 "
        f"{s['latency_ms'].get('p50', 0):.1f} ms, p95 {s['latency_ms'].get('p95', 0):.1f} ms; "
        f"load {s['load_s']:.0f} s"
    )
    names = {"recall": "memory_recall", "pass2": "recall pass 2"}
    print(
        (f"{'':<17}{'':>4} |" + "|".join(f"{names.get(m, m):^{width}}" for m in METHODS)).rstrip()
    )
    print(
        (
            f"{'category':<17}{'n':>4} |"
            + "|".join(
                " " + " ".join(f"{x:>4}" for x in ("R@1", "R@5", "MRR", "nDCG")) + "  "
                for _ in METHODS
            )
        ).rstrip()
    )
    for c in s["categories"] + ["macro", "micro"]:
        cells = []
        for m in METHODS:
            v = s["metrics"][m][c]
            cells.append(" " + " ".join(f"{fmt(v[x]):>4}" for x in METRICS) + "  ")
        print((f"{c:<17}{s['n'][c]:>4} |" + "|".join(cells)).rstrip())
    print("memory_recall vs best baseline (cosine/bm25/rrf):")
    for t in s["targets"]:
        parts = []
        for m in ("R@5", "MRR"):
            x = t[m]
            parts.append(
                f"{m} {x['recall']:.3f} vs {x['best']:.3f} {x['best_method']:<6} "
                f"{'PASS' if x['pass'] else 'FAIL'}"
            )
        p2 = t["pass2"]
        parts.append(
            f"pass 2 dR@5 {p2['dR@5']:+.3f} dMRR {p2['dMRR']:+.3f} "
            f"{'PASS' if p2['pass'] else 'FAIL'}"
        )
        if "R@1" in t:
            parts.append(
                f"R@1 {t['R@1']['recall']:.3f} >= 0.98 {'PASS' if t['R@1']['pass'] else 'FAIL'}"
            )
        print(f"  {t['category']:<17}" + " | ".join(parts))


def analysis(
    res: RunResult, queries: list[dict[str, Any]], memories: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Why recall loses: hub memories, leg complementarity, how recall's results were found."""
    hubs: dict[str, collections.Counter[str]] = {
        m: collections.Counter() for m in ("recall", "pass2", "cosine", "bm25")
    }
    legs: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    found: collections.Counter[str] = collections.Counter()
    found_target: collections.Counter[str] = collections.Counter()
    for q in queries:
        r = res.ranks[q["id"]]
        for m, c in hubs.items():
            c.update(r[m][:LIMIT])
        v = first_rank(r["vector"][:5], q["targets"]) is not None
        k = first_rank(r["keyword"][:5], q["targets"]) is not None
        kept = first_rank(r["recall"][:5], q["targets"]) is not None
        leg = "both legs" if v and k else "vector only" if v else "keyword only" if k else "neither"
        for cat in (q["category"], "all"):
            legs[cat][leg] += 1
            legs[cat][f"{leg}, recall kept"] += kept
        how = res.found_by.get(q["id"], [])
        found.update(how[:5])
        found_target.update(
            h for mid, h in zip(r["recall"], how, strict=False) if q["targets"].get(mid) == 2
        )
    stale_above = {m: 0 for m in METHODS}
    stale_n = 0
    for q in queries:
        for s in q.get("stale", []):
            stale_n += 1
            for m in METHODS:
                ranked = res.ranks[q["id"]][m]
                t = first_rank(ranked, q["targets"])
                if s in ranked[:LIMIT] and (t is None or ranked.index(s) + 1 < t):
                    stale_above[m] += 1
    # generic chat turns ("Haha yes!") ranked first: fusion and access boosts favour them
    chat = [q for q in queries if q["category"] == "conversation"]
    generic_top1 = {
        m: sum(
            bool(res.ranks[q["id"]][m])
            and memories[res.ranks[q["id"]][m][0]]["role"] == "generic_turn"
            for q in chat
        )
        for m in METHODS
    }
    slices: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for q in queries:
        if q["category"] == "exact_id":
            target = memories[next(iter(q["targets"]))]
            where = (
                "content"
                if q["identifier"].lower() in target["content"].lower()
                else "keywords only"
            )
            form = "bare id" if q["text"] == q["identifier"] else "phrase"
            slices[f"exact_id, id in {where}"].append(q)
            slices[f"exact_id, {form}"].append(q)
        elif q["category"] == "conversation":
            slices["conversation, hard" if q.get("hard") else "conversation, not hard"].append(q)
    slice_r1 = {
        name: {
            "n": len(qs),
            **{
                m: statistics.fmean(
                    first_rank(res.ranks[q["id"]][m], q["targets"]) == 1 for q in qs
                )
                for m in METHODS
            },
        }
        for name, qs in slices.items()
    }

    def top(c: collections.Counter[str]) -> list[dict[str, Any]]:
        return [
            {
                "id": k,
                "top10_count": n,
                "role": memories[k]["role"],
                "project": memories[k]["project"],
                "content": memories[k]["content"][:70],
            }
            for k, n in c.most_common(10)
        ]

    gap = np.array(res.cos_gap) if res.cos_gap else np.zeros((0, 2))
    cosines = {"n": len(gap)}
    if len(gap):
        cosines.update(
            answer_p50=float(np.median(gap[:, 0])),
            best_generic_p50=float(np.median(gap[:, 1])),
            answer_below_generic=int((gap[:, 0] < gap[:, 1]).sum()),
        )
    return {
        "hubs": {m: top(c) for m, c in hubs.items()},
        "conversation_cosines": cosines,
        "legs_top5": {c: dict(v) for c, v in legs.items()},
        "found_by_top5_slots": dict(found),
        "found_by_of_found_targets": dict(found_target),
        "stale_above_new": {"of": stale_n, **stale_above},
        "slices_R@1": slice_r1,
        "conversation_generic_top1": {"of": len(chat), **generic_top1},
    }


def print_analysis(a: dict[str, Any]) -> None:
    print("  target in the top 5 of each leg alone / of those, also in memory_recall's top 5:")
    cats = [c for c in a["legs_top5"] if c != "all"] + ["all"]
    kinds = ["both legs", "vector only", "keyword only", "neither"]
    print(f"    {'category':<17}" + "".join(f"{k:>18}" for k in kinds))
    for c in cats:
        row = a["legs_top5"][c]
        cells = [f"{row.get(k, 0)} / {row.get(f'{k}, recall kept', 0)}" for k in kinds]
        print(f"    {c:<17}" + "".join(f"{cell:>18}" for cell in cells))
    slots = a["found_by_top5_slots"]
    total = sum(slots.values()) or 1
    print(
        "  memory_recall top-5 slots found by: "
        + ", ".join(f"{k} {100 * n / total:.0f}%" for k, n in sorted(slots.items()))
        + "; targets it found, by: "
        + ", ".join(f"{k} {n}" for k, n in sorted(a["found_by_of_found_targets"].items()))
    )
    print("  R@1 on slices:")
    print(f"    {'slice':<30}{'n':>4} " + " ".join(f"{m:>7}" for m in METHODS))
    for name, row in sorted(a["slices_R@1"].items()):
        print(f"    {name:<30}{row['n']:>4} " + " ".join(f"{row[m]:>7.3f}" for m in METHODS))
    g = a["conversation_generic_top1"]
    if g["of"]:
        print(
            f"  conversation queries whose top 1 is a generic turn (of {g['of']}): "
            + ", ".join(f"{m} {g[m]}" for m in METHODS)
        )
    c = a["conversation_cosines"]
    if c["n"]:
        print(
            f"  conversation cosines: answer p50 {c['answer_p50']:.3f}, closest generic turn p50 "
            f"{c['best_generic_p50']:.3f}; the answer is below a generic turn in "
            f"{c['answer_below_generic']} of {c['n']}"
        )
    st = a["stale_above_new"]
    if st["of"]:
        print(
            f"  updates without supersedes_id whose stale version ranks above the new one "
            f"(of {st['of']}): " + ", ".join(f"{m} {st[m]}" for m in METHODS)
        )
    for m, n in (("recall", 5), ("pass2", 3), ("cosine", 3), ("bm25", 3)):
        print(f"  memories in the most {m} top-10 lists:")
        for h in a["hubs"][m][:n]:
            print(f"    {h['top10_count']:>4}x {h['id']} {h['role']:<13} {h['content']!r}")


def pg_server(root: Path) -> tuple[str, Any]:
    url = os.environ.get("MEMORY_PALACE_TEST_PG_URL")
    if url:
        return url, None
    import pgserver

    server = pgserver.get_server(root / "pg", cleanup_mode="delete")
    return server.get_uri(), server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    ap.add_argument("--embedder", choices=["local", "hash", "both"], default="local")
    ap.add_argument("--split", choices=["dev", "test", "all"], default="all")
    ap.add_argument("--categories", default="", help="comma-separated; default all")
    ap.add_argument("--config-json", default="{}", help="merged into the palace's config.json")
    ap.add_argument("--limit-queries", type=int, default=None, help="spread over categories")
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--dump", type=Path, help="write every query's ranked ids per method here")
    ap.add_argument("--data", type=Path, default=DATA, help=argparse.SUPPRESS)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    log: Callable[[str], None] = (
        (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    )

    memories, all_queries = load_data(args.data)
    problems = validate_data(memories, all_queries, 0 if args.data != DATA else MIN_QUERIES)
    if problems:
        raise SystemExit("data problems:\n  " + "\n  ".join(problems[:20]))
    cats = [c.strip() for c in args.categories.split(",") if c.strip()] or None
    queries = select_queries(all_queries, args.split, cats, args.limit_queries)
    extra = json.loads(args.config_json)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    embedders = ["local", "hash"] if args.embedder == "both" else [args.embedder]
    by_key = {m["id"]: m for m in memories}
    docs = [document_text(m.get("subject"), m["content"]) for m in memories]
    print(
        f"{len(memories)} memories, {len(queries)} queries (split {args.split}); "
        f"config {json.dumps(extra) if extra else 'defaults'}",
        flush=True,
    )

    # a SIGTERM (a killed run) still stops the pgserver and removes the temp dir
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="mp-quality-"))
    server = None
    summaries, dump = [], []
    started = time.perf_counter()
    try:
        for emb_name in embedders:
            t = time.perf_counter()
            inner = create_embedder(_settings(root, emb_name))
            cached = CachedEmbedder(inner, docs)
            log(
                f"{emb_name}: embedded {len(docs)} documents in {time.perf_counter() - t:.1f} s "
                f"({cached.id})"
            )
            for backend in backends:
                if backend == "sqlite":
                    url = f"sqlite:///{root / f'quality-{emb_name}.db'}"
                else:
                    if server is None and not os.environ.get("MEMORY_PALACE_TEST_PG_URL"):
                        server_url, server = pg_server(root)
                    else:
                        server_url = os.environ.get("MEMORY_PALACE_TEST_PG_URL") or server_url
                    url = (
                        make_url(server_url)
                        .set(database=f"mp_quality_{emb_name}_{os.getpid()}")
                        .render_as_string(hide_password=False)
                    )
                log(f"{backend} + {emb_name}:")
                res = run_one(backend, url, root, emb_name, cached, memories, queries, extra, log)
                s = summarise(res, queries)
                s["analysis"] = analysis(res, queries, by_key)
                summaries.append(s)
                print_table(s)
                if not args.quiet:
                    print_analysis(s["analysis"])
                if args.dump:
                    for q in queries:
                        r = res.ranks[q["id"]]
                        dump.append(
                            {
                                "backend": backend,
                                "embedder": emb_name,
                                "query": q["id"],
                                "category": q["category"],
                                "split": q["split"],
                                "hard": q.get("hard", False),
                                "text": q["text"],
                                "targets": q["targets"],
                                "rank": {m: first_rank(r[m], q["targets"]) for m in METHODS},
                                "top10": {m: r[m][:LIMIT] for m in METHODS},
                                "found_by": res.found_by.get(q["id"], []),
                            }
                        )
    finally:
        dispose_engines()
        if server is not None:
            server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"split": args.split, "config": extra, "queries": len(queries), "runs": summaries},
                indent=1,
            )
        )
    if args.dump:
        args.dump.write_text("".join(json.dumps(d) + "\n" for d in dump))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


def _settings(root: Path, embedder: str) -> Any:
    d = Path(tempfile.mkdtemp(dir=root, prefix="embcfg"))
    (d / "config.json").write_bytes(orjson.dumps({"embedder": embedder}))
    return load_settings(d, env={})


if __name__ == "__main__":
    sys.exit(main())
