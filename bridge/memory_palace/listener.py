"""Push delivery for the bridge: one thread per database that LISTENs (PostgreSQL: select() on a
dedicated connection plus a self-pipe, reconnect with backoff and catch-up) or polls every
100 ms (SQLite). Each emits `new_message` once per message id, only for the instances this
bridge serves, naming them in `recipients`.

The bridge is the one owner of what is listened to: the instances it serves (its configured
instance, the identities of its callers, and those the plugin announces with `_subscribe`),
broadcasts, and the channels those instances subscribed to (stored in the database).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from .db.engine import Database
from .errors import BackendUnavailable, MemoryPalaceError
from .palace import Palace
from .services import messages, names

log = logging.getLogger("memory_palace.listener")

Emit = Callable[[dict[str, Any]], None]

TICK = 0.1  # select() timeout and SQLite poll interval, seconds
FIRST_RETRY = 0.05
MAX_RETRY = 5.0
KEEPALIVE = 30.0  # an idle listener checks its connection this often
CATCHUP_WINDOW = 1000  # ids below the newest seen that catch-up re-checks (out-of-order commits)
SEEN_MAX = 20_000


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
        self.channels: list[str] = []  # PostgreSQL: what the server says the connection LISTENs to
        self._stop_event = threading.Event()
        self.ready = threading.Event()
        self.state = "starting"
        self.start_id = 0
        self.last_id = 0
        self._seen: set[int] = set()
        self.emitted = 0
        self.reconnects = 0
        self.caught_up = 0
        self.last_error: str | None = None

    # -- what is listened to ----------------------------------------------------------------
    def names(self) -> list[str]:
        """Instance and channel names whose messages concern the served instances."""
        with self._lock:
            return sorted(self._served | set(self._subscribers) | {names.BROADCAST})

    def served(self) -> list[str]:
        with self._lock:
            return sorted(self._served)

    def serve(self, instance: str) -> bool:
        before = set(self.names())
        with self._lock:
            if instance in self._served:
                return False
            self._served.add(instance)
        self.refresh(before)
        return True

    def unserve(self, instance: str) -> bool:
        before = set(self.names())
        with self._lock:
            if instance not in self._served:
                return False
            self._served.discard(instance)
        self.refresh(before)
        return True

    def refresh(self, before: set[str] | None = None) -> None:
        """Re-read which channels the served instances subscribe to, and listen accordingly.
        `before`: the names listened to before the caller changed the served set."""
        if before is None:
            before = set(self.names())
        served = self.served()
        subscribed: dict[str, set[str]] = {}
        for instance in served:
            for channel in messages.subscriptions(self.db, instance):
                if valid_name(channel):
                    subscribed.setdefault(channel, set()).add(instance)
        with self._lock:
            self._subscribers = subscribed
        self._apply(before, set(self.names()))

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
    def _deliver(self, payload: dict[str, Any]) -> None:
        try:
            msg_id = int(payload["message_id"])
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring a notification without message_id on %s", self.database)
            return
        if msg_id in self._seen or msg_id <= self.start_id:
            return
        self._seen.add(msg_id)
        self.last_id = max(self.last_id, msg_id)
        if len(self._seen) > SEEN_MAX:
            floor = self.last_id - CATCHUP_WINDOW
            self._seen = {i for i in self._seen if i > floor}
        recipients = self.recipients(payload)
        if not recipients:
            return  # listened for another reason (e.g. a broadcast by the only served instance)
        self.emitted += 1
        self._emit(
            {
                "event": "new_message",
                "data": {**payload, "database": self.database, "recipients": recipients},
            }
        )

    def _catch_up(self, floor: int) -> int:
        """Emit messages for the listened names committed after `floor`, oldest first."""
        count = 0
        while True:
            rows = messages.messages_since(self.db, floor, self.names())
            for payload in rows:
                before = self.emitted
                self._deliver(payload)
                count += self.emitted - before
            if len(rows) < 1000:
                return count
            floor = rows[-1]["message_id"]

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
        if first:
            self.start_id = self.last_id = messages.max_message_id(self.db)
        else:
            self._status_event("reconnected", reconnects=self.reconnects)
            caught = self._catch_up(max(self.start_id, self.last_id - CATCHUP_WINDOW))
            self.caught_up += caught
            if caught:
                log.info("listener %s caught up %d messages", self.database, caught)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.channels = []

    def _drain_pipe(self) -> None:
        try:
            while os.read(self._pipe_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _read(self) -> None:
        for raw in self._conn.payloads():
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.warning("ignoring a non-JSON notification on %s", self.database)
                continue
            if isinstance(payload, dict):
                self._deliver(payload)

    def _wait(self, idle_since: float) -> float:
        """One select() round: apply name changes, read notifications. Returns idle_since."""
        if self._pending.is_set():
            self._sync_listens()
            self._read()  # notifications the driver took in during those statements
        readable, _, _ = select.select([self._conn, self._pipe_r], [], [], TICK)
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
        self.state = "stopped"
        for fd in (self._pipe_r, self._pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class PollListener(Listener):
    """No NOTIFY (SQLite): read new message ids every 100 ms and emit the same events."""

    kind = "poll"

    def run(self) -> None:
        try:
            self.start_id = self.last_id = messages.max_message_id(self.db)
        except MemoryPalaceError as exc:  # keep polling; the error is reported in _health
            self.last_error = exc.message
        self.state = "polling"
        self.ready.set()
        while not self._stop_event.wait(TICK):
            try:
                for payload in messages.messages_since(self.db, self.last_id, self.names()):
                    self._deliver(payload)
                if self.state != "polling":
                    self._status_event("polling")
            except MemoryPalaceError as exc:  # a locked or missing file must not kill us
                self.last_error = exc.message
                if self.state != "error":
                    log.warning("poller %s: %s", self.database, exc.message)
                    self._status_event("error", error=self.last_error)
        self.state = "stopped"


class Listeners:
    """Every listener of a bridge: one per database, each for the instances it serves."""

    def __init__(self, palace: Palace, emit: Emit) -> None:
        self.palace = palace
        self._emit = emit
        self._lock = threading.Lock()
        self._by_db: dict[str, Listener] = {}
        self._served: set[str] = set()
        if palace.settings.instance_id and valid_name(palace.settings.instance_id):
            self._served.add(palace.settings.instance_id)
        self.closed = False

    def ensure(self, database: str | None = None, wait: float = 5.0) -> Listener:
        """The listener of a database, started on first use (listening before it returns)."""
        if self.closed:
            raise BackendUnavailable("the bridge is shutting down; no listener can start")
        name, _ = self.palace.catalog.resolve(database)
        with self._lock:
            listener = self._by_db.get(name)
            if listener is not None:
                return listener
            db = self.palace.database(name)
            cls = PushListener if db.backend.listen_mode == "listen" else PollListener
            listener = cls(name, db, set(self._served), self._emit)
            self._by_db[name] = listener
        listener.refresh()
        listener.start()
        listener.ready.wait(wait)
        return listener

    def serve(self, instance: str, database: str | None = None) -> Listener:
        """Deliver messages for `instance` in every database listened to; returns the
        listener of `database` (started if needed)."""
        listener = self.ensure(database)
        with self._lock:
            self._served.add(instance)
            listeners = list(self._by_db.values())
        for lst in listeners:
            lst.serve(instance)
        return listener

    def unserve(self, instance: str) -> None:
        """Stop delivering messages for `instance` in every database (never starts a
        listener or creates a database)."""
        with self._lock:
            self._served.discard(instance)
            listeners = list(self._by_db.values())
        for lst in listeners:
            lst.unserve(instance)

    def refresh(self, database: str | None = None) -> None:
        """Subscriptions changed in a database: listen to the served instances' channels."""
        self.ensure(database).refresh()

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
