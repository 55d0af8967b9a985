"""Database URLs: derivation for named databases, masking, and driver normalisation."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.engine import URL, make_url

from ..config import mask_url as mask_url  # declared there; re-exported for db users
from ..config import type_from_url
from ..errors import ConfigError, InvalidParams

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")
#: Names that derive a database (memory_palace_<name>, memories_<name>.db): the characters a
#: PostgreSQL identifier keeps as they are, so 'Work' and 'work' cannot name two databases.
DERIVED_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,47}$")
PG_PREFIX = "memory_palace_"


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidParams(
            f"invalid database name {name!r}: use 1-48 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def sqlite_path(url: str) -> Path:
    """The file behind a sqlite URL; '~' is expanded (sqlite:///~/x.db works)."""
    rest = url.split(":", 1)[1]
    if not rest.startswith("///"):
        raise ConfigError(f"SQLite URL {mask_url(url)} must look like sqlite:///path/to/file.db")
    path = rest[3:].split("?", 1)[0]
    if not path or path == ":memory:":
        raise ConfigError(
            f"SQLite URL {mask_url(url)} must name a file; in-memory databases are not shared"
        )
    return Path(path).expanduser()


def derived_name(default_url: str, url: str) -> str | None:
    """The name that derives `url` from `default_url` (the inverse of derive_url), or None."""
    if type_from_url(url) == "postgres":
        db = pg_database_name(url)
        return db[len(PG_PREFIX) :] if db.startswith(PG_PREFIX) else None
    base, path = sqlite_path(default_url), sqlite_path(url)
    prefix = f"{base.stem}_"
    if path.parent == base.parent and path.stem.startswith(prefix) and path.suffix == base.suffix:
        return path.stem[len(prefix) :]
    return None


def derive_url(default_url: str, name: str) -> str:
    """The URL a named database gets when it is not configured.

    postgresql://h/memory_palace + life -> postgresql://h/memory_palace_life
    sqlite:///dir/memories.db    + life -> sqlite:///dir/memories_life.db
    """
    if not DERIVED_RE.match(name):
        raise InvalidParams(
            f"database name {name!r} cannot derive a database: use 1-48 lowercase letters, "
            "digits or '_' (or configure it in config.json \"databases\" with its own URL)",
            param="database",
        )
    kind = type_from_url(default_url)
    if kind == "postgres":
        parts = urlsplit(default_url)
        dbname = name if name.startswith(PG_PREFIX) else PG_PREFIX + name
        return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))
    path = sqlite_path(default_url)
    return "sqlite:///" + str(path.with_name(f"{path.stem}_{name}{path.suffix or '.db'}"))


def sqlalchemy_url(url: str) -> URL:
    """Normalise to the drivers we ship: psycopg2 for PostgreSQL, stdlib sqlite3."""
    if type_from_url(url) == "sqlite":
        return URL.create("sqlite", database=str(sqlite_path(url)))
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg2")


def pg_database_name(url: str) -> str:
    return make_url(url).database or "postgres"
