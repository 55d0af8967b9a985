"""HTTP wake through OpenClaw gateway hooks: after a message is sent, POST {gateway}/hooks/wake
for each recipient that has an `instance_routes` entry. Fire-and-forget on a background thread.

The wake text names the sender, the message id and the tool to call, never the content.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

log = logging.getLogger("memory_palace.wake")

WAKE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Route:
    """Where to wake an instance: an OpenClaw gateway with hooks enabled."""

    instance: str
    gateway: str
    token: str
    agent_id: str | None = None
    session_key: str | None = None

    @property
    def url(self) -> str:
        """A bare gateway URL gets the default hooks.path (/hooks); a URL with a path is taken
        as the hooks base itself (a custom hooks.path, or a reverse-proxy prefix + hooks.path)."""
        base = self.gateway.rstrip("/")
        return base + "/wake" if urlsplit(base).path else base + "/hooks/wake"


def parse_routes(raw: Mapping[str, Any]) -> dict[str, Route]:
    """config `instance_routes` -> routes; bad entries are logged and skipped, never fatal."""
    routes: dict[str, Route] = {}
    for instance, entry in (raw or {}).items():
        if not isinstance(entry, Mapping):
            log.warning(
                "instance_routes.%s must be an object {gateway, token, agentId?, "
                "sessionKey?}; ignoring it",
                instance,
            )
            continue
        gateway, token = entry.get("gateway"), entry.get("token")
        scheme = urlsplit(gateway).scheme if isinstance(gateway, str) else ""
        if scheme not in ("http", "https") or not isinstance(token, str) or not token:
            log.warning(
                "instance_routes.%s needs gateway (http(s)://host:port) and a non-empty "
                "token (the gateway's hooks.token); ignoring it",
                instance,
            )
            continue
        routes[instance] = Route(
            instance, gateway, token, entry.get("agentId"), entry.get("sessionKey")
        )
    return routes


# What each documented /hooks/wake failure status means for an instance_routes entry.
HTTP_FIXES = {
    400: "the gateway refused the request: agentId must name a configured agent, and a "
    "sessionKey needs hooks.allowRequestSessionKey: true and a matching "
    "hooks.allowedSessionKeyPrefixes entry",
    401: "the route's token must equal the gateway's hooks.token, not its gateway auth token",
    404: "set hooks.enabled: true on the gateway; with a custom hooks.path, end the route's "
    "gateway URL with that path",
    429: "too many failed hook logins: fix the route's token, then wait for Retry-After",
}


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The gateway's `error` field (or a short plain-text body), for the log line."""
    try:
        raw = exc.read(2000)
    except Exception:
        return ""
    try:
        err = orjson.loads(raw).get("error")
        return str(err)[:300] if err else ""
    except (orjson.JSONDecodeError, AttributeError):
        return raw.decode("utf-8", "replace").strip()[:300]


def wake_text(sender: str, message_id: int, recipient: str, tool: str = "message") -> str:
    """The woken agent may be an OpenClaw session, whose own built-in `message` tool is for
    chat channels: so the text also names the plugin's tool, palace_message."""
    alias = " (palace_message in the OpenClaw plugin)" if tool != "palace_message" else ""
    return (
        f"Memory Palace: new message #{message_id} from {sender} for {recipient}. "
        f"Read it with the Memory Palace {tool} tool{alias}: "
        f"action=get, instance_id={recipient}."
    )


class WakeNotifier:
    """Wakes recipients after a send. Never blocks or fails the caller."""

    def __init__(
        self, routes: Mapping[str, Any], *, timeout: float = WAKE_TIMEOUT_S, tool: str = "message"
    ) -> None:
        self.routes = parse_routes(routes)
        self.timeout = timeout
        self.tool = tool
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def targets(self, sender: str, recipient: str, subscribers: Iterable[str] = ()) -> list[Route]:
        """A broadcast wakes every route except the sender's; a direct send its recipient; a
        channel message also the channel's subscribers (each route once)."""
        if recipient == "all":
            return [r for name, r in self.routes.items() if name != sender]
        names = [recipient, *subscribers]
        return [self.routes[n] for n in dict.fromkeys(names) if n in self.routes]

    def request(self, route: Route, sender: str, message_id: int) -> urllib.request.Request:
        body: dict[str, Any] = {
            "text": wake_text(sender, message_id, route.instance, self.tool),
            "mode": "now",
        }
        if route.agent_id:
            body["agentId"] = route.agent_id
        if route.session_key:
            body["sessionKey"] = route.session_key
        return urllib.request.Request(
            route.url,
            data=orjson.dumps(body),
            method="POST",
            headers={"Authorization": f"Bearer {route.token}", "Content-Type": "application/json"},
        )

    def _post(
        self,
        route: Route,
        sender: str,
        message_id: int,
        accepted: Callable[[str], None] | None = None,
    ) -> None:
        try:
            with urllib.request.urlopen(
                self.request(route, sender, message_id), timeout=self.timeout
            ) as resp:
                resp.read()
            log.info("woke %s through %s for message %s", route.instance, route.url, message_id)
            if accepted is not None:
                accepted(route.instance)
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc)
            log.warning(
                "wake of %s via %s failed: HTTP %s%s (%s)",
                route.instance,
                route.url,
                exc.code,
                f": {detail}" if detail else "",
                HTTP_FIXES.get(exc.code, "see the gateway log"),
            )
        except Exception as exc:
            log.warning("wake of %s via %s failed: %s", route.instance, route.url, exc)

    def notify_sent(
        self,
        sender: str,
        recipient: str,
        message_id: int,
        subscribers: Iterable[str] = (),
        accepted: Callable[[str], None] | None = None,
    ) -> list[threading.Thread]:
        """Start one daemon thread per target route; returns them (tests may join).
        `accepted(instance)` runs after a gateway accepted a wake (to record the delivery)."""
        threads = []
        for route in self.targets(sender, recipient, subscribers):
            t = threading.Thread(
                target=self._post,
                args=(route, sender, message_id, accepted),
                name=f"wake-{route.instance}",
                daemon=True,
            )
            t.start()
            threads.append(t)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + threads
        return threads

    def drain(self, timeout: float | None = None) -> None:
        """Wait (bounded) for wakes still in flight, so a shutdown does not drop them."""
        with self._lock:
            pending = list(self._threads)
        for t in pending:
            t.join(timeout=self.timeout if timeout is None else timeout)
