"""The one error tree of Memory Palace, and `to_wire()`, the one mapping to a reply.

    MemoryPalaceError            code TOOL_ERROR
    ├── ConfigError              CONFIG_ERROR         bad config file, key or env var
    ├── InvalidParams            INVALID_PARAMS       a bad or unknown parameter or value
    ├── NotFound                 NOT_FOUND            an id or name that does not exist
    │   └── DatabaseMissing      DATABASE_MISSING     a database that does not exist
    ├── Conflict                 CONFLICT             duplicate edge, mixed dimensions, ...
    ├── PermissionDenied         PERMISSION_DENIED    a privilege, grant or file mode is missing
    ├── BackendUnavailable       BACKEND_UNAVAILABLE  database down, connection lost, disk full
    │   └── TransactionAborted   BACKEND_UNAVAILABLE  deadlock / serialization failure (retried)
    └── EmbedderUnavailable      EMBEDDER_UNAVAILABLE embedder failed or mismatches stored rows

Driver exceptions are mapped to these at one boundary (`db/errors.py`). Every message says
what went wrong and how to fix it. Anything else reaching a surface is a bug: INTERNAL_ERROR.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

log = logging.getLogger("memory_palace")

INTERNAL_ERROR = "INTERNAL_ERROR"


class MemoryPalaceError(Exception):
    """Base class; `code` is stable and machine-readable, `data` carries details."""

    code: ClassVar[str] = "TOOL_ERROR"

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data:
            out["data"] = self.data
        return out


class ConfigError(MemoryPalaceError):
    code = "CONFIG_ERROR"


class InvalidParams(MemoryPalaceError):
    code = "INVALID_PARAMS"


class NotFound(MemoryPalaceError):
    code = "NOT_FOUND"


class DatabaseMissing(NotFound):
    code = "DATABASE_MISSING"


class Conflict(MemoryPalaceError):
    code = "CONFLICT"


class PermissionDenied(MemoryPalaceError):
    code = "PERMISSION_DENIED"


class BackendUnavailable(MemoryPalaceError):
    code = "BACKEND_UNAVAILABLE"


class TransactionAborted(BackendUnavailable):
    """PostgreSQL aborted a transaction to break a deadlock or a serialization conflict.
    Nothing was written, so `Palace.call` runs the tool once more before reporting it."""


class EmbedderUnavailable(MemoryPalaceError):
    code = "EMBEDDER_UNAVAILABLE"


def to_wire(exc: BaseException, where: str = "") -> dict[str, Any]:
    """{code, message, data?} for any exception: ours as they are; anything else is a bug,
    logged with its traceback (stderr) and answered as INTERNAL_ERROR without internals."""
    if isinstance(exc, MemoryPalaceError):
        return exc.to_dict()
    log.error("internal error%s", f" in {where}" if where else "", exc_info=exc)
    return {
        "code": INTERNAL_ERROR,
        "message": f"internal error{f' in {where}' if where else ''} ({type(exc).__name__}); "
        "this is a bug: the traceback is in the server's log (stderr)",
    }


__all__ = [
    "INTERNAL_ERROR",
    "BackendUnavailable",
    "ConfigError",
    "Conflict",
    "DatabaseMissing",
    "EmbedderUnavailable",
    "InvalidParams",
    "MemoryPalaceError",
    "NotFound",
    "PermissionDenied",
    "TransactionAborted",
    "to_wire",
]
