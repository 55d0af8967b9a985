"""Named databases: name -> URL resolution, run-time registration, and the current default."""

from __future__ import annotations

import threading

from ..config import Settings, type_from_url
from ..errors import NotFound
from .urls import check_name, derive_url


class Catalog:
    """Per-Palace view of the named databases. Registration is in memory, never persisted."""

    def __init__(self, settings: Settings) -> None:
        self._lock = threading.Lock()
        self._urls: dict[str, str] = {n: c.url for n, c in settings.databases.items()}
        self._configured = frozenset(self._urls)
        self._base_url = settings.default_url
        self._default = settings.default_database

    @property
    def default(self) -> str:
        return self._default

    def names(self) -> list[str]:
        with self._lock:
            return list(self._urls)

    def is_configured(self, name: str) -> bool:
        return name in self._configured

    def resolve(self, name: str | None = None) -> tuple[str, str]:
        """(name, url). None means the current default; an unknown name is derived and
        registered (postgres: memory_palace_<name>, sqlite: memories_<name>.db)."""
        with self._lock:
            name = self._default if name is None else check_name(name)
            url = self._urls.get(name)
            if url is None:
                url = derive_url(self._base_url, name)
                self._urls[name] = url
            return name, url

    def register(self, name: str, url: str | None = None) -> str:
        check_name(name)
        if url is not None:
            type_from_url(url)
        with self._lock:
            self._urls[name] = url or derive_url(self._base_url, name)
            return self._urls[name]

    def unregister(self, name: str) -> None:
        """Forget a run-time registration (configured databases stay)."""
        with self._lock:
            if name not in self._configured and name != self._default:
                self._urls.pop(name, None)

    def set_default(self, name: str) -> None:
        check_name(name)
        with self._lock:
            if name not in self._urls:
                raise NotFound(
                    f"database {name!r} is not registered; register it first with "
                    "memory_register_database or add it to config.json 'databases'"
                )
            self._default = name
