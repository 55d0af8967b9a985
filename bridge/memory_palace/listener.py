"""Push delivery for the bridge: one thread per database that LISTENs (PostgreSQL: select() on a
dedicated connection plus a self-pipe, reconnect with backoff) or polls every 100 ms (SQLite).
Each emits `new_message` once per message and served instance, naming them in `recipients`.

Delivery is durable (services/delivery.py): every event is claimed in the database in the
transaction that emits it, and on start, on every reconnect and when an instance starts being
served the listener replays what its instances were not yet woken for and have not read. So a
bridge restart, a crash, a lost connection or a second bridge serving the same instance neither
loses nor repeats a wake.

The bridge is the one owner of what is listened to: the instances it serves (its configured
instance, the identities of its callers, and those the plugin announces with `_subscribe`),
broadcasts, and the channels those instances subscribed to (stored in the database).

Idle names are released (config `resources.idle_timeout`): a listener of a database that no call
named and that woke nobody for that long is stopped (its LISTEN and claim connections closed,
its database unpinned so the engine registry can release it too), and an instance served only
because calls ran as it is no longer listened for. The next call brings either back, and the
replay on start or serve delivers what was sent meanwhile. Kept for good: the default
database's listener, a database named in `_subscribe`, the configured instance and instances
announced with `_subscribe`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from .config import Messaging
from .db.engine import Database
from .db.values import decode_time, utcnow
from .errors import BackendUnavailable, MemoryPalaceError
from .palace import Palace
from .services import delivery, messages, names, watch

log = logging.getLogger("memory_palace.listener")

Emit = Callable[[dict[str, Any]], None]
EmitWake = Callable[[dict[str, Any], list[str]], None]  # one wake: payload, recipients
Claimed = delivery.Claimed

TICK = 0.1  # the SQLite poll interval, seconds
FIRST_RETRY = 0.05
MAX_RETRY = 5.0
KEEPALIVE = 30.0  # an idle listener checks its connection this often
REFRESH = 5.0  # how often a listener re-reads the served instances' subscriptions, seconds
#: The least time between two looks for passed acknowledgement deadlines, seconds. A listener
#: looks when the earliest deadline it knows of passes (it learns them from its own claims and
#: from each look), and at least every REFRESH seconds for deadlines set elsewhere.
ACK_SWEEP = 0.5
NOTICE_FROM = "palace"  # the sender of overdue notices


def valid_name(name: str) -> bool:
    try:
        names.check_name(name, "instance")
    except MemoryPalaceError:
        return False
    return True


class Listener(threading.Thread):
    """One database: the served instances, their channels, and exactly-once emission."""

    kind = ""

    def __init__(self, database: str, db: Database, served: set[str], emit: Emit) -> None:
        super().__init__(name=f"mp-listener-{database}", daemon=True)
        self.database = database
        self.db = db
        self._emit = emit
        self._lock = threading.Lock()
        self._served = set(served)
        self._subscribers: dict[str, set[str]] = {}  # channel -> served instances on it
        self._watching = False  # a served instance has a memory subscription
        self._refreshed = time.monotonic()
        self.channels: list[str] = []  # PostgreSQL: what the server says the connection LISTENs to
        self._stop_event = threading.Event()
        self.ready = threading.Event()
        self.state = "starting"
        self.last_id = 0
        self.last_memory_id = 0
        self.by = delivery.bridge_name()
        self.settings: Any = None  # set by Listeners (overdue notices are sent messages)
        self._swept = -ACK_SWEEP  # monotonic time of the last look for passed deadlines
        self._next_sweep = 0.0  # when to look next: at once, then see sweep_acks
        self._held: Any = None  # the listener thread's connection for claims
        self._unsettled: list[tuple[Any, Claimed]] = []  # emitted, claim not committed
        self.emitted = 0
        self.reconnects = 0
        self.caught_up = 0
        self.last_error: str | None = None
        self.keep = False  # never released when idle (default database, `_subscribe`d)
        self.last_used = time.monotonic()  # a call named its database, or it woke someone

    # -- what is listened to ----------------------------------------------------------------
    def names(self) -> list[str]:
        """Instance and channel names whose messages concern the served instances, and the
        feed of stored memories while one of them has a memory subscription."""
        with self._lock:
            feed = {watch.FEED} if self._watching else set()
            return sorted(self._served | set(self._subscribers) | {names.BROADCAST} | feed)

    def served(self) -> list[str]:
        with self._lock:
            return sorted(self._served)

    def serve(self, instance: str) -> bool:
        before = set(self.names())
        with self._lock:
            if instance in self._served:
                return False
            self._served.add(instance)
        # Only the new instance's channels are read: re-reading every served instance's made
        # announcing N instances cost N^2 / 2 queries (1,275 for a gateway of 50 agents).
        channels = [c for c in messages.subscriptions(self.db, instance) if valid_name(c)]
        with self._lock:
            for channel in channels:
                self._subscribers.setdefault(channel, set()).add(instance)
        self._apply(before, set(self.names()))
        self.expect_deadline(utcnow())  # its deliveries may have deadlines: look soon
        if self.is_alive():  # else its start replays it (and so does every reconnect)
            try:
                self.replay([instance])
            except MemoryPalaceError as exc:
                log.warning("replay for %r on %s: %s", instance, self.database, exc.message)
        return True

    def unserve(self, instance: str) -> bool:
        before = set(self.names())
        with self._lock:
            if instance not in self._served:
                return False
            self._served.discard(instance)
            for channel, who in list(self._subscribers.items()):
                who.discard(instance)
                if not who:
                    del self._subscribers[channel]
        self._apply(before, set(self.names()))
        return True

    def refresh(self, before: set[str] | None = None) -> None:
        """Re-read which channels the served instances subscribe to, and listen accordingly.
        `before`: the names listened to before the caller changed the served set."""
        if before is None:
            before = set(self.names())
        served = self.served()
        subscribed: dict[str, set[str]] = {}
        for instance, channels in messages.channels_of(self.db, served).items():
            for channel in channels:
                if valid_name(channel):
                    subscribed.setdefault(channel, set()).add(instance)
        watching = bool(watch.watchers(self.db, served))
        with self._lock:
            self._subscribers = subscribed
            started, self._watching = watching and not self._watching, watching
        self._refreshed = time.monotonic()
        self._apply(before, set(self.names()))
        if started and self.is_alive():  # memories stored since it subscribed
            self.last_memory_id = max(self.last_memory_id, watch.max_memory_id(self.db))
            self.deliver_memories(None)

    def refresh_now_and_then(self) -> None:
        """Subscriptions made elsewhere (the CLI, another bridge) take effect within
        REFRESH seconds."""
        if time.monotonic() - self._refreshed >= REFRESH:
            self.refresh()

    def _apply(self, before: set[str], after: set[str]) -> None:
        """Hook: the LISTEN thread applies the difference on its own connection."""

    def recipients(self, payload: dict[str, Any]) -> list[str]:
        """The served instances a message is for (a broadcast is not for its sender)."""
        to, channel = payload.get("to_instance"), payload.get("channel")
        with self._lock:
            out = {to} & self._served
            if to == names.BROADCAST:
                out |= self._served - {payload.get("from_instance")}
            if channel:
                out |= self._subscribers.get(channel, set())
        return sorted(out)

    # -- life cycle -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "kind": self.kind,
            "state": self.state,
            "served": self.served(),
            "names": self.names(),
            "channels": list(self.channels),
            "last_message_id": self.last_id,
            "emitted": self.emitted,
            "reconnects": self.reconnects,
            "caught_up": self.caught_up,
            "last_error": self.last_error,
            "kept": self.keep,
        }

    def stop(self, timeout: float = 2.0) -> None:
        self._stop_event.set()
        self._wake()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
        self.state = "stopped"

    def _wake(self) -> None:
        """Hook: interrupt a wait at once."""

    # -- delivery ---------------------------------------------------------------------------
    def _emit_one(self, payload: dict[str, Any], recipients: list[str]) -> None:
        self.emitted += 1
        self._emit(
            {
                "event": "new_message",
                "data": {**payload, "database": self.database, "recipients": recipients},
            }
        )

    def _deliver_many(self, payloads: list[dict[str, Any]]) -> int:
        """Claim and emit each message for the served instances it is for; returns how many
        messages woke someone. A message notified on two of the names listened to (direct and a
        channel) is in a burst twice: claimed once."""
        items, seen = [], set()
        for payload in payloads:
            try:
                msg_id = int(payload["message_id"])
            except (KeyError, TypeError, ValueError):
                log.warning("ignoring a notification without message_id on %s", self.database)
                continue
            if msg_id in seen:
                continue
            seen.add(msg_id)
            self.last_id = max(self.last_id, msg_id)
            recipients = self.recipients(payload)
            if recipients:  # else listened for another reason (its sender's own broadcast)
                items.append((payload, recipients))
        if not items:
            return 0
        return self._claim(delivery.claim, items, self._emit_one)

    def _claim(self, claim: Any, items: Claimed, emit: EmitWake) -> int:
        """Run `claim` on the listener thread's own connection (elsewhere a pooled one). Wakes
        emitted by a claim whose commit then failed are claimed again, silently, before the
        next one: this process never emits a wake twice."""
        held = self._held_conn()
        sent: Claimed = []

        def emit_and_note(payload: dict[str, Any], recipients: list[str]) -> None:
            sent.append((payload, recipients))
            emit(payload, recipients)

        try:
            self._settle(held)
            claimed = claim(self.db, items, self.by, emit_and_note, held)
        except Exception:
            if sent:
                with self._lock:
                    self._unsettled.append((claim, sent))
            self._drop_held()
            raise
        for payload, _ in claimed:  # committed: a look for passed deadlines will see them
            self.expect_deadline(decode_time(payload.get("ack_due_at")))
        return len(claimed)

    def _settle(self, held: Any) -> None:
        with self._lock:
            unsettled, self._unsettled = self._unsettled, []
        try:
            while unsettled:
                claim, sent = unsettled[0]
                claim(self.db, sent, self.by, delivery.silent, held)
                unsettled.pop(0)
        finally:
            if unsettled:
                with self._lock:
                    self._unsettled[:0] = unsettled

    def _held_conn(self) -> Any:
        """The listener thread's own connection for claims (None on other threads)."""
        if threading.current_thread() is not self:
            return None
        if self._held is None:
            self._held = delivery.open_held(self.db)
        return self._held

    def _emit_memory(self, payload: dict[str, Any], recipients: list[str]) -> None:
        self.emitted += 1
        self._emit(
            {
                "event": "new_memory",
                "data": {**payload, "database": self.database, "recipients": recipients},
            }
        )

    def deliver_memories(self, ids: list[int] | None, instances: list[str] | None = None) -> int:
        """Wake the served instances (or `instances`) whose memory subscriptions match the
        stored memories `ids` (None: every memory they were not yet woken for). Returns the
        memories that woke someone."""
        if ids is not None:
            if not ids:
                return 0
            self.last_memory_id = max(self.last_memory_id, *ids)
            with self._lock:
                if not self._watching:
                    return 0
        subs = watch.watchers(self.db, self.served() if instances is None else instances)
        if not subs:
            return 0
        count = 0
        for _ in range(1000):  # batches: what was claimed is not matched again
            merged: dict[int, tuple[dict[str, Any], list[str]]] = {}
            full = False
            for instance, rows in subs.items():
                found = watch.matching(self.db, instance, rows, ids=ids)
                full = full or len(found) >= watch.MATCH_BATCH
                for payload in found:
                    merged.setdefault(payload["memory_id"], (payload, []))[1].append(instance)
            if not merged:
                return count
            items = [merged[i] for i in sorted(merged)]
            count += self._claim(delivery.claim_memories, items, self._emit_memory)
            if ids is not None or not full:
                break
        return count

    def _drop_held(self) -> None:
        if self._held is not None:
            with contextlib.suppress(Exception):
                self._held.close()
            self._held = None

    def replay(self, instances: list[str] | None = None) -> int:
        """Emit, oldest first, what the served instances (or `instances`) were not woken for and
        have not read. Returns the number of messages delivered."""
        after = delivery.floor(self.db)
        merged: dict[int, dict[str, Any]] = {}
        for instance in self.served() if instances is None else instances:
            start = after
            while True:
                rows = delivery.undelivered(self.db, instance, start)
                for payload in rows:
                    merged[int(payload["message_id"])] = payload
                if len(rows) < delivery.REPLAY_BATCH:
                    break
                start = int(rows[-1]["message_id"])
        ordered = [merged[i] for i in sorted(merged)]
        count = 0
        for i in range(0, len(ordered), delivery.REPLAY_BATCH):
            count += self._deliver_many(ordered[i : i + delivery.REPLAY_BATCH])
        count += self.deliver_memories(None, instances)  # memory wakes missed meanwhile
        self.caught_up += count
        if count:
            log.info("listener %s replayed %d messages", self.database, count)
        return count

    def expect_deadline(self, due: datetime | None) -> None:
        """A delivery to a served instance has an acknowledgement deadline `due`: look for
        passed deadlines once it passes (not before ACK_SWEEP after the last look)."""
        if due is None:
            return
        at = time.monotonic() + max(0.0, (due - utcnow()).total_seconds())
        with self._lock:
            sooner = at < self._next_sweep
            self._next_sweep = min(self._next_sweep, at)
        if sooner and threading.current_thread() is not self:
            self._wake()  # a listener waiting for its next chore recomputes when that is

    def _quiet_for(self) -> float:
        """Seconds until the next chore (a look for passed deadlines, a refresh of the
        subscriptions), at most REFRESH: how long a listener may wait for a notification."""
        now = time.monotonic()
        with self._lock:
            sweep = max(self._next_sweep, self._swept + ACK_SWEEP)
        return max(0.0, min(sweep - now, self._refreshed + REFRESH - now, REFRESH))

    def sweep_acks(self, force: bool = False) -> int:
        """Re-wake served recipients whose acknowledgement deadline passed (config
        messaging.ack_rewakes times, one deadline apart), then send the sender an overdue
        notice (a message from NOTICE_FROM in the thread). Each round is claimed in the
        database, so with two bridges exactly one acts. Returns the rounds this bridge took."""
        now = time.monotonic()
        with self._lock:
            if not force and now < max(self._next_sweep, self._swept + ACK_SWEEP):
                return 0
            self._swept, self._next_sweep = now, now + REFRESH  # unless a deadline is sooner
        taken = 0
        rounds = (self.settings.messaging if self.settings else Messaging()).ack_rewakes
        try:
            due, upcoming = delivery.due_rewakes(self.db, self.served())
        except MemoryPalaceError:
            self.expect_deadline(utcnow())  # not looked: look again as soon as may be
            raise
        self.expect_deadline(upcoming)
        if due:  # a round taken moves its deadline: look again soon
            self.expect_deadline(utcnow())
        for row in due:
            last = int(row.rewakes) >= rounds
            if not delivery.take_round(self.db, row, last):
                continue  # another bridge took it
            taken += 1
            if last:
                messages.send(
                    self.db,
                    self.settings,
                    from_instance=NOTICE_FROM,
                    to_instance=row.from_instance,
                    message_type="event",
                    subject=f"overdue: {row.instance_id} has not acknowledged message "
                    f"#{row.message_id}",
                    content=f"{row.instance_id} was woken {int(row.rewakes) + 1} times for "
                    f"message #{row.message_id} ({row.subject or 'no subject'}) and has not "
                    "acknowledged it. See palace_message action=status.",
                    reply_to=int(row.message_id),
                    notice=True,
                )
                continue
            payload = delivery.payload_of(self.db, int(row.message_id))
            if payload is not None:
                self._emit_one({**payload, "rewake": int(row.rewakes) + 1}, [row.instance_id])
        return taken

    def _status_event(self, state: str, **extra: Any) -> None:
        self.state = state
        self._emit(
            {
                "event": "listener_status",
                "data": {
                    "database": self.database,
                    "state": state,
                    "kind": self.kind,
                    "last_message_id": self.last_id,
                    **extra,
                },
            }
        )


