"""Push delivery for the bridge: one LISTEN thread per PostgreSQL database (select() on the
connection plus a self-pipe, reconnect with backoff and catch-up), or a 100 ms poller on SQLite.
Both emit `new_message` events exactly once per message id."""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson
import psycopg2
from psycopg2 import sql

from .db.engine import Database, pg_connect
from .errors import MemoryPalaceError
from .services import messages

if TYPE_CHECKING:
    from .palace import Palace

log = logging.getLogger("memory_palace.listener")

Emit = Callable[[dict[str, Any]], None]

TICK = 0.1  # select() timeout and SQLite poll interval, seconds
FIRST_RETRY = 0.05
MAX_RETRY = 5.0
KEEPALIVE = 30.0  # an idle listener checks its connection this often
CATCHUP_WINDOW = 1000  # ids below the newest seen that catch-up re-checks (out-of-order commits)
SEEN_MAX = 20_000


class _Listener(threading.Thread):
    """Common state: the listened names, the last message id, and exactly-once emission."""

    kind = ""

    def __init__(self, database: str, db: Database, names: Iterable[str], emit: Emit) -> None:
        super().__init__(name=f"mp-listener-{database}", daemon=True)
        self.database = database
        self.db = db
        self._emit = emit
        self._lock = threading.Lock()
        self._names: set[str] = set(names)
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

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._names)

    def channels(self) -> list[str]:
        return [messages.pg_channel(n) for n in self.names()]

    def status(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "kind": self.kind,
            "state": self.state,
            "channels": self.channels(),
            "last_message_id": self.last_id,
            "emitted": self.emitted,
            "reconnects": self.reconnects,
            "caught_up": self.caught_up,
            "last_error": self.last_error,
        }

    def add(self, name: str, wait: float = 2.0) -> bool:
        with self._lock:
            if name in self._names:
                return False
            self._names.add(name)
        self._changed(("LISTEN", name), wait)
        return True

    def remove(self, name: str, wait: float = 2.0) -> bool:
        with self._lock:
            if name not in self._names:
                return False
            self._names.discard(name)
        self._changed(("UNLISTEN", name), wait)
        return True

    def _changed(self, op: tuple[str, str], wait: float) -> None:
        """Hook: the PostgreSQL listener applies LISTEN/UNLISTEN on its own thread."""

    def stop(self, timeout: float = 2.0) -> None:
        self._stop_event.set()
        self._wake()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
        self.state = "stopped"

    def _wake(self) -> None:
        """Hook: interrupt a wait at once."""

    def _deliver(self, payload: dict[str, Any]) -> None:
        try:
            msg_id = int(payload["message_id"])
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring a notification without message_id on %s", self.database)
            return
        if msg_id in self._seen or msg_id <= self.start_id:
            return
        self._seen.add(msg_id)
        if msg_id > self.last_id:
            self.last_id = msg_id
        if len(self._seen) > SEEN_MAX:
            floor = self.last_id - CATCHUP_WINDOW
            self._seen = {i for i in self._seen if i > floor}
        self.emitted += 1
        self._emit({"event": "new_message", "data": {**payload, "database": self.database}})

    def _catch_up(self) -> int:
        """Emit messages for the listened names that were committed while we were away."""
        floor = max(self.start_id, self.last_id - CATCHUP_WINDOW)
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


