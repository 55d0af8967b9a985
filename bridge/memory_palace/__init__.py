"""Memory Palace: shared, persistent memory and push messaging for AI agents."""

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

__version__ = "0.1.0"

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
