"""After the copy: are the copied rows in the target, and does a sample of them read back
exactly as the source held them (a checksum over a canonical form, per column kind)?"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import orjson
from psycopg2 import sql

from ..db.postgres import BACKEND as POSTGRES
from ..db.tables import Table
from ..db.values import as_utc, decode_vector

KEY_TYPES = {"id": "bigint", "ref": "bigint", "int": "integer", "text": "text"}


def count_present(cur: Any, table: Table, keys: list[Any]) -> int:
    """How many of `keys` (a value per row, a tuple for composite keys) the target holds."""
    if not keys:
        return 0
    kinds = table.kinds(table.key)
    columns = list(zip(*keys, strict=True)) if len(table.key) > 1 else [keys]
    arrays = sql.SQL(", ").join(
        sql.SQL("%s::{}[]").format(sql.SQL(KEY_TYPES[kinds[k]])) for k in table.key
    )
    names = sql.SQL(", ").join(sql.Identifier(f"k{i}") for i in range(len(table.key)))
    on = sql.SQL(" AND ").join(
        sql.SQL("x.{} = k.{}").format(sql.Identifier(k), sql.Identifier(f"k{i}"))
        for i, k in enumerate(table.key)
    )
    query = sql.SQL("SELECT count(*) FROM {t} x JOIN unnest({a}) AS k({n}) ON {on}").format(
        t=sql.Identifier(table.name), a=arrays, n=names, on=on
    )
    cur.execute(query, [list(c) for c in columns])
    return int(cur.fetchone()[0])


def _canonical_value(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "time":
        return as_utc(value).isoformat()
    if kind == "vector":
        vec = np.asarray(decode_vector(value), dtype="<f4")
        return hashlib.sha256(vec.tobytes()).hexdigest()
    if kind == "json":
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if kind == "strings":
        return list(value)
    if kind == "float":
        return float(value)
    return value


def canonical(table: Table, row: tuple[Any, ...]) -> bytes:
    """A source row (Python values) and the same row read back from PostgreSQL (vectors as
    text) give the same bytes."""
    return orjson.dumps(
        [_canonical_value(c.kind, v) for c, v in zip(table.columns, row, strict=True)]
    )


def checksum(cur: Any, table: Table, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Compare a sample of source rows with the same rows read back from the target."""
    if not rows:
        return {"ok": True, "sampled": 0}
    key_index = [table.names.index(k) for k in table.key]
    cond = " AND ".join(f"{k} = %s" for k in table.key)
    query = f"SELECT {POSTGRES.select_list(table)} FROM {table.name} WHERE {cond}"
    src_digest = hashlib.sha256()
    dst_digest = hashlib.sha256()
    mismatched: list[Any] = []
    for row in rows:
        key = tuple(row[i] for i in key_index)
        cur.execute(query, key)
        got = cur.fetchone()
        a = canonical(table, row)
        b = canonical(table, tuple(got)) if got else b"<missing>"
        src_digest.update(a)
        dst_digest.update(b)
        if a != b and len(mismatched) < 5:
            mismatched.append(key[0] if len(key) == 1 else list(key))
    ok = src_digest.digest() == dst_digest.digest()
    return {
        "ok": ok,
        "sampled": len(rows),
        "sha256": src_digest.hexdigest()[:16],
        **({} if ok else {"mismatched": mismatched}),
    }
