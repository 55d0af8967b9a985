"""JSONL export/import: SQLite -> JSONL -> PostgreSQL -> JSONL is byte-equal (ids normalised)."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
from memory_palace import transfer
from memory_palace.errors import Conflict, InvalidParams


def fill(palace) -> None:
    a = palace.call(
        "memory_set",
        {
            "content": "Alpha fact about deploys",
            "subject": "alpha",
            "keywords": ["deploy", "ops"],
            "project": ["life", "wörk"],
            "foundational": True,
            "auto_link": False,
        },
    )["id"]
    b = palace.call(
        "memory_set", {"content": "Beta: rotate keys on Monday", "tags": ["t1"], "auto_link": False}
    )["id"]
    palace.call("memory_set", {"content": "Gamma without extras", "auto_link": False})
    palace.call(
        "memory_link",
        {
            "source_id": a,
            "target_id": b,
            "relation_type": "relates_to",
            "strength": 0.3,
            "metadata": {"z": 1, "a": [1.5, "x"]},
        },
    )
    palace.call("memory_update", {"memory_id": a, "tags": ["edited"], "reason": "a version"})
    palace.call("memory_archive", {"memory_ids": [b], "dry_run": False, "reason": "test"})
    sent = palace.call(
        "message",
        {
            "action": "send",
            "from_instance": "prime",
            "to_instance": "all",
            "content": "hello all",
            "priority": 3,
        },
    )
    palace.call(
        "message",
        {
            "action": "send",
            "from_instance": "prime",
            "to_instance": "crash",
            "content": "direct",
            "ttl_seconds": 3600,
        },
    )
    palace.call(
        "message", {"action": "mark_read", "instance_id": "crash", "message_id": sent["id"]}
    )
    palace.call("message", {"action": "subscribe", "instance_id": "crash", "channel": "ops"})
    palace.call("memory_scope", {"action": "add", "name": "ops", "members": ["prime"]})
    palace.call(
        "memory_set",
        {"content": "Ops only: the pager rota", "visibility": "ops", "instance_id": "prime"},
    )


def normalise(data: bytes) -> list[dict]:
    """Renumber ids in order of appearance (and the references to them)."""
    maps: dict[str, dict[int, int]] = {
        "memory": {},
        "edge": {},
        "memory_version": {},
        "message": {},
    }
    out = []
    for line in data.splitlines():
        rec = orjson.loads(line)
        t = rec["type"]
        if t in maps and "id" in rec:
            rec["id"] = maps[t].setdefault(rec["id"], len(maps[t]) + 1)
        if t == "edge":
            rec["source_id"] = maps["memory"][rec["source_id"]]
            rec["target_id"] = maps["memory"][rec["target_id"]]
        if t == "memory_version":
            rec["memory_id"] = maps["memory"][rec["memory_id"]]
        if t == "message_read":
            rec["message_id"] = maps["message"][rec["message_id"]]
        out.append(rec)
    return out


@pytest.mark.postgres
def test_round_trip_sqlite_jsonl_postgres_jsonl(make_palace, sqlite_url, pg_url):
    instances = ["prime", "crash"]
    src = make_palace(sqlite_url, instances=instances)
    fill(src)
    first = io.BytesIO()
    info = transfer.export_jsonl(src, None, first)
    assert info["counts"] == {
        "memory": 4,
        "edge": 1,
        "memory_version": 1,
        "message": 2,
        "message_read": 1,
        "subscription": 1,
        "scope_member": 1,
    }
    dst = make_palace(pg_url, instances=instances)
    first.seek(0)
    res = transfer.import_jsonl(dst, None, first)
    assert res["inserted"] == info["counts"]
    second = io.BytesIO()
    transfer.export_jsonl(dst, None, second)
    assert first.getvalue() == second.getvalue()  # ids are preserved, so even raw bytes match
    assert normalise(first.getvalue()) == normalise(second.getvalue())
    recs = [orjson.loads(x) for x in first.getvalue().splitlines()]
    mem = next(r for r in recs if r["type"] == "memory")
    assert len(mem["embedding"]) == 384 and mem["projects"] == ["life", "wörk"]

    # the imported database works: recall finds it, new ids continue after the imported ones
    found = dst.call("memory_recall", {"query": "deploys", "limit": 3, "include_graph": False})
    assert [(m["subject"], m["found_by"]) for m in found["memories"][:1]] == [("alpha", "both")]
    new = dst.call("memory_set", {"content": "after import", "auto_link": False})
    assert new["id"] == 5

    # a second import needs force and adds nothing new
    first.seek(0)
    with pytest.raises(Conflict, match="force"):
        transfer.import_jsonl(dst, None, first)
    first.seek(0)
    again = transfer.import_jsonl(dst, None, first, force=True)
    assert sum(again["inserted"].values()) == 0

    # and back to SQLite, through a file path
    path = sqlite_url.rsplit("/", 1)[0].replace("sqlite:///", "") + "/export.jsonl"
    transfer.export_jsonl(dst, None, path)
    back = make_palace(sqlite_url.replace("memories.db", "back.db"), instances=instances)
    transfer.import_jsonl(back, None, path)
    third = io.BytesIO()
    transfer.export_jsonl(back, None, third)
    assert normalise(third.getvalue()) == normalise(Path(path).read_bytes())


def test_bad_files_are_refused(make_palace, sqlite_url):
    palace = make_palace(sqlite_url)
    with pytest.raises(InvalidParams, match="empty"):
        transfer.import_jsonl(palace, None, io.BytesIO(b""))
    with pytest.raises(InvalidParams, match="header"):
        transfer.import_jsonl(palace, None, io.BytesIO(b'{"type": "memory"}\n'))
    header = b'{"format":"memory-palace-jsonl","type":"header","vector_dim":null,"version":1}\n'
    with pytest.raises(InvalidParams, match="line 2"):
        transfer.import_jsonl(palace, None, io.BytesIO(header + b"not json\n"))
