"""Memory Palace: shared, persistent memory and push messaging for AI agents.

The names below are imported on first use (PEP 562), so `import memory_palace` is instant: the
console entry points (`memory_palace.entry`) can take Ctrl-C before the heavy imports run.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Settings": "config",
    "load_settings": "config",
    "BackendUnavailable": "errors",
    "ConfigError": "errors",
    "Conflict": "errors",
    "DatabaseMissing": "errors",
    "EmbedderUnavailable": "errors",
    "InvalidParams": "errors",
    "MemoryPalaceError": "errors",
    "NotFound": "errors",
    "PermissionDenied": "errors",
    "Palace": "palace",
}

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "Conflict",
    "DatabaseMissing",
    "EmbedderUnavailable",
    "InvalidParams",
    "MemoryPalaceError",
    "NotFound",
    "Palace",
    "PermissionDenied",
    "Settings",
    "load_settings",
]

if TYPE_CHECKING:
    from .config import Settings, load_settings
    from .errors import (
        BackendUnavailable,
        ConfigError,
        Conflict,
        DatabaseMissing,
        EmbedderUnavailable,
        InvalidParams,
        MemoryPalaceError,
        NotFound,
        PermissionDenied,
    )
    from .palace import Palace


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'memory_palace' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
