"""Vector search through the backend, and the guard that keeps one embedder per database.

The search itself is backend-specific (`Backend.vector_search`): an in-process numpy index on
SQLite, HNSW or an exact scan on PostgreSQL, both filling the limit under filters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..db import schema
from ..db.backend import Hits
from ..db.engine import Database
from ..db.filters import Filters
from ..embeddings import Embedder
from ..errors import Conflict

CENTRE_SAMPLE = 1000  # the newest vectors of a filter averaged for its centre
#: Fewer memories than this in a filter and its centre is mostly the candidates themselves:
#: recall then ranks by plain cosine.
CENTRE_MIN_ROWS = 20


@dataclass(frozen=True)
class Query:
    """A query vector as recall compares memories to it.

    Plain cosine lists short generic texts ("Theo: All the time, honestly.") first for
    almost any query: they sit near the centre of the memories a filter allows, and what
    all of those share (a speaker's name, a date, a project's words) is near every query
    ("hubs"). Centred with weight w, a memory d scores d.q - w (d.mu - |mu|^2) for the
    centre mu (the mean of the filter's newest CENTRE_SAMPLE vectors): its plain cosine,
    less w times how much nearer the centre it is than the average memory. That is about
    the plain cosine for a typical memory and lower for a generic one, and it orders
    memories as their cosine to q - w mu does: an index is searched by `vector`, and
    `score` maps the cosines it returns.
    """

    plain: np.ndarray  # the query as embedded
    vector: np.ndarray  # what the index is searched by: the unit vector of q - w mu
    scale: float = 1.0  # |q - w mu|
    offset: float = 0.0  # w |mu|^2

    @property
    def centred(self) -> bool:
        return self.vector is not self.plain

    def score(self, cosine: float) -> float:
        """The centred score of a memory from its cosine to `vector`."""
        return self.scale * cosine + self.offset


def query(db: Database, embedder: Embedder, q: np.ndarray, f: Filters, weight: float) -> Query:
    """The query centred with `weight` on the memories `f` allows (plain when the weight is 0
    or fewer than CENTRE_MIN_ROWS of them have vectors)."""
    q = np.asarray(q, np.float32)
    got = None
    if weight > 0:
        got = db.backend.vector_mean(db, embedder.id, embedder.dim, f, CENTRE_SAMPLE)
    if got is None or got[1] < CENTRE_MIN_ROWS:
        return Query(q, q)
    mu = weight * got[0].astype(np.float32)
    off = q - mu
    norm = float(np.linalg.norm(off))
    if norm < 1e-6:
        return Query(q, q)
    return Query(q, off / norm, norm, float(mu @ got[0]))


def search(
    db: Database, embedder: Embedder, q: np.ndarray, k: int, f: Filters, need: int | None = None
) -> Hits:
    """Top-k (id, cosine similarity) among memories embedded by `embedder` matching `f`; at
    least `need` (default k) of them when that many match (Backend.vector_search)."""
    return db.backend.vector_search(db, embedder.id, embedder.dim, q, k, f, need)


def similarities(
    db: Database, embedder: Embedder, q: np.ndarray, ids: list[int]
) -> dict[int, float]:
    """Cosine similarity of the query to each given memory that has a vector."""
    return db.backend.similarities(db, embedder.id, embedder.dim, q, ids)


def check_embedder(db: Database, embedder: Embedder) -> None:
    """Refuse to mix embedders: stored vectors must come from the configured one.

    Raises Conflict naming the fix (memory_reembed) on a dimension or model mismatch.
    """
    key = ("embedder_ok", embedder.id)
    if db.cache.get(key):
        return
    schema.check_dimension(db, embedder.dim)
    others = schema.foreign_embedders(db, embedder.id)
    if others:
        listed = ", ".join(f"{m} ({n} memories)" for m, n in others)
        raise Conflict(
            f"database {db.masked_url} holds vectors from another embedder: {listed}; the "
            f"configured one is {embedder.id}. Run `memory-palace reembed --all --execute` "
            "(tool memory_reembed with all_memories=true, dry_run=false), or configure the "
            "embedder those vectors came from."
        )
    db.cache[key] = True


def forget_embedder_check(db: Database, embedder: Embedder) -> None:
    """After a re-embed the stored vectors changed: check them again on next use."""
    db.cache.pop(("embedder_ok", embedder.id), None)
