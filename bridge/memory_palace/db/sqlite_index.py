"""SQLite's in-process indexes, per database: a float32 matrix per embedder (numpy matvec,
~5 ms at 100k x 384, instead of re-reading BLOBs) and BM25 postings for keyword search (every
filtered memory scored exactly, instead of FTS5 candidates rescored in Python). Both are kept
fresh through the `memory_changes` log that triggers fill, so other processes' writes are seen.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import bindparam, text

from .backend import KeywordHits
from .filters import PRIVATE, SHARED, Filters, type_matcher
from .search_text import bm25_coverage, memory_fields, weighted_terms
from .values import decode_strings, decode_time, decode_vector

if TYPE_CHECKING:
    from .engine import Database

FULL_RELOAD_CHANGES = 20000


@dataclass
class _Rows:
    """Row-aligned filter columns of cached memories, so filters run in process."""

    n: int = 0
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    valid: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    archived: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    foundational: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    expires: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))  # epoch s
    instance: list[str | None] = field(default_factory=list)
    visibility: list[str] = field(default_factory=list)
    mtype: list[str | None] = field(default_factory=list)
    projects: list[frozenset[str]] = field(default_factory=list)
    row_of: dict[int, int] = field(default_factory=dict)
    by_project: dict[str, set[int]] = field(default_factory=dict)
    by_instance: dict[str | None, set[int]] = field(default_factory=dict)
    by_type: dict[str | None, set[int]] = field(default_factory=dict)
    by_visibility: dict[str, set[int]] = field(default_factory=dict)
    #: (index name, key) -> its rows as an array, built on first use; emptied by any change
    arrays: dict[tuple[str, Any], np.ndarray] = field(default_factory=dict)
    seq: int = 0

    @staticmethod
    def _ext(a: np.ndarray, size: int) -> np.ndarray:
        out = np.zeros((size, *a.shape[1:]), a.dtype)
        out[: a.shape[0]] = a
        return out

    def _grow(self, need: int) -> None:
        cap = len(self.ids)
        if need > cap:
            self._resize(max(need, cap * 2, 1024))

    def _resize(self, size: int) -> None:
        for name in ("ids", "valid", "archived", "foundational", "expires"):
            setattr(self, name, self._ext(getattr(self, name), size))

    def _unindex(self, r: int) -> None:
        for p in self.projects[r]:
            self.by_project.get(p, set()).discard(r)
        self.by_instance.get(self.instance[r], set()).discard(r)
        self.by_type.get(self.mtype[r], set()).discard(r)
        self.by_visibility.get(self.visibility[r], set()).discard(r)

    def _new_row(self) -> int:
        self._grow(self.n + 1)
        r = self.n
        self.n += 1
        self.instance.append(None)
        self.visibility.append(SHARED)
        self.mtype.append(None)
        self.projects.append(frozenset())
        return r

    def place(self, row: Any) -> int:
        """The row of memory `row.id` (a new one if it has none) with its filter columns set."""
        mid = int(row.id)
        self.arrays.clear()
        r = self.row_of.get(mid)
        if r is None:
            r = self.row_of[mid] = self._new_row()
        else:
            self._unindex(r)
        self.ids[r] = mid
        self.valid[r] = True
        self.archived[r] = bool(row.is_archived)
        self.foundational[r] = bool(row.foundational)
        self.instance[r] = row.instance_id
        self.visibility[r] = row.visibility or SHARED
        expires = decode_time(row.expires_at)
        self.expires[r] = expires.timestamp() if expires else math.inf
        self.mtype[r] = row.memory_type
        self.projects[r] = frozenset(decode_strings(row.projects))
        for p in self.projects[r]:
            self.by_project.setdefault(p, set()).add(r)
        self.by_instance.setdefault(row.instance_id, set()).add(r)
        self.by_type.setdefault(row.memory_type, set()).add(r)
        self.by_visibility.setdefault(self.visibility[r], set()).add(r)
        return r

    def drop(self, mid: int) -> None:
        r = self.row_of.get(mid)
        if r is not None:
            self.valid[r] = False

    def _rows(self, index: str, keys: list[Any]) -> np.ndarray:
        mask = np.zeros(self.n, bool)
        for k in keys:
            rows = self.arrays.get((index, k))
            if rows is None:
                held = getattr(self, index).get(k)
                if not held:  # a name nothing holds is not kept: callers may name any
                    continue
                rows = self.arrays[index, k] = np.fromiter(held, np.int64, len(held))
            mask[rows] = True
        return mask

    def mask(self, f: Filters, allowed_ids: set[int] | None) -> np.ndarray:
        m = self.valid[: self.n].copy()
        if not f.include_archived:
            m &= ~self.archived[: self.n]
        if f.foundational_only:
            m &= self.foundational[: self.n]
        if f.instance_id:
            m &= self._rows("by_instance", [f.instance_id])
        if f.projects is not None:
            m &= self._rows("by_project", list(f.projects))
        if f.memory_type:
            if "*" in f.memory_type:
                match = type_matcher(f.memory_type)
                keys = [t for t in self.by_type if t is not None and match(t)]
            else:
                keys = [f.memory_type]
            m &= self._rows("by_type", keys)
        if f.access is not None:
            a = f.access
            seen = self._rows("by_visibility", [SHARED, *a.scopes])
            seen |= self._rows("by_visibility", [PRIVATE]) & self._rows("by_instance", [a.viewer])
            m &= seen
        if not f.include_expired:
            m &= self.expires[: self.n] > time.time()
        if allowed_ids is not None:
            allowed = np.zeros(self.n, bool)
            rows = [self.row_of[i] for i in allowed_ids if i in self.row_of]
            if rows:
                allowed[np.array(rows, np.int64)] = True
            m &= allowed
        return m


@dataclass
class _Matrix(_Rows):
    """The embedded memories of one embedder: filter columns and float32 vectors."""

    dim: int = 0
    vecs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def _resize(self, size: int) -> None:
        super()._resize(size)
        vecs = self.vecs if self.vecs.size else np.zeros((0, self.dim), np.float32)
        self.vecs = self._ext(vecs, size)

    def upsert(self, row: Any) -> None:
        r = self.place(row)
        self.vecs[r] = decode_vector(row.embedding)

    def drop(self, mid: int) -> None:
        r = self.row_of.get(mid)
        if r is not None:  # a forgotten memory's vector leaves the process's memory too
            self.valid[r] = False
            self.vecs[r] = 0.0


def _best(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores, best first; ties go by id (so a shorter search
    returns the head of a longer one)."""
    top = np.arange(len(scores))
    if k < len(scores):
        kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
        top = np.flatnonzero(scores >= kth)
    return top[np.lexsort((ids[top], -scores[top]))][:k]