class PgListener(_Listener):
    """LISTEN on a raw autocommit connection; select() wakes on a notification or the pipe."""

    kind = "listen"

    def __init__(self, database: str, db: Database, names: Iterable[str], emit: Emit) -> None:
        super().__init__(database, db, names, emit)
        self._conn: Any = None
        self._ops: list[tuple[str, str, threading.Event]] = []
        self._pipe_r, self._pipe_w = os.pipe()
        os.set_blocking(self._pipe_r, False)
        os.set_blocking(self._pipe_w, False)

    def _wake(self) -> None:
        try:
            os.write(self._pipe_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake is pending) or closed

    def _changed(self, op: tuple[str, str], wait: float) -> None:
        done = threading.Event()
        with self._lock:
            self._ops.append((op[0], op[1], done))
        self._wake()
        if self._conn is not None and threading.current_thread() is not self:
            done.wait(wait)  # disconnected: the name is LISTENed with the others on reconnect

    def _listen(self, verb: str, name: str) -> None:
        ident = sql.Identifier(messages.pg_channel(name))
        with self._conn.cursor() as cur:
            cur.execute(sql.SQL(verb + " {}").format(ident))

    def _apply_ops(self) -> None:
        with self._lock:
            ops, self._ops = self._ops, []
        try:
            for verb, name, done in ops:
                if self._conn is not None:
                    self._listen(verb, name)
                done.set()
        finally:
            for _, _, done in ops:  # on a connection error the names are re-LISTENed on reconnect
                done.set()

    def _connect(self) -> None:
        conn = pg_connect(self.db.url, autocommit=True)
        self._conn = conn
        for name in self.names():
            self._listen("LISTEN", name)
        with self._lock:  # ops queued before this point are covered by the full LISTEN above
            ops, self._ops = self._ops, []
        for _, _, done in ops:
            done.set()

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def _sleep(self, seconds: float) -> None:
        self._stop_event.wait(seconds)

    def run(self) -> None:
        backoff = FIRST_RETRY
        first = True
        idle_since = time.monotonic()
        while not self._stop_event.is_set():
            if self._conn is None:
                try:
                    self._connect()
                    if first:
                        self.start_id = self.last_id = messages.max_message_id(self.db)
                    else:
                        self._status_event("reconnected", reconnects=self.reconnects)
                        caught = self._catch_up()
                        self.caught_up += caught
                        if caught:
                            log.info("listener %s caught up %d messages", self.database, caught)
                except Exception as exc:
                    self._close()
                    self.last_error = str(exc).strip().splitlines()[0] if str(exc) else repr(exc)
                    self.state = "reconnecting"
                    self._apply_ops()
                    if first:
                        log.warning(
                            "listener %s cannot connect yet: %s", self.database, self.last_error
                        )
                        self.ready.set()
                    self._sleep(backoff)
                    backoff = min(backoff * 2, MAX_RETRY)
                    continue
                first = False
                backoff = FIRST_RETRY
                self.state = "listening"
                self.ready.set()
            try:
                self._apply_ops()
                readable, _, _ = select.select([self._conn, self._pipe_r], [], [], TICK)
                if self._pipe_r in readable:
                    try:
                        while os.read(self._pipe_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                if self._conn in readable:
                    self._conn.poll()
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > KEEPALIVE:
                    with self._conn.cursor() as cur:
                        cur.execute("SELECT 1")
                    idle_since = time.monotonic()
                self._drain()
            except (psycopg2.Error, OSError, ValueError) as exc:
                if self._stop_event.is_set():
                    break
                self.reconnects += 1
                self.last_error = str(exc).strip().splitlines()[0] if str(exc) else repr(exc)
                log.warning("listener %s lost its connection: %s", self.database, self.last_error)
                self._close()
                self._status_event("disconnected", error=self.last_error)
                self._sleep(FIRST_RETRY)
        self._close()
        self.state = "stopped"
        for fd in (self._pipe_r, self._pipe_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _drain(self) -> None:
        notifies = self._conn.notifies
        while notifies:
            note = notifies.pop(0)
            try:
                payload = orjson.loads(note.payload)
            except orjson.JSONDecodeError:
                log.warning("ignoring a non-JSON notification on %s", note.channel)
                continue
            if isinstance(payload, dict):
                self._deliver(payload)


class SqlitePoller(_Listener):
    """SQLite has no NOTIFY: read new message ids every 100 ms and emit the same events."""

    kind = "poll"

    def _wake(self) -> None:
        pass  # stop() sets the event the loop waits on

    def run(self) -> None:
        try:
            self.start_id = self.last_id = messages.max_message_id(self.db)
        except Exception as exc:
            self.last_error = str(exc)
        self.state = "polling"
        self.ready.set()
        while not self._stop_event.wait(TICK):
            try:
                for payload in messages.messages_since(self.db, self.last_id, self.names()):
                    self._deliver(payload)
                if self.state != "polling":
                    self._status_event("polling")
            except Exception as exc:
                self.last_error = str(exc)
                if self.state != "error":
                    log.warning("poller %s: %s", self.database, exc)
                    self._status_event("error", error=self.last_error)
        self.state = "stopped"


class Listeners:
    """Every listener of a bridge: one per database that has listened names."""

    def __init__(self, palace: Palace, emit: Emit) -> None:
        self.palace = palace
        self._emit = emit
        self._lock = threading.Lock()
        self._by_db: dict[str, _Listener] = {}
        self._discovered: set[str] = set()
        self._extra: dict[str, set[str]] = {}  # database -> names added with _subscribe
        self.closed = False

    def base_names(self) -> set[str]:
        s = self.palace.settings
        names = set(s.instances) | {messages.BROADCAST} | self._discovered
        if s.instance_id:
            names.add(s.instance_id)
        return {n for n in names if valid_name(n)}

    def ensure(self, database: str | None = None, wait: float = 5.0) -> _Listener:
        """The listener of a database, started on first use (LISTENing before it returns)."""
        if self.closed:
            raise MemoryPalaceError("the bridge is shutting down; no listener can start")
        name, _ = self.palace.catalog.resolve(database)
        with self._lock:
            listener = self._by_db.get(name)
            if listener is not None:
                return listener
            db = self.palace.database(name)
            names = self.base_names() | self._extra.get(name, set())
            names |= {c for c in messages.subscriptions(db) if valid_name(c)}
            cls = PgListener if db.is_postgres else SqlitePoller
            listener = cls(name, db, names, self._emit)
            self._by_db[name] = listener
            listener.start()
        listener.ready.wait(wait)
        return listener

    def discover(self, instance: str) -> bool:
        """A request named an instance: listen on its channel in every database. True if new."""
        with self._lock:
            if instance in self._discovered:
                return False
            self._discovered.add(instance)
            listeners = list(self._by_db.values())
        for listener in listeners:
            listener.add(instance)
        return True

    def add(self, name: str, database: str | None = None) -> _Listener:
        listener = self.ensure(database)
        with self._lock:
            self._extra.setdefault(listener.database, set()).add(name)
        listener.add(name)
        return listener

    def remove(self, name: str, database: str | None = None) -> _Listener:
        listener = self.ensure(database)
        with self._lock:
            self._extra.get(listener.database, set()).discard(name)
        listener.remove(name)
        return listener

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


def valid_name(name: str) -> bool:
    try:
        messages.check_name(name, "instance")
    except MemoryPalaceError:
        return False
    return True
