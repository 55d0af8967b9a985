"""The retrieval-quality data set is sound, and bench_quality.py runs end to end on a subset."""

from __future__ import annotations

import collections
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUALITY = ROOT / "bench" / "quality"


def module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return module(ROOT / "bench" / "bench_quality.py", "bench_quality")


@pytest.fixture(scope="module")
def data(bench: ModuleType) -> tuple[list[dict], list[dict]]:
    return bench.load_data(QUALITY)


def test_data_validates(bench: ModuleType, data: tuple[list[dict], list[dict]]) -> None:
    memories, queries = data
    assert bench.validate_data(memories, queries) == []
    assert len(memories) >= 2000 and len(queries) >= 400
    assert len({m["domain"] for m in memories}) >= 4
    turns = collections.Counter(m["project"] for m in memories if m["domain"] == "conversation")
    assert len(turns) >= 8 and all(150 <= n <= 300 for n in turns.values()), turns
    generic = sum(m["role"] == "generic_turn" for m in memories)
    assert generic / sum(turns.values()) >= 0.4
    assert all(
        m["content"].split(": ", 1)[0].isalpha() for m in memories if m["domain"] == "conversation"
    )
    # half the identifiers are only in keywords, never in the content
    ids = [q for q in queries if q["category"] == "exact_id"]
    by_id = {m["id"]: m for m in memories}
    only_kw = [
        q
        for q in ids
        if q["identifier"].lower() not in by_id[next(iter(q["targets"]))]["content"].lower()
    ]
    assert abs(len(only_kw) - len(ids) / 2) <= 1


def test_validation_catches_broken_data(
    bench: ModuleType, data: tuple[list[dict], list[dict]]
) -> None:
    memories, queries = data
    broken = [dict(q) for q in queries]
    broken[0] = dict(broken[0], targets={"m99999": 2})
    assert any("does not exist" in p for p in bench.validate_data(memories, broken))
    sup = next(m for m in memories if m.get("supersedes"))
    on_old = [dict(q) for q in queries]
    on_old[0] = dict(on_old[0], targets={sup["supersedes"]: 2})
    assert any("archived" in p for p in bench.validate_data(memories, on_old))
    q = next(q for q in queries if q["category"] == "exact_id")
    leak = [dict(m) for m in memories]
    other = next(i for i, m in enumerate(leak) if m["id"] not in q["targets"])
    leak[other]["content"] += f" See also {q['identifier']}."
    assert any("identifier" in p for p in bench.validate_data(leak, queries))


def test_generator_reproduces_the_committed_files() -> None:
    gen = module(QUALITY / "generate.py", "quality_generate")
    memories, queries = gen.build()
    assert gen.dumps(memories) == (QUALITY / "memories.jsonl").read_text()
    assert gen.dumps(queries) == (QUALITY / "queries.jsonl").read_text()


def subset(
    memories: list[dict], queries: list[dict], per_category: int = 3
) -> tuple[list[dict], list[dict]]:
    """A few dev queries per category with every memory they refer to, plus background."""
    chosen = []
    per: collections.Counter[str] = collections.Counter()
    for q in queries:
        if q["split"] == "dev" and per[q["category"]] < per_category:
            per[q["category"]] += 1
            chosen.append(q)
    keep = {
        k for q in chosen for k in [*q["targets"], *q.get("distractors", []), *q.get("stale", [])]
    }
    keep |= {m["supersedes"] for m in memories if m["id"] in keep and m.get("supersedes")}
    keep |= {m["id"] for i, m in enumerate(memories) if i % 20 == 0 and not m.get("supersedes")}
    return [m for m in memories if m["id"] in keep], chosen


def test_bench_runs_on_a_subset(
    bench: ModuleType,
    data: tuple[list[dict], list[dict]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("bm25s")
    pytest.importorskip("Stemmer")
    monkeypatch.delenv("MEMORY_PALACE_TEST_PG_URL", raising=False)
    memories, queries = subset(*data)
    for name, rows in (("memories.jsonl", memories), ("queries.jsonl", queries)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.json"
    dump = tmp_path / "dump.jsonl"
    assert (
        bench.main(
            [
                "--backend",
                "sqlite",
                "--embedder",
                "hash",
                "--data",
                str(tmp_path),
                "--json",
                str(out),
                "--dump",
                str(dump),
                "--quiet",
                # the vector leg as plain cosine, to compare it with the cosine baseline
                "--config-json",
                '{"recall": {"centre_weight": 0}}',
            ]
        )
        == 0
    )
    run = json.loads(out.read_text())["runs"][0]
    m = run["metrics"]
    assert set(m) == set(bench.METHODS)
    assert m["bm25"]["exact_id"]["R@1"] == 1.0  # a unique identifier: BM25 must rank it first
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(rows) == len(queries)
    # On SQLite the vector leg (uncentred) is an exact scan of the same vectors over the same
    # candidates as the cosine baseline: their top 5 must agree, or the baseline measures
    # something else.
    same = sum(set(r["top10"]["vector"][:5]) == set(r["top10"]["cosine"][:5]) for r in rows)
    assert same >= 0.9 * len(rows)
    assert all(t["category"] for t in run["targets"])
