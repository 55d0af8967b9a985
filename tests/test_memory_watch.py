"""Memory subscriptions (message action=subscribe with a memory filter) through real bridge
subprocesses on both backends (LISTEN/NOTIFY on PostgreSQL, the poller on SQLite): a matching
memory the subscriber may read wakes it with metadata only, once, also across a restart."""

from __future__ import annotations

import json
import time

import pytest
from memory_palace import InvalidParams
from memory_palace.cli import main
from memory_palace.listener import REFRESH
from sqlalchemy import text

SANDY = {"MEMORY_PALACE_INSTANCE_ID": "sandy"}


def remember(palace, content: str, who: str = "prime", **params):
    return palace.call("memory_set", {"instance_id": who, "content": content, **params})


def memory_wakes(bridge) -> list[dict]:
    return [e["data"] for e in bridge.events if e["event"] == "new_memory"]


def delivered(palace) -> int:
    with palace.database().read() as conn:
        return int(conn.execute(text("SELECT count(*) FROM memory_deliveries")).scalar_one())


def subscribe(bridge, **flt) -> dict:
    return bridge.result("message", {"action": "subscribe", "instance_id": "sandy", **flt})


def test_a_matching_memory_wakes_the_subscriber_with_metadata_only(
    spawn, make_palace, db_url
) -> None:
    writer = make_palace(db_url, instances=["prime", "sandy"])
    writer.call("memory_scope", {"action": "add", "name": "core", "members": ["prime"]})
    bridge = spawn(db_url, env=SANDY)
    got = subscribe(bridge, project="atlas", memory_type="decision")
    assert got["memory_filter"] == {
        "project": ["atlas"],
        "memory_type": "decision",
        "keywords": None,
    }
    assert not got["already_subscribed"] and len(got["memory_subscriptions"]) == 1
    old = remember(writer, "we ship on fridays", project="atlas", memory_type="decision")
    wake = bridge.event(lambda e: e["event"] == "new_memory")["data"]
    assert wake["memory_id"] == old["id"]
    assert wake["recipients"] == ["sandy"] and wake["author"] == "prime"
    assert wake["projects"] == ["atlas"] and wake["memory_type"] == "decision"
    assert "content" not in wake and "we ship" not in str(wake)
    # not woken: another project, another type, a private memory of prime, a scope sandy is
    # not in, its own memory
    remember(writer, "other project", project="zephyr", memory_type="decision")
    remember(writer, "a fact", project="atlas", memory_type="fact")
    remember(writer, "secret plan", project="atlas", memory_type="decision", visibility="private")
    remember(writer, "core only", project="atlas", memory_type="decision", visibility="core")
    remember(writer, "sandy's own", who="sandy", project="atlas", memory_type="decision")
    new = remember(
        writer,
        "we ship on mondays",
        subject="release day",
        project="atlas",
        memory_type="decision",
        supersedes_id=old["id"],
    )
    wake = bridge.event(
        lambda e: e["event"] == "new_memory" and e["data"]["memory_id"] == new["id"]
    )
    assert wake["data"]["supersedes"] == old["id"] and wake["data"]["subject"] == "release day"
    time.sleep(0.5)  # nothing else may follow
    assert [w["memory_id"] for w in memory_wakes(bridge)] == [old["id"], new["id"]]


def test_keywords_match_any_and_unsubscribe_stops_wakes(spawn, make_palace, db_url) -> None:
    writer = make_palace(db_url, instances=["prime", "sandy"])
    bridge = spawn(db_url, env=SANDY)
    subscribe(bridge, keywords=["outage", "incident"])
    hit = remember(writer, "db fell over", keywords=["incident", "db"])
    remember(writer, "lunch menu", keywords=["food"])
    bridge.event(lambda e: e["event"] == "new_memory" and e["data"]["memory_id"] == hit["id"])
    gone = bridge.result(
        "message",
        {"action": "unsubscribe", "instance_id": "sandy", "keywords": ["incident", "outage"]},
    )
    assert gone["was_subscribed"] and gone["memory_subscriptions"] == []
    remember(writer, "another outage", keywords=["outage"])
    time.sleep(0.6)
    assert [w["memory_id"] for w in memory_wakes(bridge)] == [hit["id"]]