NEWEST_CHANGE = text("SELECT coalesce(max(seq), 0) FROM memory_changes")
CHANGES_SEQ = "memory_changes.seq"  # its value in a read's memo


class _ChangeFed:
    """A per-process cache of rows of `memories`, kept fresh through the `memory_changes` log:
    each call reads the log's newest sequence, then reloads only the memories changed since."""

    select = ""  # SELECT ... FROM memories WHERE ... (the rows this cache holds)

    def __init__(self, db: Database) -> None:
        self.db = db
        self.lock = threading.Lock()
        self.m: Any = None

    def _params(self) -> dict[str, Any]:
        return {}

    def _empty(self) -> Any:
        raise NotImplementedError

    def _sync(self) -> Any:
        with self.db.read() as conn:
            m = self.m
            # A recall syncs several indexes in one read: the log's newest sequence is read
            # once there, unless this index stands elsewhere (then it is read afresh).
            memo = self.db.read_memo()
            seq = None if memo is None else memo.get(CHANGES_SEQ)
            if m is None or seq != m.seq:  # not read in this scope yet, or the index is behind
                seq = conn.execute(NEWEST_CHANGE).scalar()
                if memo is not None:
                    memo[CHANGES_SEQ] = seq
            if m is not None and seq == m.seq:
                return m
            changed: list[int] | None = None
            if m is not None:
                changed = [
                    r[0]
                    for r in conn.execute(
                        text("SELECT DISTINCT memory_id FROM memory_changes WHERE seq > :s"),
                        {"s": m.seq},
                    )
                ]
                if len(changed) > FULL_RELOAD_CHANGES:
                    changed = None
            if changed is None or m is None:
                m = self._empty()
                for row in conn.execute(text(self.select), self._params()):
                    m.upsert(row)
            else:
                stmt = text(self.select + " AND id IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                )
                seen: set[int] = set()
                for start in range(0, len(changed), 500):
                    chunk = changed[start : start + 500]
                    for row in conn.execute(stmt, {**self._params(), "ids": chunk}):
                        m.upsert(row)
                        seen.add(int(row.id))
                for mid in set(changed) - seen:
                    m.drop(mid)
            m.seq = seq
            self.m = m
            return m


MEANS_KEPT = 256  # filters whose mean vector an index keeps (starts over when full)

_FILTER_COLUMNS = (
    "id, is_archived, foundational, instance_id, memory_type, projects, visibility, expires_at"
)


class SqliteVectorIndex(_ChangeFed):
    select = (
        f"SELECT {_FILTER_COLUMNS}, embedding FROM memories "
        "WHERE embedding IS NOT NULL AND embedding_model = :model"
    )

    def __init__(self, db: Database, model: str, dim: int) -> None:
        super().__init__(db)
        self.model = model
        self.dim = dim
        self._means: dict[Any, Any] = {}  # mean() per (filter, sample), of index version:
        self._means_seq: Any = None

    def _params(self) -> dict[str, Any]:
        return {"model": self.model}

    def _empty(self) -> _Matrix:
        return _Matrix(dim=self.dim)

    def count(self, f: Filters) -> int:
        """Embedded memories matching `f` (subject filters are not applied here)."""
        with self.lock:
            m = self._sync()
            return int(m.mask(f, None).sum()) if m.n else 0

    def search(
        self, q: np.ndarray, k: int, f: Filters, allowed_ids: set[int] | None = None
    ) -> list[tuple[int, float]]:
        with self.lock:
            m = self._sync()
            if m.n == 0:
                return []
            rows = np.flatnonzero(m.mask(f, allowed_ids))
            count = len(rows)
            if count == 0:
                return []
            q = np.asarray(q, np.float32)
            # A selective filter scores only its rows (a gather beats a full matvec + mask).
            # einsum, not BLAS gemv: a memory-bound matvec gains little from BLAS threads, and
            # their spin-waiting made p95 ~20x p50 on a busy 2-core host (several bridges).
            if count * 2 < m.n:
                scores = np.einsum("ij,j->i", m.vecs[rows], q)
            else:
                scores = np.einsum("ij,j->i", m.vecs[: m.n], q)[rows]
            top = _best(scores, m.ids[rows], k)
            return [(int(m.ids[rows[i]]), float(scores[i])) for i in top]

    def mean(
        self, f: Filters, allowed_ids: set[int] | None, sample: int
    ) -> tuple[np.ndarray, int] | None:
        """(mean vector, rows averaged) of the newest `sample` rows matching `f`; kept per
        filter until the index changes."""
        with self.lock:
            m = self._sync()
            key = None if allowed_ids is not None else (f, sample)
            if self._means_seq != m.seq or len(self._means) >= MEANS_KEPT:
                self._means, self._means_seq = {}, m.seq
            if key in self._means:
                return self._means[key]
            out = None
            rows = np.flatnonzero(m.mask(f, allowed_ids)) if m.n else []
            if len(rows):
                if len(rows) > sample:
                    rows = rows[np.argpartition(-m.ids[rows], sample - 1)[:sample]]
                out = m.vecs[rows].mean(axis=0), len(rows)
            if key is not None:
                self._means[key] = out
            return out

    def similarities(self, q: np.ndarray, ids: list[int]) -> dict[int, float]:
        with self.lock:
            m = self._sync()
            rows = [(i, m.row_of[i]) for i in ids if i in m.row_of and m.valid[m.row_of[i]]]
            if not rows:
                return {}
            # the same einsum as search(): a memory's cosine does not depend on the leg
            sims = np.einsum("ij,j->i", m.vecs[[r for _, r in rows]], np.asarray(q, np.float32))
            return {i: float(v) for (i, _), v in zip(rows, sims, strict=False)}

    def pairwise_max(
        self, threshold: float, f: Filters, block: int = 2048
    ) -> list[tuple[int, int, float]]:
        """Pairs (a, b, sim) with a < b and sim >= threshold, by blocked matrix products."""
        with self.lock:
            m = self._sync()
            rows = np.nonzero(m.mask(f, None))[0]
            out: list[tuple[int, int, float]] = []
            vecs = m.vecs[rows]
            for start in range(0, len(rows), block):
                sims = vecs[start : start + block] @ vecs.T
                for i, j in zip(*np.nonzero(sims >= threshold), strict=False):
                    a, b = start + int(i), int(j)
                    if a < b:
                        out.append((int(m.ids[rows[a]]), int(m.ids[rows[b]]), float(sims[i, j])))
            return out


@dataclass
class _Postings(_Rows):
    """Every memory's weighted term counts as postings (term -> rows, counts) for BM25. A
    changed or deleted memory's postings are removed (its words leave the process with it)."""

    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    postings: dict[str, tuple[array, array]] = field(default_factory=dict)
    row_terms: list[tuple[str, ...]] = field(default_factory=list)

    def _resize(self, size: int) -> None:
        super()._resize(size)
        self.lengths = self._ext(self.lengths, size)

    def _new_row(self) -> int:
        self.row_terms.append(())
        return super()._new_row()

    def _purge(self, r: int) -> None:
        for t in self.row_terms[r]:
            rows, tf = self.postings[t]
            at = np.frombuffer(rows, np.int32) != r
            if at.all():
                continue
            if not at.any():
                del self.postings[t]
                continue
            self.postings[t] = (
                array("i", np.frombuffer(rows, np.int32)[at].tobytes()),
                array("f", np.frombuffer(tf, np.float32)[at].tobytes()),
            )
        self.row_terms[r] = ()
        self.lengths[r] = 0.0

    def upsert(self, row: Any) -> None:
        old = self.row_of.get(int(row.id))
        if old is not None:
            self._purge(old)
        r = self.place(row)
        fields = memory_fields(row.subject, row.content, decode_strings(row.keywords))
        counts, self.lengths[r] = weighted_terms(fields, self.weights)
        for t, c in counts.items():
            held = self.postings.get(t)
            if held is None:
                held = self.postings[t] = (array("i"), array("f"))
            held[0].append(r)
            held[1].append(c)
        self.row_terms[r] = tuple(counts)

    def drop(self, mid: int) -> None:
        r = self.row_of.get(mid)
        if r is not None and self.valid[r]:
            self.valid[r] = False
            self._purge(r)


class SqliteKeywordIndex(_ChangeFed):
    select = f"SELECT {_FILTER_COLUMNS}, subject, content, keywords FROM memories WHERE 1 = 1"

    def __init__(self, db: Database, weights: tuple[float, float, float]) -> None:
        super().__init__(db)
        self.weights = weights

    def _empty(self) -> _Postings:
        return _Postings(weights=self.weights)

    def search(
        self,
        words: list[str],
        f: Filters,
        allowed_ids: set[int] | None,
        bm25: tuple[float, float],
        cap: int,
        whole: Sequence[Sequence[str]] = (),
    ) -> KeywordHits:
        """BM25 coverage (search_text.bm25_coverage) of every memory `f` allows, with
        statistics (document frequencies, average length) of that set; the best `cap`."""
        with self.lock:
            m = self._sync()
            mask = m.mask(f, allowed_ids)
            total = int(mask.sum())
            if not total:
                return KeywordHits([], 0, set())
            postings = []
            for t in dict.fromkeys(words):
                held = m.postings.get(t)
                if held is None:
                    continue
                rows = np.frombuffer(held[0], np.int32)
                tf = np.frombuffer(held[1], np.float32)
                keep = mask[rows]
                postings.append((rows[keep], tf[keep], int(keep.sum())))
            avg = float(m.lengths[: m.n][mask].mean())
            rows, coverage = bm25_coverage(*bm25, total, avg, m.lengths, postings)
            top = _best(coverage, m.ids[rows], cap)
            rows, coverage = rows[top], coverage[top]
            holding: set[int] = set()
            for needed in whole:
                has = np.ones(len(rows), bool)
                for t in needed:
                    held = m.postings.get(t)
                    has &= np.isin(rows, np.frombuffer(held[0], np.int32)) if held else False
                holding.update(int(i) for i in m.ids[rows[has]])
            scored = [(int(i), float(c)) for i, c in zip(m.ids[rows], coverage, strict=True)]
            return KeywordHits(scored, total, holding)


def _shared(db: Database, key: tuple[Any, ...], make: Callable[[], _ChangeFed]) -> Any:
    """The index of `db` under `key`, made once per database and process."""
    with db.lock:
        index = db.cache.get(key)
        if index is None:
            index = db.cache[key] = make()
        return index


def keyword_index(db: Database, weights: tuple[float, float, float]) -> SqliteKeywordIndex:
    return _shared(db, ("keyword_index", weights), lambda: SqliteKeywordIndex(db, weights))


def sqlite_index(db: Database, model: str, dim: int) -> SqliteVectorIndex:
    return _shared(db, ("vector_index", model), lambda: SqliteVectorIndex(db, model, dim))
