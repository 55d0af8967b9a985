"""Named databases: name -> URL resolution, run-time registration, discovery, and the current
default. An unknown name derives a database from the default one (the guide's rule); with
config `auto_create: false` only names that exist already (configured, registered, or found on
the server / beside the default file) resolve."""

from __future__ import annotations

import threading

from ..config import Settings, type_from_url
from ..errors import NotFound
from .engine import backend_for
from .urls import check_name, derive_url, derived_name


class Catalog:
    """Per-Palace view of the named databases. Registration is in memory, never persisted."""

    def __init__(self, settings: Settings) -> None:
        self._lock = threading.Lock()
        self._urls: dict[str, str] = {n: c.url for n, c in settings.databases.items()}
        self._configured = frozenset(self._urls)
        self._base_url = settings.default_url
        self._default = settings.default_database
        self.auto_create = settings.auto_create

    @property
    def default(self) -> str:
        return self._default

    def names(self) -> list[str]:
        with self._lock:
            return list(self._urls)

    def is_configured(self, name: str) -> bool:
        return name in self._configured

    def discovered(self) -> dict[str, str]:
        """Existing databases a derived name leads to: {name: url} (nothing is created)."""
        out = {}
        for url in backend_for(self._base_url).discover(self._base_url):
            name = derived_name(self._base_url, url)
            if name:
                out[name] = url
        return out

    def resolve(self, name: str | None = None) -> tuple[str, str]:
        """(name, url). None means the current default; an unknown name is derived and
        registered (postgres: memory_palace_<name>, sqlite: memories_<name>.db).

        Raises NotFound for an unknown name that does not exist yet when auto_create is off.
        """
        with self._lock:
            name = self._default if name is None else check_name(name)
            url = self._urls.get(name)
            if url is not None:
                return name, url
            url = derive_url(self._base_url, name)
        if not self.auto_create and name not in self.discovered():
            known = sorted(set(self.names()) | set(self.discovered()))
            raise NotFound(
                f"database {name!r} does not exist and auto_create is off (config); known "
                f"databases: {', '.join(known)}. Check the name, or register it with "
                "memory_register_database.",
                database=name,
            )
        with self._lock:
            return name, self._urls.setdefault(name, url)

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
