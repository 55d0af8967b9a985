"""Shared fixtures: a real PostgreSQL (pgserver or MEMORY_PALACE_TEST_PG_URL), SQLite files in
tmp dirs, and palaces over both. The environment is cleaned so a developer's shell can't leak in."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from memory_palace import Palace, load_settings
from memory_palace.db.engine import dispose_engines
from memory_palace.embeddings import HashingEmbedder
from sqlalchemy.engine import make_url

PASSTHROUGH = {"MEMORY_PALACE_TEST_PG_URL"}


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if (key.startswith("MEMORY_PALACE_") and key not in PASSTHROUGH) or key == "OLLAMA_HOST":
            monkeypatch.delenv(key, raising=False)


@pytest.fixture(autouse=True)
def _dispose_engines():
    yield
    dispose_engines()


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """URL of a PostgreSQL superuser connection to the maintenance database."""
    url = os.environ.get("MEMORY_PALACE_TEST_PG_URL")
    if url:
        return url
    import pgserver

    root = Path(tempfile.mkdtemp(prefix="mp-pg-"))
    server = pgserver.get_server(root, cleanup_mode="delete")
    yield server.get_uri()
    dispose_engines()
    server.cleanup()


def pg_url_for(server_url: str, dbname: str) -> str:
    return make_url(server_url).set(database=dbname).render_as_string(hide_password=False)


@pytest.fixture
def pg_url(pg_server_url: str) -> str:
    """A URL to a fresh (not yet created) database; the engine auto-creates it."""
    return pg_url_for(pg_server_url, f"mp_test_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'memories.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest) -> str:
    fixture = "pg_url" if backend == "postgres" else "sqlite_url"
    return request.getfixturevalue(fixture)


@pytest.fixture
def make_palace(tmp_path: Path) -> Callable[..., Palace]:
    """Build a Palace over a data dir holding the given config.json (hash embedder)."""
    counter = iter(range(1000))

    def make(
        url: str | None = None,
        embedder: Any = None,
        env: dict[str, str] | None = None,
        **config: Any,
    ) -> Palace:
        data_dir = tmp_path / f"data{next(counter)}"
        data_dir.mkdir()
        if url is not None and "databases" not in config:
            config.setdefault("database", {"url": url})
        config.setdefault("embedder", "hash")
        (data_dir / "config.json").write_bytes(orjson.dumps(config))
        settings = load_settings(data_dir, env=env or {})
        return Palace(settings, embedder=embedder or HashingEmbedder(384))

    return make


@pytest.fixture
def palace(make_palace: Callable[..., Palace], db_url: str) -> Palace:
    return make_palace(db_url)
