"""Audit checks and re-embedding on both backends."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from memory_palace import Conflict, Palace
from memory_palace.embeddings import HashingEmbedder
from sqlalchemy import text

OLD = datetime(2020, 1, 1, tzinfo=UTC)


def add(palace: Palace, content: str, **kw) -> int:
    return palace.call("memory_set", {"content": content, **kw})["id"]


def test_audit_finds_each_problem(palace: Palace) -> None:
    a = add(
        palace, "the build server runs on port 8080 behind nginx", project="ops", auto_link=False
    )
    b = add(
        palace, "the build server runs on port 8080 behind nginx!", project="ops", auto_link=False
    )
    c = add(palace, "coffee is served at nine", project="life", auto_link=False)
    d = add(palace, "coffee is never served", project="life", auto_link=False)
    e = add(palace, "an unrelated note about penguins", project="zoo", auto_link=False)
    palace.call("memory_link", {"source_id": c, "target_id": d, "relation_type": "contradicts"})
    palace.call("memory_link", {"source_id": a, "target_id": e, "relation_type": "derived_from"})
    palace.call("memory_archive", {"memory_ids": [e], "dry_run": False})
    db = palace.database()
    with db.write() as conn:  # an auto-link across projects, and an old untouched memory
        conn.execute(
            text(
                "INSERT INTO memory_edges (created_at, source_id, target_id, "
                "relation_type, strength, auto_linked) VALUES "
                "(:now, :s, :t, 'relates_to', 0.8, :t1)"
            ),
            {"now": db.backend.encode("time", OLD), "s": b, "t": c, "t1": True},
        )
        conn.execute(
            text("UPDATE memories SET created_at = :old, embedding = NULL WHERE id = :i"),
            {"old": db.backend.encode("time", OLD), "i": d},
        )
    result = palace.call("memory_audit", {})
    assert [(p["memory_a"], p["memory_b"]) for p in result["duplicates"]] == [(a, b)]
    assert [r["id"] for r in result["stale"]] == [d]
    assert [(r["source_id"], r["target_id"]) for r in result["orphan_edges"]] == [(a, e)]
    assert [r["id"] for r in result["missing_embeddings"]] == [d]
    assert [(r["source_id"], r["target_id"]) for r in result["contradictions"]] == [(c, d)]
    assert [(r["source_id"], r["target_id"]) for r in result["cross_project_auto_links"]] == [
        (b, c)
    ]
    assert result["unlinked"] == []
    assert result["summary"]["total_issues"] == 6
    only = palace.call("memory_audit", {"checks": ["unlinked"], "project": "zoo"})
    assert set(only) == {"unlinked", "summary"}


class FlakyEmbedder(HashingEmbedder):
    """Fails (like a crash) on the n-th call to embed_documents."""

    def __init__(self, dim: int, fail_on_call: int) -> None:
        super().__init__(dim)
        self.calls = 0
        self.fail_on_call = fail_on_call

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash")
        return super().embed_documents(texts)


def test_reembed_changes_dimension_and_resumes(make_palace, db_url: str) -> None:
    old = make_palace(db_url)
    words = ["apple", "bridge", "cactus", "dolphin", "engine", "falcon", "glacier"]
    ids = [add(old, f"a note about the {w}", auto_link=False) for w in words]
    new = make_palace(db_url, embedder=FlakyEmbedder(256, fail_on_call=3))
    with pytest.raises(Conflict, match="reembed"):
        new.call("memory_recall", {"query": "topic"})
    with pytest.raises(Conflict, match="all_memories=true"):
        new.call("memory_reembed", {"missing_only": True, "dry_run": False})
    dry = new.call("memory_reembed", {"all_memories": True})
    assert dry["would_reembed"] == 7 and "resizes vectors from 384 to 256" in dry["note"]
    with pytest.raises(RuntimeError):  # crash after two committed batches of 2
        new.call("memory_reembed", {"all_memories": True, "dry_run": False, "batch_size": 2})
    progress: list[tuple[int, int]] = []
    done = new.call(
        "memory_reembed",
        {"missing_only": True, "dry_run": False, "batch_size": 2},
        progress=lambda d, t: progress.append((d, t)),
    )
    assert done["reembedded"] == 3 and done["failed"] == 0
    assert progress[-1] == (3, 3)
    stats = new.call("memory_stats", {})
    assert stats["embedding_models"] == {"hash:v1-256": 7}
    hits = new.call("memory_recall", {"query": "engine", "limit": 1})
    assert hits["memories"][0]["id"] == ids[4]


def test_reembed_dry_run_default_and_modes(palace: Palace) -> None:
    ids = [
        add(palace, f"fact {i}", project="p" if i < 2 else "q", auto_link=False) for i in range(4)
    ]
    assert palace.call("memory_reembed", {})["would_reembed"] == 0  # nothing missing
    assert palace.call("memory_reembed", {"memory_ids": ids[:3]})["would_reembed"] == 3
    assert palace.call("memory_reembed", {"project": "p"})["would_reembed"] == 2
    assert palace.call("memory_reembed", {"all_memories": True})["would_reembed"] == 4
    res = palace.call("memory_reembed", {"memory_ids": [ids[0]], "dry_run": False})
    assert res["reembedded"] == 1


def test_failed_embedding_tag_cleared_by_reembed(make_palace, db_url: str) -> None:
    class Broken(HashingEmbedder):
        def embed_documents(self, texts):
            from memory_palace import EmbedderUnavailable

            raise EmbedderUnavailable("embedder down: start it")

    broken = make_palace(db_url, embedder=Broken(384))
    r = broken.call("memory_set", {"content": "stored anyway"})
    assert r["embedded"] is False and "embedder down" in r["warning"]
    assert (
        "embedding_failed" in broken.call("memory_get", {"memory_ids": r["id"]})["memory"]["tags"]
    )
    good = make_palace(db_url)
    assert good.call("memory_reembed", {"missing_only": True, "dry_run": False})["reembedded"] == 1
    mem = good.call("memory_get", {"memory_ids": r["id"]})["memory"]
    assert mem["embedded"] is True and "embedding_failed" not in mem["tags"]
