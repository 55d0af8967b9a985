"""Vector search through the backend, and the guard that keeps one embedder per database.

The search itself is backend-specific (`Backend.vector_search`): an in-process numpy index on
SQLite, HNSW or an exact scan on PostgreSQL, both filling the limit under filters.
"""

from __future__ import annotations

import numpy as np

from ..db import schema
from ..db.backend import Hits
from ..db.engine import Database
from ..db.filters import Filters
from ..embeddings import Embedder
from ..errors import Conflict


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
