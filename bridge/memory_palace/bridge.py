"""The JSON-lines bridge for the OpenClaw plugin: requests on stdin, replies and push events on
stdout (one JSON object per line), tools run on a worker pool, listeners push `new_message` (and
`new_memory` when a memory subscription matches).

Protocol. Request `{"id": str|int, "method": str, "params": {}, "caller"?: str}`; reply
`{"id", "result"}` or `{"id", "error": {"code", "message", "data"?}}`. Events
`{"event": "new_message"|"new_memory"|"listener_status", "data": {...}}`. Errors have ONE
channel: a failed call never returns a result, and a result never holds an `error` key.
Protocol codes:
PARSE_ERROR (id null), INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR (a bug;
traceback on stderr). A tool that refuses answers with its domain code (NOT_FOUND, CONFLICT,
PERMISSION_DENIED, BACKEND_UNAVAILABLE, ...; see errors.py); `error.data.kind` repeats it and the
rest of `error.data` is that error's data.

Management methods: _health, _shutdown, _get_instance_routes, _cancel {id} (a cancelled request
gets no reply), _subscribe / _unsubscribe {instance, database?}: deliver (or stop delivering)
`new_message` events for that instance, _deliver {received?}: start delivering after
`--no-deliver`, first recording the wakes the consumer already received from an earlier
bridge. Events name the served instances they are for in `data.recipients`. The ready line
lists the tools this bridge serves, its extensions and its identity.

Delivery. `--no-deliver` (env MEMORY_PALACE_NO_DELIVER=1) starts a bridge that serves calls only:
no listener, no replay, nothing recorded as delivered, and `_subscribe`s are held. A process
that cannot wake anyone (a CLI run of the plugin) must not mark messages delivered; `_deliver`
turns delivery on (the gateway's service, once it runs) and applies the held `_subscribe`s.

Identity. The bridge acts as its token's instance (MEMORY_PALACE_TOKEN), or without one as the
configured instance, unverified. A request's `caller` names the instance a gateway runs it for
(its agent -> instance mapping): the call is bound to that instance, so parameters cannot name
another one, and with a token it must be the token's instance or one it may act as.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from . import __version__
from .config import load_settings
from .errors import InvalidParams, MemoryPalaceError, PermissionDenied, to_wire
from .listener import Listeners, valid_name
from .palace import Palace
from .services import delivery, names
from .services.access import Caller
from .tools import Tool

log = logging.getLogger("memory_palace.bridge")

ID_RE = re.compile(rb'"id"\s*:\s*("(?:[^"\\]|\\.){0,200}"|-?\d{1,19})')
WORKERS = 8
SHUTDOWN_GRACE = 10.0
STOP_LIMIT = SHUTDOWN_GRACE + 5.0  # past this a stop is stuck: dump the threads' stacks, exit
START_RETRY = 0.25  # how often a bridge started without its database tries again, seconds
READY_WAIT = 60.0  # how long an event waits for the ready line at start


class RequestError(Exception):
    """A protocol-level error (not a tool error)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Pending:
    method: str
    received: float
    running: bool = False
    cancelled: bool = False


class WorkerPool:
    """A small thread pool whose size grows by one for each cancelled request still running, so
    abandoned slow calls never starve new ones (threads cannot be killed in Python)."""

    def __init__(self, size: int) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.size = size
        self._threads = 0
        self._idle = 0
        self._queued = 0
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._queued += 1
        self._queue.put(job)
        self._maybe_spawn()

    def _maybe_spawn(self) -> None:
        with self._lock:
            if self._closed or self._queued <= self._idle or self._threads >= self.size:
                return
            self._threads += 1
            name = f"mp-worker-{self._threads}"
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def resize(self, delta: int) -> None:
        with self._lock:
            self.size += delta
        if delta > 0:
            self._maybe_spawn()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._threads > self.size:  # shrink after a cancelled call finished
                    self._threads -= 1
                    return
                self._idle += 1
            job = self._queue.get()
            with self._lock:
                self._idle -= 1
                if job is None:
                    self._threads -= 1
                    return
                self._queued -= 1
            job()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._queue.put(None)


