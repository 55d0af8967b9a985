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
    return list(orjson.loads(value))


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
        return np.array(orjson.loads(value), dtype=np.float32)
    return np.asarray(value, dtype=np.float32)


DECODERS = {
    "time": decode_time,
    "strings": decode_strings,
    "json": decode_json,
    "vector": decode_vector,
    "bool": bool,
    "float": float,
}


def decode(kind: str, value: Any) -> Any:
    """A stored value of a column kind as its Python value (None stays None)."""
    if value is None:
        return None
    fn = DECODERS.get(kind)
    return fn(value) if fn else value
