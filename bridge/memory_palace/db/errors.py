"""The one boundary where driver exceptions become ours (`translate_db_errors`).

SQLAlchemy wraps driver errors (`DBAPIError.orig`); each backend maps its driver's errors by
code (PostgreSQL SQLSTATE, SQLite result codes), most specific first. Causes are kept
(`raise ... from exc`) for the log; messages never include SQL text or passwords.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import exc as sa_exc

from ..errors import BackendUnavailable, Conflict, MemoryPalaceError
from .postgres import BACKEND as POSTGRES
from .sqlite import BACKEND as SQLITE

if TYPE_CHECKING:
    from .engine import Database


def translate(exc: BaseException, db: Database | None = None) -> Exception | None:
    """Our error for a driver or SQLAlchemy exception, or None when it is not one."""
    if isinstance(exc, MemoryPalaceError):
        return exc
    if isinstance(exc, sa_exc.TimeoutError):
        where = f" for {db.masked_url}" if db is not None else ""
        return BackendUnavailable(
            f"every pooled database connection{where} is busy (pool timeout); the server is "
            "overloaded or calls are stuck; retry, lower the number of concurrent calls, or "
            "raise config postgres.pool_size / max_overflow / pool_timeout"
        )
    orig = getattr(exc, "orig", None) if isinstance(exc, sa_exc.StatementError) else None
    inner = orig if isinstance(orig, BaseException) else exc
    backends = [db.backend] if db is not None else [POSTGRES, SQLITE]
    for backend in backends:
        mapped = backend.translate(inner, db)
        if mapped is not None:
            return mapped
    if isinstance(exc, sa_exc.IntegrityError):
        return Conflict(f"a database constraint was violated: {str(inner).splitlines()[0]}")
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return BackendUnavailable("the database connection was lost; retry the call")
    return None


@contextmanager
def translate_db_errors(db: Database | None = None) -> Iterator[None]:
    """Re-raise driver exceptions raised inside the block as MemoryPalaceError subclasses."""
    try:
        yield
    except MemoryPalaceError:
        raise
    except Exception as exc:
        mapped = translate(exc, db)
        if mapped is None:
            raise
        raise mapped from exc
