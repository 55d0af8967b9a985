"""Value encodings per backend, in one place: times, string lists, JSON and vectors.

SQLite stores times as ISO-8601 UTC text, lists and JSON as JSON text, vectors as float32
little-endian BLOBs. PostgreSQL uses TIMESTAMPTZ, TEXT[], JSONB and pgvector `vector`.
Services call these and never re-encode values themselves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from .engine import Database


def utcnow() -> datetime:
    return datetime.now(UTC)


def time_param(db: Database, value: datetime | None) -> Any:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value if db.is_postgres else value.astimezone(UTC).isoformat()


def time_out(value: Any) -> str | None:
    """A stored time as ISO-8601 text (UTC) for tool results."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat()
    return str(value)


def list_param(db: Database, value: list[str] | None) -> Any:
    if value is None:
        return None
    return list(value) if db.is_postgres else orjson.dumps(list(value)).decode()


def list_out(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return list(orjson.loads(value))


def json_param(db: Database, value: Any) -> Any:
    if value is None:
        return None
    return orjson.dumps(value).decode()  # PG: bind as text, cast in SQL with CAST(:x AS JSONB)


def json_out(value: Any) -> Any:
    if value is None or isinstance(value, (dict, list)):
        return value
    return orjson.loads(value)


def bool_out(value: Any) -> bool:
    return bool(value)


def vector_param(db: Database, vec: np.ndarray | None) -> Any:
    """Bind value for the embedding column. PG: '[..]' text, cast with CAST(:v AS vector)."""
    if vec is None:
        return None
    arr = np.asarray(vec, dtype=np.float32)
    if db.is_postgres:
        return "[" + ",".join(map(repr, arr.tolist())) + "]"
    return arr.astype("<f4").tobytes()


def vector_out(value: Any) -> np.ndarray | None:
    """A stored embedding (BLOB, pgvector text, or numpy array) as float32."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(value), dtype="<f4").astype(np.float32)
    if isinstance(value, str):
        return np.array(orjson.loads(value), dtype=np.float32)
    return np.asarray(value, dtype=np.float32)


def vector_sql(db: Database, param: str) -> str:
    """SQL expression for a vector bind parameter named `param`."""
    return f"CAST(:{param} AS vector)" if db.is_postgres else f":{param}"


def jsonb_sql(db: Database, param: str) -> str:
    return f"CAST(:{param} AS JSONB)" if db.is_postgres else f":{param}"
