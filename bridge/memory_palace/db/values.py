"""Stored values as Python values, for every backend: decoders accept both backends'
representations (see the kinds table in tables.py). Encoding is per backend (`Backend.encode`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def decode_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    return as_utc(datetime.fromisoformat(str(value)))


def iso(value: Any) -> str | None:
    """A stored time as ISO-8601 UTC text, for tool results."""
    dt = decode_time(value)
    return None if dt is None else dt.isoformat()


def decode_strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    loaded = orjson.loads(value)
    if isinstance(loaded, list):
        return loaded
    if loaded is None:
        return []
    if isinstance(loaded, str):  # a lone JSON string, as older writers stored one value
        return [loaded]
    raise ValueError(f"not a JSON array: {str(value)[:40]!r}")


def decode_json(value: Any) -> Any:
    if value is None or isinstance(value, (dict, list)):
        return value
    return orjson.loads(value)


def decode_vector(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(value), dtype="<f4").astype(np.float32)
    if isinstance(value, str):
        loaded = orjson.loads(value)
        return None if loaded is None else np.array(loaded, dtype=np.float32)
    return np.asarray(value, dtype=np.float32)


_TRUE = frozenset(("1", "true", "t", "yes", "y", "on"))
_FALSE = frozenset(("0", "false", "f", "no", "n", "off"))


def decode_bool(value: Any) -> bool:
    """0/1, a bool, or text such as 'true'/'0' (SQLite stores whatever it was given)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"not a boolean: {value[:40]!r}")
    return bool(value)


def decode_int(value: Any) -> int:
    """An int, also from an integral float or digit text (SQLite's loose column types)."""
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    raise ValueError(f"not an integer: {str(value)[:40]!r}")


DECODERS = {
    "time": decode_time,
    "strings": decode_strings,
    "json": decode_json,
    "vector": decode_vector,
    "bool": decode_bool,
    "float": float,
    "int": decode_int,
    "id": decode_int,
    "ref": decode_int,
}


def decode(kind: str, value: Any) -> Any:
    """A stored value of a column kind as its Python value (None stays None)."""
    if value is None:
        return None
    fn = DECODERS.get(kind)
    return fn(value) if fn else value