class Bridge:
    def __init__(
        self, palace: Palace, out: BinaryIO, workers: int = WORKERS, deliver: bool = True
    ) -> None:
        self.palace = palace
        self._out = out
        self._write_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._idle = threading.Condition(self._pending_lock)
        self.pending: dict[Any, Pending] = {}
        self.started = time.monotonic()
        # No more workers than pooled connections (less the one the listener keeps for its
        # claims): extra requests queue here instead of timing out in the pool.
        self.pool = WorkerPool(max(1, min(workers, palace.max_concurrent_calls - 1)))
        self.ready_sent = threading.Event()  # events wait for the ready line
        self.listeners = Listeners(palace, self.event)
        self.delivering = deliver
        self._held: dict[tuple[str, str | None], None] = {}  # _subscribes while not delivering
        self.methods = set(palace.registry.names())
        self.database_error: dict[str, Any] | None = None

    # -- output ---------------------------------------------------------------------------
    def write(self, obj: dict[str, Any]) -> None:
        """Write one protocol line; the only writer of the protocol stream."""
        try:
            data = orjson.dumps(obj, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError as exc:
            log.error("cannot encode a reply as JSON: %s", exc)
            data = orjson.dumps(
                {
                    "id": obj.get("id"),
                    "error": {
                        "code": "INTERNAL_ERROR",
                        "message": f"the result could not be encoded: {exc}",
                    },
                }
            )
        with self._write_lock:
            try:
                self._out.write(data + b"\n")
                self._out.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass  # the plugin went away; EOF on stdin ends us
        if "ready" in obj:
            self.ready_sent.set()

    def event(self, obj: dict[str, Any]) -> None:
        """Write a push event; the first ones (a replay at start) wait for the ready line."""
        if not self.ready_sent.is_set():
            self.ready_sent.wait(READY_WAIT)
        self.write(obj)

    def error(self, rid: Any, code: str, message: str, data: dict[str, Any] | None = None) -> None:
        err: dict[str, Any] = {"code": code, "message": message}
        if data:
            err["data"] = data
        self.write({"id": rid, "error": err})

    # -- start and stop -------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Initialise the default database and its listener; return the ready line."""
        registry = self.palace.registry
        ready: dict[str, Any] = {
            "ready": True,
            "version": __version__,
            "tools": [t.name for t in registry.for_surface("bridge")],
            "extensions": list(registry.extensions),
            "instance_id": self.palace.settings.instance_id,
            "database": self.palace.catalog.default,
        }
        try:
            db = self.palace.database()
            if self.delivering:
                listener = self.listeners.ensure()
                ready["listener"] = {"kind": listener.kind, "state": listener.state}
            else:
                ready["listener"] = {"kind": None, "state": "not delivering"}
        except MemoryPalaceError as exc:
            log.error("default database unavailable: %s", exc.message)
            self.database_error = exc.to_dict()
            ready["database_error"] = self.database_error
            threading.Thread(target=self._retry_start, name="mp-start-retry", daemon=True).start()
            return ready
        try:
            me = self.palace.caller
            ready["identity"] = {"instance": me.instance, "role": me.role, "verified": me.verified}
        except MemoryPalaceError as exc:  # a bad token: every call will say so too
            log.error("identity: %s", exc.message)
            ready["identity_error"] = exc.to_dict()
        try:  # stored vectors from another embedder: say so now, with the fix
            self.palace.check_embedder(db)
        except MemoryPalaceError as exc:
            log.error("embedder check: %s", exc.message)
            ready["embedder_error"] = exc.to_dict()
        return ready

    def _retry_start(self) -> None:
        """The default database was down at start: keep trying until it answers, then start
        its listener (which replays what was sent meanwhile) and report ok in _health."""
        while not self.listeners.closed:
            try:
                self.palace.database()
                state = self.listeners.ensure().state if self.delivering else "not delivering"
            except MemoryPalaceError as exc:
                self.database_error = exc.to_dict()
                time.sleep(START_RETRY)
                continue
            self.database_error = None
            log.info("default database is up; listener %s", state)
            return

    def shutdown(self) -> bool:
        """Finish in-flight requests (up to a grace period), stop listeners. True if clean."""
        with self._idle:
            done = self._idle.wait_for(
                lambda: all(p.cancelled for p in self.pending.values()), SHUTDOWN_GRACE
            )
        self.pool.close()
        self.ready_sent.set()
        self.listeners.stop()
        self.palace.close()
        return done

    # -- requests -------------------------------------------------------------------------
    def _parse(self, line: bytes) -> tuple[Any, str, dict[str, Any], str | None] | None:
        """(id, method, params, caller) of a well-formed request; anything else is answered
        here."""
        try:
            req = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self.error(
                None,
                "PARSE_ERROR",
                f"the line is not valid JSON ({exc}); send one JSON object per line",
            )
            return None
        if not isinstance(req, dict):
            self.error(
                None,
                "INVALID_REQUEST",
                'a request must be a JSON object {"id", "method", "params"}',
            )
            return None
        rid = req.get("id")
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            self.error(
                None,
                "INVALID_REQUEST",
                'a request needs an "id" that is a string or an '
                f"integer, got {type(rid).__name__ if 'id' in req else 'none'}",
            )
            return None
        method = req.get("method")
        if not isinstance(method, str) or not method:
            self.error(rid, "INVALID_REQUEST", 'a request needs a "method" string')
            return None
        params = req.get("params")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            self.error(
                rid,
                "INVALID_PARAMS",
                f'{method}: "params" must be a JSON object, got {type(params).__name__}',
                {"kind": "INVALID_PARAMS", "param": "params"},
            )
            return None
        on_behalf = req.get("caller")
        if on_behalf is not None and not isinstance(on_behalf, str):
            self.error(
                rid,
                "INVALID_REQUEST",
                f'"caller" must be an instance name (string), got {type(on_behalf).__name__}',
            )
            return None
        if method not in self.methods and method not in MANAGEMENT:
            self.error(
                rid,
                "METHOD_NOT_FOUND",
                f"unknown method {method!r}; methods are the "
                f"tools ({', '.join(t.name for t in self.palace.tools)}) and "
                f"{', '.join(MANAGEMENT)}",
            )
            return None
        return rid, method, params, on_behalf

    def handle_line(self, line: bytes) -> bool:
        """Handle one request line. Returns False when the bridge should stop."""
        parsed = self._parse(line)
        if parsed is None:
            return True
        rid, method, params, on_behalf = parsed
        if method == "_shutdown":
            self.write({"id": rid, "result": {"success": True, "shutting_down": True}})
            return False
        pending = Pending(method, time.monotonic())
        with self._pending_lock:
            if rid in self.pending:
                self.error(
                    rid,
                    "INVALID_REQUEST",
                    f"id {rid!r} is already used by a pending request; use a fresh id per request",
                )
                return True
            inline = method in INLINE
            if not inline:
                self.pending[rid] = pending
        if inline:  # answered at once, never queued behind work
            self._reply(rid, method, params, on_behalf)
        else:
            self.pool.submit(lambda: self._work(rid, method, params, on_behalf, pending))
        return True

    def _reply(self, rid: Any, method: str, params: dict[str, Any], on_behalf: str | None) -> None:
        try:
            self.write({"id": rid, "result": self.dispatch(method, params, on_behalf)})
        except Exception as exc:  # mapped to a protocol error
            self._write_exception(rid, method, exc)

    def _work(
        self,
        rid: Any,
        method: str,
        params: dict[str, Any],
        on_behalf: str | None,
        pending: Pending,
    ) -> None:
        with self._pending_lock:
            if pending.cancelled:  # cancelled while queued: never run it
                return
            pending.running = True
        reply: dict[str, Any] | None = None
        error: Exception | None = None
        try:
            reply = {"id": rid, "result": self.dispatch(method, params, on_behalf)}
        except Exception as exc:  # mapped to a protocol error
            error = exc
        with self._idle:
            if self.pending.get(rid) is pending:
                del self.pending[rid]
            cancelled = pending.cancelled
            self._idle.notify_all()
        if cancelled:
            self.pool.resize(-1)  # give back the extra worker _cancel added
            log.info("dropped the reply to cancelled request %r (%s)", rid, method)
        elif error is not None:
            self._write_exception(rid, method, error)
        else:
            self.write(reply)

    def _write_exception(self, rid: Any, method: str, exc: Exception) -> None:
        if isinstance(exc, RequestError):
            self.error(rid, exc.code, exc.message)
            return
        err = to_wire(exc, method)
        if isinstance(exc, MemoryPalaceError):
            err["data"] = {"kind": exc.code, **exc.data}
        self.write({"id": rid, "error": err})

    # -- methods --------------------------------------------------------------------------
    def dispatch(
        self, method: str, params: dict[str, Any], on_behalf: str | None = None
    ) -> dict[str, Any]:
        if method in MANAGEMENT:
            args = _management_params(method, params)
            if method in AS_CALLER:
                args["caller"] = self._caller(on_behalf)
            return getattr(self, "m" + method)(**args)
        caller = self._caller(on_behalf)
        tool = self.palace.registry.get(method)
        database = params.get("database") if isinstance(params.get("database"), str) else None
        self._serve_callers(tool, params, database, caller)
        result = self.palace.call(method, params, caller=caller)
        if "subscriptions" in tool.effects and params.get("action") in SUBSCRIBING:
            self._refresh(database)  # re-reads every served instance's channels: only then
        return result

    def _caller(self, on_behalf: str | None) -> Caller:
        """The process's identity (its token's), or the instance the gateway names for this
        request (its agent -> instance mapping), which binds the call to that instance."""
        caller = self.palace.caller
        if on_behalf is None:
            return caller
        return caller.act_as(names.check_name(on_behalf, "caller"))

    def _serve_callers(
        self, tool: Tool, params: dict[str, Any], database: str | None, caller: Caller
    ) -> None:
        """The identities a call runs as are served from now on: their messages wake them.
        Only identities the caller may be (a token's instance and the ones it acts for)."""
        if not self.delivering:
            return
        wanted = {caller.instance} if caller.bound else set()
        for key in tool.identity:
            value = params.get(key)
            if isinstance(value, str) and caller.may_be(value):
                wanted.add(value)
        for name in wanted:
            if name and name != names.BROADCAST and valid_name(name):
                try:
                    self.listeners.serve(name, database, explicit=False)
                except MemoryPalaceError as exc:
                    log.warning("cannot deliver messages for %r: %s", name, exc.message)

    def _refresh(self, database: str | None) -> None:
        if not self.delivering:
            return
        try:
            self.listeners.refresh(database)
        except MemoryPalaceError as exc:
            log.warning("could not update the listened channels: %s", exc.message)

    def m_health(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._pending_lock:
            inflight = [
                {
                    "id": rid,
                    "method": p.method,
                    "running": p.running,
                    "age_ms": round((now - p.received) * 1000, 1),
                }
                for rid, p in self.pending.items()
            ]
        listeners = self.listeners.status()
        default = listeners.get(self.palace.catalog.default)
        out = {
            "ok": self.database_error is None,
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(now - self.started, 3),
            "in_flight": len(inflight),
            "in_flight_requests": inflight,
            "listener_state": default["state"] if default else "none",
            "served": self.listeners.served(),
            "delivering": self.delivering,
            "listeners": listeners,
            "workers": self.pool.size,
            "tools": len(self.palace.tools),
        }
        if self.database_error:
            out["database_error"] = self.database_error
        return out

    def m_cancel(self, id: Any) -> dict[str, Any]:
        with self._pending_lock:
            pending = self.pending.get(id)
            if pending is None:
                return {
                    "cancelled": False,
                    "id": id,
                    "state": "unknown",
                    "note": "no pending request has this id (finished already?)",
                }
            if pending.cancelled:
                return {
                    "cancelled": True,
                    "id": id,
                    "state": "running",
                    "note": "already cancelled; the work finishes in the background",
                }
            pending.cancelled = True
            if not pending.running:
                del self.pending[id]
                self._idle.notify_all()
                return {"cancelled": True, "id": id, "state": "queued"}
        self.pool.resize(+1)  # the abandoned call keeps its thread; others get a new one
        return {
            "cancelled": True,
            "id": id,
            "state": "running",
            "note": "the work finishes in the background; its reply is dropped",
        }

    def m_get_instance_routes(self) -> dict[str, Any]:
        s = self.palace.settings
        return {
            "instances": list(s.instances),
            "instance_routes": dict(s.instance_routes),
            "instance_id": s.instance_id,
        }

    def m_subscribe(
        self, caller: Caller, instance: str, database: str | None = None
    ) -> dict[str, Any]:
        name = names.check_name(instance, "instance")
        if not caller.may_be(name):
            raise PermissionDenied(
                f"_subscribe: you are {caller.describe()} and may not receive {name!r}'s "
                "messages; a gateway token lists the instances it serves (token create "
                "--acts-as)",
                instance=name,
            )
        if not self.delivering:
            self._held[(name, database)] = None
            return {
                "success": True,
                "instance": name,
                "database": self.palace.catalog.resolve(database)[0],
                "mode": None,
                "state": "held until _deliver",
                "served": sorted({*self.listeners.served(), *(n for n, _ in self._held)}),
            }
        listener = self.listeners.serve(name, database)
        return {
            "success": True,
            "instance": name,
            "database": listener.database,
            "mode": listener.kind,
            "state": listener.state,
            "served": self.listeners.served(),
        }

    def m_unsubscribe(self, instance: str, database: str | None = None) -> dict[str, Any]:
        """Stop serving an instance. It was served in every database, so `database` is
        accepted for symmetry with _subscribe and changes nothing."""
        name = names.check_name(instance, "instance")
        for key in [k for k in self._held if k[0] == name]:
            del self._held[key]
        self.listeners.unserve(name)
        return {"success": True, "instance": name, "served": self.listeners.served()}

    def m_deliver(self, received: list[Any] | None = None) -> dict[str, Any]:
        """Start delivering (a bridge started with --no-deliver): listen, replay what was
        missed, and serve the `_subscribe`s held meanwhile. Idempotent. `received`: the wakes
        the consumer already got from an earlier bridge ({database?, message_id | memory_id,
        recipients}); they are recorded as delivered first, so a bridge killed between writing
        wakes and committing them does not make this one repeat them."""
        recorded = self._record_received(_received(received)) if received else 0
        if not self.delivering:
            self.delivering = True
            held, self._held = list(self._held), {}
            # Each is served from now on even if its database is down: its listener starts
            # when the database is back (the default database's is retried as at start).
            try:
                self.listeners.ensure()
            except MemoryPalaceError as exc:
                retrying = self.database_error is not None  # down since start: already retried
                self.database_error = exc.to_dict()
                if not retrying:
                    threading.Thread(
                        target=self._retry_start, name="mp-start-retry", daemon=True
                    ).start()
            for name, database in held:
                try:
                    self.listeners.serve(name, database)
                except MemoryPalaceError as exc:
                    log.warning("delivery for %s waits for its database: %s", name, exc.message)
        return {"delivering": True, "served": self.listeners.served(), "recorded": recorded}

    def _record_received(self, received: dict[str | None, tuple[Ids, Ids]]) -> int:
        """Record handed-over wakes of the instances this bridge serves (or holds); a database
        that cannot be reached is skipped with a warning: its wakes may then repeat."""
        mine = {*self.listeners.served(), *(n for n, _ in self._held)}
        count = 0
        for database, kinds in received.items():
            msgs, mems = (
                {i: w for i, who in k.items() if (w := sorted(mine & who))} for k in kinds
            )
            if not msgs and not mems:
                continue
            try:
                db = self.palace.database(database)
                count += delivery.record_received(db, msgs, mems, f"{delivery.bridge_name()}*")
                self.listeners.deadlines_changed(database)
            except MemoryPalaceError as exc:
                log.warning(
                    "_deliver: received wakes of %s not recorded: %s", database, exc.message
                )
        return count


MANAGEMENT_PARAMS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "_health": {},
    "_shutdown": {},
    "_get_instance_routes": {},
    "_cancel": {"id": ((str, int), True)},
    "_subscribe": {"instance": ((str,), True), "database": ((str,), False)},
    "_unsubscribe": {"instance": ((str,), True), "database": ((str,), False)},
    "_deliver": {"received": ((list,), False)},
}
MAX_RECEIVED = 10_000
Ids = dict[int, set[str]]


def _received(items: list[Any]) -> dict[str | None, tuple[Ids, Ids]]:
    """Validate `_deliver`'s received list: {database: ({message id: recipients},
    {memory id: recipients})}."""
    if len(items) > MAX_RECEIVED:
        raise InvalidParams(
            f"_deliver: received lists {len(items)} wakes; at most {MAX_RECEIVED} (the newest "
            "are the ones that matter)",
            param="received",
        )
    out: dict[str | None, tuple[Ids, Ids]] = {}
    for n, item in enumerate(items):
        item = item if isinstance(item, dict) else {}
        kind = "memory_id" if "memory_id" in item else "message_id"
        key, who, database = item.get(kind), item.get("recipients"), item.get("database")
        if not (
            isinstance(key, int)
            and not isinstance(key, bool)
            and isinstance(who, list)
            and all(isinstance(w, str) for w in who)
            and (database is None or isinstance(database, str))
        ):
            raise InvalidParams(
                f'_deliver: received[{n}] must be {{"database"?: str, "message_id" or '
                '"memory_id": int, "recipients": [str]}, as in the new_message and new_memory '
                "events",
                param="received",
            )
        ids = out.setdefault(database, ({}, {}))[kind == "memory_id"]
        ids.setdefault(key, set()).update(who)
    return out


MANAGEMENT = tuple(MANAGEMENT_PARAMS)
INLINE = ("_health", "_cancel")  # answered on the reading thread, never queued
AS_CALLER = ("_subscribe",)  # management methods that act for the request's caller
SUBSCRIBING = ("subscribe", "unsubscribe")  # the actions of a "subscriptions" tool that change them


def _management_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    spec = MANAGEMENT_PARAMS[method]
    for key in params:
        if key not in spec:
            raise InvalidParams(
                f"{method}: unknown parameter {key!r}; expected "
                f"{', '.join(spec) or 'no parameters'}",
                param=key,
            )
    for key, (types_, required) in spec.items():
        value = params.get(key)
        if value is None:
            if required:
                raise InvalidParams(f"{method}: missing required parameter {key!r}", param=key)
            continue
        if isinstance(value, bool) or not isinstance(value, types_):
            raise InvalidParams(
                f"{method}: parameter {key!r} must be {' or '.join(t.__name__ for t in types_)}",
                param=key,
            )
    return dict(params)


def _recover_id(line: bytes) -> Any:
    """The request id of a line that could not be parsed, when one can be read from it, so the
    caller waiting on that id gets its error instead of waiting forever."""
    match = ID_RE.search(line)
    if match is None:
        return None
    try:
        rid = orjson.loads(match.group(1))
    except orjson.JSONDecodeError:
        return None
    return rid if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None


def read_lines(stream: BinaryIO, bridge: Bridge) -> None:
    """Feed request lines to the bridge until EOF or _shutdown; oversized lines get an error
    before they are parsed (config limits.max_request_bytes)."""
    most = bridge.palace.settings.limits.max_request_bytes
    while True:
        line = stream.readline(most + 1)
        if not line:
            return
        if len(line) > most:
            head = line[:4096]
            while not line.endswith(b"\n"):  # discard the rest of the oversized line
                line = stream.readline(1 << 20)
                if not line:
                    break
            bridge.error(
                _recover_id(head),
                "INVALID_REQUEST",
                f"request line longer than {most} bytes (config limits.max_request_bytes); "
                "send smaller requests (store large content in pieces)",
            )
            continue
        line = line.strip()
        if line and not bridge.handle_line(line):
            return


def _protocol_stdout() -> BinaryIO:
    """Keep the real stdout for protocol lines; send every stray write (print, C libs) to stderr."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return out


class Terminated(KeyboardInterrupt):
    """SIGTERM: the plugin stopping its bridge (exit 0, unlike Ctrl-C's 130)."""


def _terminate(_signum: int, _frame: Any) -> None:
    raise Terminated


def _exit_stuck(code: int) -> None:
    """A stop that outlives its grace period is a bug: leave its evidence on stderr, exit."""
    log.error("stopping took over %.0f s; thread stacks follow, exiting", STOP_LIMIT)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    os._exit(code)


def parse_args(argv: list[str] | None) -> Any:
    """--help and --version exit here, before anything is created or served."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="memory-palace-bridge",
        description="The JSON-lines bridge of the OpenClaw plugin: one request per line on "
        "stdin, replies and events on stdout. Started by the plugin; configuration comes from "
        "config.json in the data dir and MEMORY_PALACE_* variables.",
    )
    ap.add_argument("--version", action="version", version=f"memory-palace-bridge {__version__}")
    ap.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data dir holding config.json (default: $MEMORY_PALACE_DATA_DIR or ~/.memory-palace)",
    )
    ap.add_argument(
        "--no-deliver",
        action="store_true",
        default=os.environ.get("MEMORY_PALACE_NO_DELIVER") == "1",
        help="serve calls only: no listener, no replay, nothing marked delivered until a "
        "_deliver request (default: $MEMORY_PALACE_NO_DELIVER=1)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return serve(args)
    except KeyboardInterrupt as exc:  # during start-up: quiet too
        return 0 if isinstance(exc, Terminated) else 130


def serve(args: Any) -> int:
    out = _protocol_stdout()
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("MEMORY_PALACE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGTERM, _terminate)
    try:
        settings = load_settings(args.data_dir)
    except MemoryPalaceError as exc:
        log.error("%s", exc.message)
        out.write(
            orjson.dumps({"ready": False, "version": __version__, "error": exc.to_dict()}) + b"\n"
        )
        out.flush()
        return 2
    bridge = Bridge(Palace(settings), out, deliver=not args.no_deliver)
    clean, code = True, 0
    try:
        bridge.write(bridge.start())
        read_lines(sys.stdin.buffer, bridge)
    except KeyboardInterrupt as exc:
        log.info("terminated")
        code = 0 if isinstance(exc, Terminated) else 130  # Ctrl-C: the shell's 130
    finally:
        stuck = threading.Timer(STOP_LIMIT, _exit_stuck, args=(code,))
        stuck.daemon = True
        stuck.start()
        clean = bridge.shutdown()
        out.flush()
        stuck.cancel()
    if not clean:  # a worker is stuck in a call: don't wait for it at interpreter exit
        log.warning("exiting with requests still running")
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