class PushListener(Listener):
    """LISTEN on a dedicated connection; select() wakes on a notification or the self-pipe."""

    kind = "listen"

    def __init__(self, database: str, db: Database, served: set[str], emit: Emit) -> None:
        super().__init__(database, db, served, emit)
        self._conn: Any = None
        self._pending = threading.Event()  # the listened names changed
        self._synced = threading.Condition()
        self._wanted_gen = self._synced_gen = 0  # generations of the listened names
        self._listening: set[str] = set()
        self._pipe_r, self._pipe_w = os.pipe()
        os.set_blocking(self._pipe_r, False)
        os.set_blocking(self._pipe_w, False)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # the pipe is full (a wake is pending) or closed
            os.write(self._pipe_w, b"x")

    def _apply(self, before: set[str], after: set[str], wait: float = 2.0) -> None:
        if before == after:
            return
        with self._synced:
            self._wanted_gen += 1
            gen = self._wanted_gen
        self._pending.set()
        self._wake()
        if self._conn is not None and threading.current_thread() is not self:
            # Listening when this returns, so a message sent right after is delivered.
            # Disconnected: every name is LISTENed again on reconnect anyway.
            with self._synced:
                self._synced.wait_for(lambda: self._synced_gen >= gen, wait)

    def _sync_listens(self) -> None:
        self._pending.clear()
        with self._synced:
            gen = self._wanted_gen
        want = set(self.names())
        for name in sorted(want - self._listening):
            self._conn.listen(names.pg_channel(name))
        for name in sorted(self._listening - want):
            self._conn.unlisten(names.pg_channel(name))
        self._listening = want
        self.channels = self._conn.channels()  # the server's word, reported by _health
        with self._synced:
            self._synced_gen = max(self._synced_gen, gen)
            self._synced.notify_all()

    def _connect(self, first: bool) -> None:
        self._conn = self.db.backend.open_listen(self.db.listen_url)
        self._listening = set()
        self._sync_listens()
        self.state = "listening"
        self.ready.set()  # the bridge's ready line comes before the replayed events
        if not first:
            self._status_event("reconnected", reconnects=self.reconnects)
        self.replay()  # listening already: anything committed from now on is notified

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._drop_held()
        self.channels = []

    def _drain_pipe(self) -> None:
        try:
            while os.read(self._pipe_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _read(self) -> None:
        """Claim every message notified since the last read in one transaction (a burst costs
        one commit, not one per message), then the memory wakes."""
        found: list[dict[str, Any]] = []
        memory_ids: list[int] = []
        for raw in self._conn.payloads():
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.warning("ignoring a non-JSON notification on %s", self.database)
                continue
            if isinstance(payload, dict) and "memory_id" in payload:
                try:
                    memory_ids.append(int(payload["memory_id"]))
                except (TypeError, ValueError):
                    log.warning("ignoring a malformed memory notification on %s", self.database)
            elif isinstance(payload, dict):
                found.append(payload)
        for start in range(0, len(found), delivery.REPLAY_BATCH):
            self._deliver_many(found[start : start + delivery.REPLAY_BATCH])
        if memory_ids:
            self.deliver_memories(memory_ids)

    def _wait(self, idle_since: float) -> float:
        """One select() round: apply name changes, read notifications. Returns idle_since."""
        if self._pending.is_set():
            self._sync_listens()
            self._read()  # notifications the driver took in during those statements
        self.sweep_acks()
        self.refresh_now_and_then()
        # Name changes, stops and sooner deadlines write to the pipe: no polling while idle.
        wait = self._quiet_for()
        readable, _, _ = select.select([self._conn, self._pipe_r], [], [], wait)
        if self._pipe_r in readable:
            self._drain_pipe()
        if self._conn in readable:
            self._read()
            return time.monotonic()
        if time.monotonic() - idle_since > KEEPALIVE:
            self._conn.ping()
            self._read()
            return time.monotonic()
        return idle_since

    def run(self) -> None:
        backoff, first, idle_since = FIRST_RETRY, True, time.monotonic()
        while not self._stop_event.is_set():
            if self._conn is None:
                try:
                    self._connect(first)
                except MemoryPalaceError as exc:
                    self._close()
                    self.last_error, self.state = exc.message, "reconnecting"
                    if first:
                        log.warning(
                            "listener %s cannot connect yet: %s", self.database, exc.message
                        )
                        self.ready.set()
                    self._stop_event.wait(backoff)
                    backoff = min(backoff * 2, MAX_RETRY)
                    continue
                first, backoff, self.state = False, FIRST_RETRY, "listening"
                self.ready.set()
            try:
                idle_since = self._wait(idle_since)
            except (MemoryPalaceError, OSError, ValueError) as exc:
                if self._stop_event.is_set():
                    break
                self.reconnects += 1
                self.last_error = getattr(exc, "message", None) or str(exc)
                log.warning("listener %s lost its connection: %s", self.database, self.last_error)
                self._close()
                self._status_event("disconnected", error=self.last_error)
                self._stop_event.wait(FIRST_RETRY)
        self._close()
        self._drop_held()
        self.state = "stopped"
        for fd in (self._pipe_r, self._pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class PollListener(Listener):
    """No NOTIFY (SQLite): read new message ids every 100 ms and emit the same events."""

    kind = "poll"

    def run(self) -> None:
        replayed = False
        while not replayed and not self._stop_event.is_set():
            try:
                self.last_id = messages.max_message_id(self.db)
                self.last_memory_id = watch.max_memory_id(self.db)
                self.state = "polling"
                self.ready.set()  # the bridge's ready line comes before the replayed events
                self.replay()  # what was sent while no bridge served these instances
                replayed = True
            except MemoryPalaceError as exc:  # retry; the error is reported in _health
                self.last_error = exc.message
                self.state = "error"
                self.ready.set()
                self._stop_event.wait(TICK)
        self.state = "polling"
        self.ready.set()
        # Nothing committed since the last look (by anyone, any process): nothing new to read.
        # A look that failed is repeated whatever the probe says.
        probe = self.db.backend.change_probe(self.db.url)
        stale = True
        while not self._stop_event.wait(TICK):
            try:
                if stale or probe is None or probe.changed():
                    stale = True
                    rows = messages.messages_since(self.db, self.last_id, self.names())
                    self._deliver_many(rows)
                    if self._watching:
                        self.deliver_memories(watch.newer_ids(self.db, self.last_memory_id))
                    stale = False
                self.sweep_acks()
                self.refresh_now_and_then()
                if self.state != "polling":
                    self._status_event("polling")
            except MemoryPalaceError as exc:  # a locked or missing file must not kill us
                self.last_error = exc.message
                if self.state != "error":
                    log.warning("poller %s: %s", self.database, exc.message)
                    self._status_event("error", error=self.last_error)
        if probe is not None:
            probe.close()
        self._drop_held()
        self.state = "stopped"


class Listeners:
    """Every listener of a bridge: one per database, each for the instances it serves."""

    def __init__(self, palace: Palace, emit: Emit) -> None:
        self.palace = palace
        self._emit = emit
        self._lock = threading.Lock()
        self._by_db: dict[str, Listener] = {}
        self._served: set[str] = set()
        self._implicit: dict[str, float] = {}  # served because calls ran as it -> last use
        if palace.settings.instance_id and valid_name(palace.settings.instance_id):
            self._served.add(palace.settings.instance_id)
        self.idle_timeout = palace.settings.resources.idle_timeout
        self._reaper: threading.Thread | None = None
        self.released = 0  # listeners and instances released for being idle
        self.closed = False

    def _event(self, obj: dict[str, Any]) -> None:
        """Every event of the listeners: a wake counts as use of its database and recipients."""
        data = obj.get("data") or {}
        if obj.get("event") == "new_message":
            now = time.monotonic()
            with self._lock:
                listener = self._by_db.get(data.get("database"))
                if listener is not None:
                    listener.last_used = now
                for who in data.get("recipients") or ():
                    if who in self._implicit:
                        self._implicit[who] = now
        self._emit(obj)

    def ensure(
        self, database: str | None = None, wait: float = 5.0, keep: bool = False
    ) -> Listener:
        """The listener of a database, started on first use (listening before it returns).
        `keep`: never release it when idle (the default database's is always kept)."""
        if self.closed:
            raise BackendUnavailable("the bridge is shutting down; no listener can start")
        name, _ = self.palace.catalog.resolve(database)
        keep = keep or name == self.palace.catalog.default
        with self._lock:
            listener = self._by_db.get(name)
            if listener is not None:
                listener.last_used = time.monotonic()
                listener.keep = listener.keep or keep
                return listener
            db = self.palace.database(name)
            cls = PushListener if db.backend.listen_mode == "listen" else PollListener
            listener = cls(name, db, set(self._served), self._event)
            listener.settings = self.palace.settings
            listener.keep = keep
            db.pins += 1  # the engine registry keeps a database while a listener uses it
            self._by_db[name] = listener
            if self._reaper is None:
                self._reaper = threading.Thread(
                    target=self._reap, name="mp-listener-reaper", daemon=True
                )
                self._reaper.start()
        listener.refresh()
        listener.start()
        listener.ready.wait(wait)
        return listener

    def serve(self, instance: str, database: str | None = None, explicit: bool = True) -> Listener:
        """Deliver messages for `instance` in every database listened to; returns the
        listener of `database` (started if needed). `explicit` (`_subscribe`): served for
        good; else (a call ran as it) released after resources.idle_timeout unused."""
        with self._lock:  # first: a listener started later (database down now) serves it too
            if explicit or instance == self.palace.settings.instance_id:
                self._implicit.pop(instance, None)
            elif instance in self._implicit or instance not in self._served:
                self._implicit[instance] = time.monotonic()
            self._served.add(instance)
        listener = self.ensure(database, keep=explicit and database is not None)
        with self._lock:
            listeners = list(self._by_db.values())
        for lst in listeners:
            lst.serve(instance)
        return listener

    def unserve(self, instance: str) -> None:
        """Stop delivering messages for `instance` in every database (never starts a
        listener or creates a database)."""
        with self._lock:
            self._served.discard(instance)
            self._implicit.pop(instance, None)
            listeners = list(self._by_db.values())
        for lst in listeners:
            lst.unserve(instance)

    def release_idle(self, now: float | None = None) -> list[str]:
        """Stop the listeners and unserve the implicit instances unused for idle_timeout.
        Returns what was released ("database:NAME", "instance:NAME")."""
        now = time.monotonic() if now is None else now
        limit = self.idle_timeout
        with self._lock:
            stale = [
                lst for lst in self._by_db.values() if not lst.keep and now - lst.last_used >= limit
            ]
            for lst in stale:
                del self._by_db[lst.database]
            instances = [i for i, used in self._implicit.items() if now - used >= limit]
            for instance in instances:
                del self._implicit[instance]
                self._served.discard(instance)
            listeners = list(self._by_db.values())
        for lst in stale:
            lst.stop()
            lst.db.pins -= 1
        for instance in instances:
            for lst in listeners:
                with contextlib.suppress(MemoryPalaceError):
                    lst.unserve(instance)
        released = [f"database:{lst.database}" for lst in stale]
        released += [f"instance:{i}" for i in instances]
        if released:
            self.released += len(released)
            log.info("released idle %s", ", ".join(released))
        return released

    def _reap(self) -> None:
        tick = min(max(self.idle_timeout / 4, 0.05), 5.0)
        while not self.closed:
            time.sleep(tick)
            if not self.closed:
                try:
                    self.release_idle()
                except Exception:  # a reaper must outlive a bad round
                    log.exception("releasing idle listeners failed")

    def refresh(self, database: str | None = None) -> None:
        """Subscriptions changed in a database: listen to the served instances' channels."""
        self.ensure(database).refresh()

    def deadlines_changed(self, database: str | None = None) -> None:
        """Deliveries in a database got acknowledgement deadlines outside the listener's own
        claims (handed-over wakes): its listener, if running, looks for passed ones soon."""
        name, _ = self.palace.catalog.resolve(database)
        with self._lock:
            listener = self._by_db.get(name)
        if listener is not None:
            listener.expect_deadline(utcnow())

    def served(self) -> list[str]:
        with self._lock:
            return sorted(self._served)

    def status(self) -> dict[str, Any]:
        with self._lock:
            listeners = list(self._by_db.values())
        return {lst.database: lst.status() for lst in listeners}

    def stop(self) -> None:
        with self._lock:
            self.closed = True
            listeners = list(self._by_db.values())
        for listener in listeners:
            listener.stop()
