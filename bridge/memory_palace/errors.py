"""The one error tree of Memory Palace. Surfaces map these to their own formats.

    MemoryPalaceError            code TOOL_ERROR
    ├── ConfigError              CONFIG_ERROR         bad config file, key or env var
    ├── InvalidParams            INVALID_PARAMS       a tool got a bad or unknown parameter
    ├── NotFound                 NOT_FOUND            an id or name that does not exist
    ├── Conflict                 CONFLICT             duplicate edge, mixed dimensions, ...
    ├── BackendUnavailable       BACKEND_UNAVAILABLE  database down, pgvector missing, no CREATEDB
    ├── EmbedderUnavailable      EMBEDDER_UNAVAILABLE embedder failed or mismatches stored rows
    └── Timeout                  TIMEOUT

Every message says what went wrong and how to fix it.
"""

from __future__ import annotations

from typing import Any, ClassVar

CODES: dict[str, type[MemoryPalaceError]] = {}


class MemoryPalaceError(Exception):
    """Base class; `code` is stable and machine-readable."""

    code: ClassVar[str] = "TOOL_ERROR"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        CODES[cls.code] = cls

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data:
            out["data"] = self.data
        return out


CODES[MemoryPalaceError.code] = MemoryPalaceError


class ConfigError(MemoryPalaceError):
    code = "CONFIG_ERROR"


class InvalidParams(MemoryPalaceError):
    code = "INVALID_PARAMS"


class NotFound(MemoryPalaceError):
    code = "NOT_FOUND"


class Conflict(MemoryPalaceError):
    code = "CONFLICT"


class BackendUnavailable(MemoryPalaceError):
    code = "BACKEND_UNAVAILABLE"


class EmbedderUnavailable(MemoryPalaceError):
    code = "EMBEDDER_UNAVAILABLE"


class Timeout(MemoryPalaceError):
    code = "TIMEOUT"


__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "Conflict",
    "EmbedderUnavailable",
    "InvalidParams",
    "MemoryPalaceError",
    "NotFound",
    "Timeout",
]
