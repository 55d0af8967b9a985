"""Graph context and traversal through memory_get and memory_recall, on both backends."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from memory_palace import Palace

# (source, target, type, strength) over memories named 1..8 (mapped to real ids)
EDGES = [
    (1, 2, "refines", 0.9),
    (2, 3, "derived_from", 0.5),
    (3, 4, "refines", 0.8),
    (4, 5, "refines", 0.8),
    (5, 6, "refines", 0.8),
    (6, 7, "refines", 0.8),
    (8, 1, "contradicts", 0.3),
]


@pytest.fixture
def chain(palace: Palace) -> tuple[Palace, dict[int, int]]:
    m = {
        n: palace.call(
            "memory_set", {"content": f"graph node {n}", "subject": f"s{n}", "auto_link": False}
        )["id"]
        for n in range(1, 9)
    }
    for s, t, ty, st in EDGES:
        palace.call(
            "memory_link",
            {"source_id": m[s], "target_id": m[t], "relation_type": ty, "strength": st},
        )
    return palace, m


def reference_bfs(
    start: list[int],
    depth: int,
    direction: str,
    types: list[str] | None,
    min_strength: float | None,
) -> dict[int, int]:
    """Plain BFS over EDGES (names, not ids): the expected {node: hop}."""
    ok = [
        (s, t)
        for s, t, ty, st in EDGES
        if (types is None or ty in types) and (min_strength is None or st >= min_strength)
    ]
    seen = {n: 0 for n in start}
    frontier = list(start)
    for hop in range(1, depth + 1):
        nxt = []
        for n in frontier:
            for s, t in ok:
                for a, b, allowed in (
                    (s, t, direction in ("outgoing", "both")),
                    (t, s, direction in ("incoming", "both")),
                ):
                    if allowed and a == n and b not in seen:
                        seen[b] = hop
                        nxt.append(b)
        frontier = nxt
    return seen


def test_traversal_directions_types_strength(chain: tuple[Palace, dict[int, int]]) -> None:
    palace, m = chain
    name = {v: k for k, v in m.items()}

    def walk(**kw: Any) -> dict[int, int]:
        out = palace.call("memory_get", {"memory_ids": m[1], "traverse": True, **kw})
        assert "graph_context" not in out
        return {name[n["id"]]: n["depth"] for n in out["traversal"]["nodes"]}

    assert walk(direction="outgoing") == {1: 0, 2: 1, 3: 2, 4: 3}
    assert walk(direction="incoming") == {1: 0, 8: 1}
    assert walk(max_depth=1) == {1: 0, 2: 1, 8: 1}
    assert walk(max_depth=5, direction="outgoing") == {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5}
    assert walk(direction="outgoing", relation_types=["refines"]) == {1: 0, 2: 1}
    assert walk(min_strength=0.6) == {1: 0, 2: 1}
    assert walk(relation_types=["contradicts", "derived_from"]) == {1: 0, 8: 1}
    out = palace.call(
        "memory_get",
        {"memory_ids": m[1], "traverse": True, "direction": "outgoing", "max_depth": 2},
    )["traversal"]
    assert out["start_id"] == m[1] and out["max_depth"] == 2 and out["direction"] == "outgoing"
    assert sorted((e["source"], e["target"], e["type"]) for e in out["edges"]) == [
        (m[1], m[2], "refines"),
        (m[2], m[3], "derived_from"),
    ]
    assert [n["subject"] for n in out["nodes"]] == ["s1", "s2", "s3"]


def test_every_get_parameter_combination(chain: tuple[Palace, dict[int, int]]) -> None:
    """Every combination on SQLite; on PostgreSQL, whose code differs only below the SQL,
    every fifth (5 is prime to each parameter's count, so every value of each is met)."""
    palace, m = chain
    name = {v: k for k, v in m.items()}
    stride = 5 if palace.database().backend.kind == "postgres" else 1
    combos = itertools.product(
        [True, False],
        ["outgoing", "incoming", "both"],
        [None, ["refines"], ["refines", "contradicts"]],
        [None, 0.5],
        [0, 1, 3, 5],
        [True, False],
        ["int", "list"],
        ["summary", "full"],
    )
    for traverse, direction, types, strength, depth, synth, shape, mode in itertools.islice(
        combos, 0, None, stride
    ):
        ids: Any = m[3] if shape == "int" else [m[3], m[1], 999]
        params = {
            "memory_ids": ids,
            "traverse": traverse,
            "direction": direction,
            "graph_depth": depth,
            "synthesize": synth,
            "graph_mode": mode,
            "max_depth": max(depth, 1),
        }
        if types is not None:
            params["relation_types"] = types
        if strength is not None:
            params["min_strength"] = strength
        out = palace.call("memory_get", params)
        label = str(params)
        seeds = [3] if shape == "int" else [3, 1]
        if shape == "int":
            assert out["memory"]["id"] == m[3], label
        else:
            assert [x["id"] for x in out["memories"]] == [m[3], m[1]], label
            assert out["not_found"] == [999], label
            assert ("note" in out) is synth, label
        if traverse:
            walks = (
                [out["traversal"]]
                if shape == "int"
                else [out["traversals"][str(m[s])] for s in seeds]
            )
            for seed, w in zip(seeds, walks, strict=False):
                want = reference_bfs([seed], max(depth, 1), direction, types, strength)
                assert {name[n["id"]]: n["depth"] for n in w["nodes"]} == want, label
            continue
        want = reference_bfs(seeds, depth, direction, types, strength)
        if depth == 0 or len(want) == len(seeds):
            assert "graph_context" not in out, label
            continue
        ctx = out["graph_context"]
        nodes = {name[int(k)] for k in ctx["nodes"]}
        assert nodes == set(want), label
        if mode == "summary":
            assert ctx["seed_ids"] == [m[s] for s in seeds], label
        else:
            assert all(
                e["type"] in (types or ["refines", "derived_from", "contradicts"])
                for e in ctx["edges"]
            ), label


def test_summary_and_full_modes(chain: tuple[Palace, dict[int, int]]) -> None:
    palace, m = chain
    summary = palace.call("memory_get", {"memory_ids": m[2]})["graph_context"]
    assert summary["nodes"][str(m[2])] == f"s2 | 2 connections | avg 0.70 | >{m[3]},<{m[1]}"
    assert summary["total_edges"] == 2 and summary["seed_ids"] == [m[2]]
    assert "omitted_nodes" not in summary
    full = palace.call("memory_get", {"memory_ids": m[2], "graph_mode": "full"})["graph_context"]
    assert full["nodes"] == {str(m[1]): "s1", str(m[2]): "s2", str(m[3]): "s3"}
    assert sorted((e["source"], e["target"], e["type"], e["strength"]) for e in full["edges"]) == [
        (m[1], m[2], "refines", 0.9),
        (m[2], m[3], "derived_from", 0.5),
    ]
    for depth in range(1, 6):
        ctx = palace.call(
            "memory_get", {"memory_ids": m[1], "graph_depth": depth, "graph_mode": "full"}
        )["graph_context"]
        assert {int(k) for k in ctx["nodes"]} == {
            m[n] for n in reference_bfs([1], depth, "both", None, None)
        }


def test_summary_cap_keeps_seeds(palace: Palace) -> None:
    hub = palace.call("memory_set", {"content": "hub", "subject": "hub", "auto_link": False})["id"]
    spokes = [
        palace.call("memory_set", {"content": f"spoke {i}", "auto_link": False})["id"]
        for i in range(40)
    ]
    for s in spokes:
        palace.call(
            "memory_link",
            {"source_id": hub, "target_id": s, "relation_type": "refines", "strength": 0.5},
        )
    for s in spokes[35:]:  # the last spokes have a second edge to the seed `last`
        palace.call(
            "memory_link",
            {"source_id": s, "target_id": spokes[20], "relation_type": "derived_from"},
        )
    last = spokes[20]
    ctx = palace.call("memory_get", {"memory_ids": [last, hub]})["graph_context"]
    assert len(ctx["nodes"]) == 30 and ctx["omitted_nodes"] == 11
    assert list(ctx["nodes"])[:2] == [str(last), str(hub)]
    # after the seeds, the best-connected nodes (degree 2: hub + last), then the lowest ids
    rest = [s for s in spokes if s != last]
    want = [last, hub, *spokes[35:], *[s for s in rest if s not in spokes[35:]][:23]]
    assert sorted(int(k) for k in ctx["nodes"]) == sorted(want)
    many = palace.call("memory_get", {"memory_ids": [*spokes[:33], hub]})["graph_context"]
    assert set(many["nodes"]) >= {str(s) for s in [*spokes[:33], hub]}
    assert len(many["nodes"]) == 34


def test_recall_graph_context(chain: tuple[Palace, dict[int, int]]) -> None:
    palace, m = chain
    out = palace.call(
        "memory_recall",
        {"query": "s4 graph node 4", "graph_top_n": 1, "graph_depth": 2, "graph_mode": "full"},
    )
    assert out["memories"][0]["id"] == m[4]
    assert {int(k) for k in out["graph_context"]["nodes"]} == {m[n] for n in (2, 3, 4, 5, 6)}
    none = palace.call("memory_recall", {"query": "graph node", "include_graph": False})
    assert "graph_context" not in none
