"""memory_set, memory_get, memory_archive, memory_link/unlink and memory_stats on both backends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from memory_palace import Palace
from memory_palace.embeddings import HashingEmbedder
from memory_palace.errors import Conflict, InvalidParams, NotFound
from sqlalchemy import text

BASE = "the deploy pipeline pushes docker images to the staging registry every night"
NEAR = "the deploy pipeline pushes docker images to the staging registry every morning"  # 0.93
MID = "deploy pipeline pushes docker images to staging"  # 0.746
LOW = "the deploy pipeline pushes images to the production registry on fridays"  # 0.724


def add(palace: Palace, content: str, **kw: Any) -> int:
    return palace.call("memory_set", {"content": content, **kw})["id"]


def count(palace: Palace, table: str = "memories") -> int:
    with palace.database().read() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar())


def edges(palace: Palace) -> list[tuple[int, int, str, float, bool]]:
    with palace.database().read() as conn:
        rows = conn.execute(
            text(
                "SELECT source_id, target_id, relation_type, strength, "
                "auto_linked FROM memory_edges ORDER BY id"
            )
        ).all()
    return [(int(a), int(b), c, float(d), bool(e)) for a, b, c, d, e in rows]


def cos(a: str, b: str) -> float:
    e = HashingEmbedder(384)
    v = e.embed_documents([a, b])
    return float(v[0] @ v[1])


# --- remember ---------------------------------------------------------------------------------


def test_remember_stores_row_and_embedding(palace: Palace) -> None:
    out = palace.call(
        "memory_set",
        {
            "content": "Postgres listens on 5432",
            "subject": "pg port",
            "keywords": ["postgres"],
            "tags": ["ops"],
            "project": ["infra", "ops"],
            "memory_type": "fact",
        },
    )
    assert out == {"id": out["id"], "subject": "pg port", "embedded": True, "visibility": "shared"}
    mem = palace.call("memory_get", {"memory_ids": out["id"]})["memory"]
    assert mem["content"] == "Postgres listens on 5432"
    assert mem["projects"] == ["infra", "ops"]
    assert mem["keywords"] == ["postgres"] and mem["tags"] == ["ops"]
    assert mem["embedding_model"] == "hash:v1-384" and mem["embedded"] is True
    assert mem["instance_id"] == "default"


def test_unknown_instance_only_warns(palace: Palace) -> None:
    out = palace.call("memory_set", {"content": "x marks the spot", "instance_id": "ghost"})
    assert "ghost" in out["instance_warning"] and out["embedded"] is True


def test_duplicate_detection(palace: Palace) -> None:
    first = add(palace, "The build server runs on port 8080", project=["ops", "ci"])
    dup = palace.call(
        "memory_set",
        {"content": "  the BUILD server   runs on port 8080 ", "project": ["ci", "ops"]},
    )
    assert dup["id"] == first and dup["duplicate_of"] == first
    assert count(palace) == 1
    other_project = add(palace, "The build server runs on port 8080", project="life")
    other_type = add(
        palace, "The build server runs on port 8080", project=["ops", "ci"], memory_type="decision"
    )
    assert len({first, other_project, other_type}) == 3
    assert count(palace) == 3
    # an archived copy is not a duplicate: remembering it again restores it as a new row
    palace.call("memory_archive", {"memory_ids": [other_project], "dry_run": False})
    again = palace.call(
        "memory_set", {"content": "The build server runs on port 8080", "project": "life"}
    )
    assert "duplicate_of" not in again and again["id"] not in (first, other_project)


def test_supersede_links_and_archives(palace: Palace) -> None:
    old = add(palace, "the office wifi password is hunter2", auto_link=False)
    out = palace.call(
        "memory_set",
        {"content": "the office wifi password is now correcthorse", "supersedes_id": old},
    )
    assert out["superseded"] == old
    assert (out["id"], old, "supersedes", 1.0, False) in edges(palace)
    got = palace.call("memory_get", {"memory_ids": old, "include_graph": False})["memory"]
    assert got["is_archived"] is True and "SUPERSEDED" in got["source_context"]
    assert not any(link["target"] == old for link in out.get("links_created", []))
    hits = palace.call("memory_recall", {"query": "office wifi password"})["memories"]
    assert [m["id"] for m in hits] == [out["id"]]


def test_supersede_unknown_id_is_not_found_and_writes_nothing(palace: Palace) -> None:
    with pytest.raises(NotFound, match="supersedes_id: memory 999 does not exist"):
        palace.call("memory_set", {"content": "new fact", "supersedes_id": 999})
    assert count(palace) == 0


def test_auto_link_default_thresholds(palace: Palace) -> None:
    near = add(palace, NEAR, project="ops")
    mid = add(palace, MID, project="ops")
    low = add(palace, LOW, project="ops")
    other = add(palace, NEAR + " too", project="elsewhere")  # same_project_only
    assert cos(BASE, NEAR) >= 0.75 and 0.675 <= cos(BASE, MID) < 0.75
    assert 0.675 <= cos(BASE, LOW) < cos(BASE, MID)
    before = edges(palace)
    out = palace.call("memory_set", {"content": BASE, "project": "ops"})
    new = out["id"]
    assert [link["target"] for link in out["links_created"]] == [near]
    assert out["links_created"][0]["score"] == pytest.approx(cos(BASE, NEAR), abs=1e-3)
    assert [s["target"] for s in out["suggested_links"]] == [mid, low]
    created = [e for e in edges(palace) if e not in before]
    assert len(created) == 1
    src, tgt, rel, strength, auto = created[0]
    assert (src, tgt, rel, auto) == (new, near, "relates_to", True)
    assert strength == pytest.approx(cos(BASE, NEAR), abs=1e-3)
    assert other not in {s["target"] for s in out["suggested_links"]}


def test_auto_link_thresholds_from_config(make_palace: Callable[..., Palace], db_url: str) -> None:
    palace = make_palace(db_url, auto_link={"link_threshold": 0.735, "suggest_threshold": 0.70})
    mid = add(palace, MID)
    low = add(palace, LOW)
    out = palace.call("memory_set", {"content": BASE})
    assert [link["target"] for link in out["links_created"]] == [mid]
    assert [s["target"] for s in out["suggested_links"]] == [low]
    off = make_palace(db_url, auto_link={"enabled": False})
    out2 = off.call("memory_set", {"content": BASE + " again"})
    assert "links_created" not in out2 and "suggested_links" not in out2
    forced = off.call("memory_set", {"content": BASE + " once more", "auto_link": True})
    assert forced["links_created"]


class BrokenEmbedder(HashingEmbedder):
    """Embeds queries but fails on documents, like a model server that dies mid-write."""

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        raise RuntimeError("model server went away")


def test_embedding_failure_keeps_the_row(make_palace: Callable[..., Palace], db_url: str) -> None:
    palace = make_palace(db_url, embedder=BrokenEmbedder(384))
    out = palace.call(
        "memory_set", {"content": "ticket PROJ-4711 blocks the release", "tags": ["urgent"]}
    )
    assert out["embedded"] is False
    assert "model server went away" in out["warning"] and "memory_reembed" in out["warning"]
    mem = palace.call("memory_get", {"memory_ids": out["id"]})["memory"]
    assert mem["tags"] == ["urgent", "embedding_failed"]
    assert mem["embedded"] is False and mem["embedding_model"] is None
    hits = palace.call("memory_recall", {"query": "PROJ-4711"})["memories"]
    assert [(m["id"], m["found_by"]) for m in hits] == [(out["id"], "keyword")]


# --- memory_get -------------------------------------------------------------------------------


def test_get_int_list_and_not_found(palace: Palace) -> None:
    a = add(palace, "alpha memory", auto_link=False)
    b = add(palace, "beta memory", auto_link=False)
    one = palace.call("memory_get", {"memory_ids": a})
    assert one["memory"]["id"] == a and "graph_context" not in one
    many = palace.call("memory_get", {"memory_ids": [b, a, 404, b]})
    assert [m["id"] for m in many["memories"]] == [b, a]
    assert many["count"] == 2 and many["not_found"] == [404]
    with pytest.raises(NotFound, match="memory 404"):
        palace.call("memory_get", {"memory_ids": 404})
    none = palace.call("memory_get", {"memory_ids": [404]})
    assert none["count"] == 0 and none["not_found"] == [404]
    with pytest.raises(InvalidParams):
        palace.call("memory_get", {"memory_ids": []})
    summary = palace.call("memory_get", {"memory_ids": a, "detail_level": "summary"})["memory"]
    assert "access_count" not in summary and summary["content"] == "alpha memory"
    # each get counts one access, in SQL
    assert palace.call("memory_get", {"memory_ids": a})["memory"]["access_count"] == 4


def test_get_synthesize_without_llm(palace: Palace) -> None:
    a = add(palace, "one", auto_link=False)
    b = add(palace, "two", auto_link=False)
    assert "note" in palace.call("memory_get", {"memory_ids": [a, b], "synthesize": True})
    assert "note" not in palace.call("memory_get", {"memory_ids": a, "synthesize": True})


# --- archive ----------------------------------------------------------------------------------


def test_archive_dry_run_foundational_and_centrality(palace: Palace) -> None:
    hub = add(palace, "the hub decision", memory_type="decision", auto_link=False)
    core = add(
        palace, "a foundational truth", memory_type="decision", foundational=True, auto_link=False
    )
    auto_hub = add(palace, "popular with auto links", memory_type="decision", auto_link=False)
    leaf = add(palace, "a leaf decision", memory_type="decision", auto_link=False)
    spokes = [add(palace, f"spoke number {i}", auto_link=False) for i in range(5)]
    for s in spokes:
        palace.call(
            "memory_link", {"source_id": s, "target_id": hub, "relation_type": "derived_from"}
        )
    db = palace.database()
    with db.write() as conn:  # auto-links never count toward centrality
        for s in spokes:
            conn.execute(
                text(
                    "INSERT INTO memory_edges (created_at, source_id, target_id, "
                    "relation_type, strength, auto_linked) VALUES "
                    "('2024-01-01T00:00:00+00:00', :s, :t, 'relates_to', 0.9, :a)"
                ),
                {"s": s, "t": auto_hub, "a": True},
            )
    dry = palace.call("memory_archive", {"memory_type": "decision"})
    assert dry["would_archive"] == 2 and "dry run" in dry["note"]
    assert [d["id"] for d in dry["details"]] == [auto_hub, leaf]
    assert dry["skipped_foundational"] == [core] and dry["skipped_centrality"] == [hub]
    assert count_active(palace) == 9
    by_id = palace.call("memory_archive", {"memory_ids": [core, hub, leaf, 999], "dry_run": False})
    assert by_id["archived_count"] == 1
    assert by_id["skipped_foundational"] == [core] and by_id["skipped_centrality"] == [hub]
    assert by_id["not_found_or_archived"] == [999]
    unprotected = palace.call(
        "memory_archive",
        {
            "memory_ids": [hub],
            "dry_run": False,
            "centrality_protection": False,
            "reason": "obsolete",
        },
    )
    assert unprotected["archived_count"] == 1
    assert count_active(palace) == 7
    got = palace.call("memory_get", {"memory_ids": hub, "include_graph": False})["memory"]
    assert got["is_archived"] and "ARCHIVED: obsolete" in got["source_context"]
    assert palace.call("memory_archive", {"memory_ids": [leaf]})["not_found_or_archived"] == [leaf]
    with pytest.raises(InvalidParams, match="memory_ids or at least one filter"):
        palace.call("memory_archive", {})


def test_archive_warns_at_three_links(palace: Palace) -> None:
    target = add(palace, "target", auto_link=False)
    for i in range(3):
        src = add(palace, f"source {i}", auto_link=False)
        palace.call(
            "memory_link", {"source_id": src, "target_id": target, "relation_type": "refines"}
        )
    out = palace.call("memory_archive", {"memory_ids": [target]})
    assert out["warning_count"] == 1 and out["details"][0]["in_degree"] == 3


def count_active(palace: Palace) -> int:
    return palace.call("memory_stats", {})["active_memories"]


# --- link / unlink / stats --------------------------------------------------------------------


def test_link_unlink(palace: Palace) -> None:
    a = add(palace, "first", auto_link=False)
    b = add(palace, "second", auto_link=False)
    out = palace.call(
        "memory_link",
        {
            "source_id": a,
            "target_id": b,
            "relation_type": "refines",
            "strength": 7,
            "metadata": {"why": "test"},
        },
    )
    assert out["relation_type"] == "refines" and out["bidirectional"] is False
    assert edges(palace) == [(a, b, "refines", 1.0, False)]
    with pytest.raises(Conflict) as err:
        palace.call("memory_link", {"source_id": a, "target_id": b, "relation_type": "refines"})
    assert err.value.to_dict()["data"]["existing_edge_id"] == out["id"]
    with pytest.raises(InvalidParams, match="itself"):
        palace.call("memory_link", {"source_id": a, "target_id": a, "relation_type": "refines"})
    with pytest.raises(NotFound):
        palace.call("memory_link", {"source_id": a, "target_id": 999, "relation_type": "refines"})
    palace.call("memory_link", {"source_id": a, "target_id": b, "relation_type": "contradicts"})
    sup = palace.call(
        "memory_link",
        {"source_id": b, "target_id": a, "relation_type": "supersedes", "archive_old": True},
    )
    assert sup["old_memory_archived"] is True
    assert (
        palace.call("memory_unlink", {"source_id": a, "target_id": b, "relation_type": "refines"})[
            "removed"
        ]
        == 1
    )
    assert palace.call("memory_unlink", {"source_id": a, "target_id": b})["removed"] == 1
    assert palace.call("memory_unlink", {"source_id": a, "target_id": b})["removed"] == 0
    assert edges(palace) == [(b, a, "supersedes", 1.0, False)]


def test_stats(palace: Palace) -> None:
    a = add(palace, "stat one", project=["p1", "p2"], memory_type="fact", auto_link=False)
    add(
        palace,
        "stat two",
        project="p1",
        memory_type="decision",
        instance_id="other",
        foundational=True,
        auto_link=False,
    )
    c = add(palace, "stat three", project="p3", auto_link=False)
    palace.call("memory_link", {"source_id": a, "target_id": c, "relation_type": "refines"})
    palace.call("memory_get", {"memory_ids": a, "include_graph": False})
    palace.call("memory_archive", {"memory_ids": [c], "dry_run": False})
    s = palace.call("memory_stats", {})
    counts = (
        "total_memories",
        "active_memories",
        "archived_memories",
        "foundational_memories",
        "embedded_memories",
        "total_edges",
    )
    assert [s[c] for c in counts] == [3, 2, 1, 1, 3, 1]
    assert s["by_type"] == {"fact": 1, "decision": 1}
    assert s["by_instance"] == {"default": 1, "other": 1}
    assert s["by_project"] == {"p1": 2, "p2": 1}
    assert s["most_accessed"][0] == f"#{a}:  (1)"
    assert s["embedding_models"] == {"hash:v1-384": 3}


def test_recent(palace: Palace) -> None:
    a = add(palace, "oldest", project="a_c", memory_type="code_py", auto_link=False)
    b = add(palace, "middle", project="abc", memory_type="code-js", auto_link=False)
    c = add(
        palace,
        "newest",
        project=["a_c", "x"],
        memory_type="fact",
        instance_id="other",
        auto_link=False,
    )
    out = palace.call("memory_recent", {})
    assert [m["id"] for m in out["memories"]] == [c, b, a]
    assert out["count"] == 3 and out["total_available"] == 3
    assert set(out["memories"][0]) == {
        "id",
        "subject",
        "memory_type",
        "projects",
        "project",
        "created_at",
        "foundational",
        "content",
    }
    assert [m["id"] for m in palace.call("memory_recent", {"project": "a_c"})["memories"]] == [c, a]
    assert palace.call("memory_recent", {"project": "a%"})["count"] == 0
    assert [
        m["id"] for m in palace.call("memory_recent", {"memory_type": "code_*"})["memories"]
    ] == [a]
    assert [
        m["id"] for m in palace.call("memory_recent", {"instance_id": "other"})["memories"]
    ] == [c]
    limited = palace.call("memory_recent", {"limit": 1, "verbose": True})
    assert limited["count"] == 1 and limited["total_available"] == 3
    assert limited["memories"][0]["access_count"] == 0
    palace.call("memory_archive", {"memory_ids": [c], "dry_run": False})
    assert palace.call("memory_recent", {})["total_available"] == 2
    assert palace.call("memory_recent", {"include_archived": True})["total_available"] == 3
