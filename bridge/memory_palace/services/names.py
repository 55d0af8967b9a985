"""Instance and channel names: usable as PostgreSQL NOTIFY channels `memory_palace_msg_<name>`."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidParams

CHANNEL_PREFIX = "memory_palace_msg_"
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL NAMEDATALEN - 1; longer channel names are truncated
MAX_NAME_BYTES = MAX_IDENTIFIER_BYTES - len(CHANNEL_PREFIX.encode())
BROADCAST = "all"
CHANNEL_ONLY = "#"  # to_instance of a message posted only to a channel is "#<channel>"


def check_name(value: Any, what: str) -> str:
    """An instance or channel name usable as `memory_palace_msg_<name>` (≤ 63 bytes)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidParams(f"{what} must be a non-empty name, e.g. 'prime'", param=what)
    if value != value.strip():
        raise InvalidParams(
            f"{what} {value!r} has leading or trailing spaces; remove them", param=what
        )
    if "\x00" in value:
        raise InvalidParams(f"{what} must not contain NUL characters", param=what)
    size = len(value.encode())
    if size > MAX_NAME_BYTES:
        raise InvalidParams(
            f"{what} {value[:20]!r}... is {size} bytes; with the prefix {CHANNEL_PREFIX!r} a "
            f"channel name may be at most {MAX_IDENTIFIER_BYTES} bytes, so use at most "
            f"{MAX_NAME_BYTES} bytes",
            param=what,
        )
    if value.startswith(CHANNEL_ONLY):
        raise InvalidParams(
            f"{what} {value!r} must not start with {CHANNEL_ONLY!r} (reserved for "
            "channel-only messages)",
            param=what,
        )
    return value


def pg_channel(name: str) -> str:
    """The PostgreSQL NOTIFY channel for an instance or channel name."""
    return CHANNEL_PREFIX + name
