"""Graph context and traversal over memory_edges: one batched query per hop, never per node."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import bindparam, text

from ..db.engine import Database
from ..db.filters import Access, Filters, where

MAX_DEPTH = 5
SUMMARY_NODE_CAP = 30


def _edges_touching(
    conn: Any,
    db: Database,
    ids: list[int],
    direction: str,
    relation_types: list[str] | None,
    min_strength: float | None,
    access: Access | None,
) -> list[Any]:
    conds = []
    if direction in ("outgoing", "both"):
        conds.append("e.source_id IN :ids")
    if direction in ("incoming", "both"):
        conds.append("e.target_id IN :ids")
    # Both ends must be visible to the reader: a private neighbour is not even named.
    seen = Filters(include_archived=True, access=access)
    s_cond, params = where(db, seen, "s")
    t_cond, _ = where(db, seen, "t")
    sql = (
        "SELECT e.id, e.source_id, e.target_id, e.relation_type, e.strength, e.bidirectional "
        "FROM memory_edges e JOIN memories s ON s.id = e.source_id "
        f"JOIN memories t ON t.id = e.target_id WHERE ({' OR '.join(conds)}) "
        f"AND {s_cond} AND {t_cond}"
    )
    params["ids"] = ids
    binds = [bindparam("ids", expanding=True)]
    if relation_types:
        sql += " AND e.relation_type IN :types"
        params["types"] = list(relation_types)
        binds.append(bindparam("types", expanding=True))
    if min_strength is not None:
        sql += " AND e.strength >= :min_strength"
        params["min_strength"] = float(min_strength)
    return list(conn.execute(text(sql).bindparams(*binds), params))


def _subjects(conn: Any, ids: Iterable[int]) -> dict[int, str]:
    ids = list(ids)
    if not ids:
        return {}
    stmt = text("SELECT id, subject, content FROM memories WHERE id IN :ids").bindparams(
        bindparam("ids", expanding=True)
    )
    return {
        int(r.id): (r.subject or (r.content or "")[:60]) for r in conn.execute(stmt, {"ids": ids})
    }


def bfs(
    db: Database,
    seeds: list[int],
    depth: int,
    direction: str = "both",
    relation_types: list[str] | None = None,
    min_strength: float | None = None,
    access: Access | None = None,
) -> tuple[dict[int, int], dict[tuple[int, int, str], Any]]:
    """Breadth-first walk. Returns ({node: hop}, {(src, tgt, type): edge row})."""
    depth = max(0, min(int(depth), MAX_DEPTH))
    seen: dict[int, int] = {s: 0 for s in seeds}
    edges: dict[tuple[int, int, str], Any] = {}
    frontier = list(dict.fromkeys(seeds))
    with db.read() as conn:
        for hop in range(1, depth + 1):
            if not frontier:
                break
            nxt: list[int] = []
            front = set(frontier)
            for e in _edges_touching(
                conn, db, frontier, direction, relation_types, min_strength, access
            ):
                src, tgt = int(e.source_id), int(e.target_id)
                edges.setdefault((src, tgt, e.relation_type), e)
                for node, other in ((src, tgt), (tgt, src)):
                    if node in front and other not in seen:
                        if direction == "outgoing" and node != src:
                            continue
                        if direction == "incoming" and node != tgt:
                            continue
                        seen[other] = hop
                        nxt.append(other)
            frontier = nxt
    return seen, edges


def context(
    db: Database,
    seeds: list[int],
    depth: int = 1,
    mode: str = "summary",
    direction: str = "both",
    relation_types: list[str] | None = None,
    min_strength: float | None = None,
    access: Access | None = None,
) -> dict[str, Any]:
    """Graph context around seeds: 'full' {nodes, edges} or 'summary' strings capped at 30 nodes."""
    if not seeds or depth < 1:
        return {}
    nodes, edges = bfs(db, seeds, depth, direction, relation_types, min_strength, access)
    if not edges:
        return {}
    with db.read() as conn:
        subjects = _subjects(conn, nodes)
    if mode == "full":
        return {
            "nodes": {str(n): subjects.get(n, "") for n in nodes},
            "edges": [
                {"source": s, "target": t, "type": ty, "strength": round(float(e.strength), 3)}
                for (s, t, ty), e in edges.items()
            ],
        }
    out_n: dict[int, list[int]] = defaultdict(list)
    in_n: dict[int, list[int]] = defaultdict(list)
    strengths: dict[int, list[float]] = defaultdict(list)
    for (s, t, _), e in edges.items():
        out_n[s].append(t)
        in_n[t].append(s)
        strengths[s].append(float(e.strength))
        strengths[t].append(float(e.strength))
    degree = {n: len(strengths[n]) for n in nodes}
    seed_set = list(dict.fromkeys(seeds))
    rest = sorted((n for n in nodes if n not in set(seed_set)), key=lambda n: (-degree[n], n))
    keep = seed_set + rest[: max(0, SUMMARY_NODE_CAP - len(seed_set))]
    summary: dict[str, str] = {}
    for n in keep:
        outs, ins = set(out_n[n]), set(in_n[n])
        both = outs & ins
        marks = (
            [f"<>{x}" for x in sorted(both)]
            + [f">{x}" for x in sorted(outs - both)]
            + [f"<{x}" for x in sorted(ins - both)]
        )
        avg = sum(strengths[n]) / len(strengths[n]) if strengths[n] else 0.0
        summary[str(n)] = (
            f"{subjects.get(n, '')} | {degree[n]} connections | avg {avg:.2f} | " + ",".join(marks)
        )
    result: dict[str, Any] = {"nodes": summary, "total_edges": len(edges), "seed_ids": seed_set}
    if len(nodes) > len(keep):
        result["omitted_nodes"] = len(nodes) - len(keep)
    return result


def traverse(
    db: Database,
    start: int,
    max_depth: int = 3,
    direction: str = "both",
    relation_types: list[str] | None = None,
    min_strength: float | None = None,
    access: Access | None = None,
) -> dict[str, Any]:
    nodes, edges = bfs(db, [start], max_depth, direction, relation_types, min_strength, access)
    with db.read() as conn:
        subjects = _subjects(conn, nodes)
    return {
        "start_id": start,
        "max_depth": max(0, min(int(max_depth), MAX_DEPTH)),
        "direction": direction,
        "nodes": [
            {"id": n, "subject": subjects.get(n, ""), "depth": d}
            for n, d in sorted(nodes.items(), key=lambda x: (x[1], x[0]))
        ],
        "edges": [
            {
                "source": s,
                "target": t,
                "type": ty,
                "strength": round(float(e.strength), 3),
                "bidirectional": bool(e.bidirectional),
            }
            for (s, t, ty), e in edges.items()
        ],
    }
