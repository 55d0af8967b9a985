"""JSONL export/import: SQLite -> JSONL -> PostgreSQL -> JSONL is byte-equal (ids normalised)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import orjson
import pytest
from memory_palace import migrate as mig
from memory_palace import transfer
from memory_palace.errors import Conflict, InvalidParams
from memory_palace.services import delivery


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
    direct = palace.call(
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
    palace.call("message", {"action": "subscribe", "instance_id": "crash", "project": "life"})
    db, skip = palace.database(), lambda *_: None  # a bridge woke crash for these
    delivery.claim(db, [({"message_id": direct["id"]}, ["crash"])], "host:1", skip)
    delivery.claim_memories(db, [({"memory_id": a}, ["crash"])], "host:1", skip)


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
        if t in ("message_read", "message_delivery"):
            rec["message_id"] = maps["message"][rec["message_id"]]
        if t == "memory_delivery":
            rec["memory_id"] = maps["memory"][rec["memory_id"]]
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
        "message_delivery": 1,
        "memory_subscription": 1,
        "memory_delivery": 1,
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


@pytest.mark.postgres
@pytest.mark.parametrize("how", ["import", "migrate"])
def test_a_copied_database_wakes_only_for_what_its_source_did_not(
    how, make_palace, sqlite_url, pg_url, spawn
) -> None:
    """Delivery records (messages and memory subscriptions) and the delivery floor travel with
    an export/import and a SQLite-to-PostgreSQL migration: a bridge on the copy wakes its
    instance for what was sent while it was down, never again for what it was woken for."""
    src = make_palace(sqlite_url, instances=["prime", "sandy"])
    sandy = {"MEMORY_PALACE_INSTANCE_ID": "sandy"}

    def send(i: int) -> int:
        msg = {"action": "send", "from_instance": "prime", "to_instance": "sandy"}
        return src.call("message", {**msg, "content": f"m{i}"})["id"]

    def note(i: int) -> int:
        mem = {"instance_id": "prime", "project": "atlas", "auto_link": False}
        return src.call("memory_set", {**mem, "content": f"atlas note {i}"})["id"]

    src.call("message", {"action": "subscribe", "instance_id": "sandy", "project": "atlas"})
    first = spawn(sqlite_url, env=sandy)
    woken, noted = send(0), note(0)
    first.event(lambda e: e["event"] == "new_message" and e["data"]["message_id"] == woken)
    first.event(lambda e: e["event"] == "new_memory" and e["data"]["memory_id"] == noted)
    first.close()
    missed, missed_note = [send(1), send(2)], note(1)
    if how == "import":
        buf = io.BytesIO()
        assert transfer.export_jsonl(src, None, buf)["counts"]["message_delivery"] == 1
        buf.seek(0)
        transfer.import_jsonl(make_palace(pg_url), None, buf)
    else:
        assert mig.main(["--source", sqlite_url, "--target", pg_url, "--no-progress"]) == 0
    copy = spawn(pg_url, env=sandy)
    copy.wait_for(lambda: len(copy.events) >= 3)
    time.sleep(0.5)  # nothing more may follow
    assert [d["message_id"] for d in copy.new_messages()] == missed
    assert [e["data"]["memory_id"] for e in copy.events if e["event"] == "new_memory"] == [
        missed_note
    ]