def test_a_memory_stored_while_the_bridge_is_down_wakes_it_once_after_restart(
    spawn, make_palace, db_url
) -> None:
    writer = make_palace(db_url, instances=["prime", "sandy"])
    first = spawn(db_url, env=SANDY)
    subscribe(first, project="atlas")
    before = remember(writer, "while up", project="atlas")
    first.event(lambda e: e["event"] == "new_memory")
    first.wait_for(lambda: delivered(writer) == 1)  # its claim committed
    first.proc.kill()
    first.proc.wait(10)
    missed = [remember(writer, f"while down {i}", project="atlas")["id"] for i in range(3)]
    second = spawn(db_url, env=SANDY)
    second.wait_for(lambda: len(memory_wakes(second)) >= 3)
    time.sleep(0.3)
    ids = [w["memory_id"] for w in memory_wakes(second)]
    assert ids == missed and before["id"] not in ids  # oldest first, the delivered one not again
    second.close()
    third = spawn(db_url, env=SANDY)
    time.sleep(0.8)
    assert memory_wakes(third) == []


def test_subscribe_errors_are_clear(make_palace, db_url) -> None:
    palace = make_palace(db_url, instances=["prime", "sandy"])
    base = {"action": "subscribe", "instance_id": "sandy"}
    with pytest.raises(InvalidParams, match="not both"):
        palace.call("message", {**base, "channel": "ops", "project": "atlas"})
    with pytest.raises(InvalidParams, match="needs a channel, or a memory filter"):
        palace.call("message", base)
    with pytest.raises(InvalidParams, match="at least one keyword"):
        palace.call("message", {**base, "keywords": [" "]})
    again = palace.call("message", {**base, "project": ["b", "a", "a"]})
    assert again["memory_filter"]["project"] == ["a", "b"]
    assert palace.call("message", {**base, "project": ["a", "b"]})["already_subscribed"]
    channel = palace.call("message", {**base, "channel": "ops"})
    assert channel["channel"] == "ops"  # the channel form is unchanged


def test_a_cli_subscription_reaches_a_running_bridge(
    spawn, make_palace, sqlite_url, tmp_path, monkeypatch, capsys
) -> None:
    """Made in another process (the CLI): the bridge picks it up within listener.REFRESH s."""
    bridge = spawn(sqlite_url, env=SANDY)
    monkeypatch.setenv("MEMORY_PALACE_DATA_DIR", str(tmp_path / "bridge0"))  # the same config
    argv = ["message", "subscribe", "-i", "sandy", "-p", "atlas", "--memory-type", "deci*"]
    assert main([*argv, "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["memory_filter"] == {"project": ["atlas"], "memory_type": "deci*", "keywords": None}
    assert main(["message", "subscribe", "-i", "sandy", "ops", "-k", "x"]) == 1
    assert "not both" in capsys.readouterr().err
    hit = remember(
        make_palace(sqlite_url), "we chose postgres", project="atlas", memory_type="decision"
    )
    wake = bridge.event(lambda e: e["event"] == "new_memory", timeout=REFRESH + 5)["data"]
    assert wake["memory_id"] == hit["id"] and wake["recipients"] == ["sandy"]
    assert (
        main(["message", "unsubscribe", "-i", "sandy", "-p", "atlas", "--memory-type", "deci*"])
        == 0
    )
    assert "was_subscribed: True" in capsys.readouterr().out


def test_two_bridges_serving_one_instance_wake_it_once(spawn, make_palace, db_url) -> None:
    writer = make_palace(db_url, instances=["prime", "sandy"])
    bridges = [spawn(db_url, env=SANDY), spawn(db_url, env=SANDY)]
    subscribe(bridges[0], memory_type="gotcha")
    # the second learns of the subscription when its own subscriptions change (or within REFRESH)
    bridges[1].result("message", {"action": "subscribe", "instance_id": "sandy", "channel": "x"})
    for b in bridges:  # both serve sandy and listen for memories
        assert "##memories" in b.result("_health")["listeners"]["default"]["names"]
    ids = [remember(writer, f"gotcha {i}", memory_type="gotcha")["id"] for i in range(20)]
    bridges[0].wait_for(lambda: sum(len(memory_wakes(b)) for b in bridges) >= 20)
    time.sleep(0.5)
    got = sorted(w["memory_id"] for b in bridges for w in memory_wakes(b))
    assert got == ids  # each once, between them
