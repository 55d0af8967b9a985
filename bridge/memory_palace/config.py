"""Settings: built-in defaults, then `config.json`, then `MEMORY_PALACE_*` variables.

`load_settings()` is called by entry points only; everything else receives the result.
Nothing here opens a database or chooses a backend.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .errors import ConfigError

DATABASE_TYPES = {"sqlite": "sqlite", "postgres": "postgres", "postgresql": "postgres"}
EMBEDDERS = ("local", "ollama", "hash")

DEFAULTS: dict[str, Any] = {
    "database": {},
    "default_database": "default",
    "extensions": [],
    "instances": ["default"],
    "instance_routes": {},
    "embedder": None,  # None = "ollama" when an Ollama model is configured, else "local"
    "ollama_url": "http://localhost:11434",
    "embedding_model": None,
    "embedding_dimension": None,
    "llm_model": None,
    # Accepted so the original Memory Palace's config.json loads unchanged; not used here.
    "synthesis": {"enabled": False},
    "toon_output": False,
    "auto_link": {
        "enabled": True,
        "link_threshold": 0.75,
        "suggest_threshold": 0.675,
        "max_suggestions": 10,
        "same_project_only": True,
    },
    "recall": {
        "weights": {"similarity": 0.7, "access": 0.15, "centrality": 0.15},
        "rrf_k": 60,
        "max_limit": 100,
    },
}

ENV_WEIGHTS = {
    "MEMORY_PALACE_WEIGHT_SIMILARITY": "similarity",
    "MEMORY_PALACE_WEIGHT_ACCESS": "access",
    "MEMORY_PALACE_WEIGHT_CENTRALITY": "centrality",
}


@dataclass(frozen=True)
class DatabaseConfig:
    name: str
    type: str  # "sqlite" | "postgres"
    url: str


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    config_path: Path
    databases: Mapping[str, DatabaseConfig]
    default_database: str
    extensions: tuple[str, ...] = ()
    instances: tuple[str, ...] = ("default",)
    instance_id: str | None = None
    instance_routes: Mapping[str, Any] = field(default_factory=dict)
    embedder: str = "local"
    ollama_url: str = "http://localhost:11434"
    embedding_model: str | None = None
    embedding_dimension: int | None = None
    llm_model: str | None = None
    auto_link: Mapping[str, Any] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)
    rrf_k: int = 60
    max_limit: int = 100
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def default_url(self) -> str:
        return self.databases[self.default_database].url


def default_data_dir(env: Mapping[str, str]) -> Path:
    raw = env.get("MEMORY_PALACE_DATA_DIR")
    return Path(raw).expanduser() if raw else Path.home() / ".memory-palace"


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def type_from_url(url: str) -> str:
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme == "sqlite":
        return "sqlite"
    if scheme in ("postgres", "postgresql"):
        return "postgres"
    raise ConfigError(
        f"unsupported database URL scheme {scheme!r} in {url!r}: "
        "use sqlite:///path/to/file.db or postgresql://user:pass@host:5432/dbname"
    )


def _db_entry(name: str, entry: Any, where: str, key: str) -> DatabaseConfig:
    if not isinstance(entry, Mapping):
        raise ConfigError(
            f'{where}: key {key!r} must be an object like {{"type": ..., "url": ...}}'
        )
    url = entry.get("url")
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where}: key {key}.url must be a database URL string")
    raw_type = entry.get("type") or type_from_url(url)
    if not isinstance(raw_type, str) or raw_type.lower() not in DATABASE_TYPES:
        raise ConfigError(f'{where}: key {key}.type is {raw_type!r}; use "sqlite" or "postgres"')
    db_type = DATABASE_TYPES[raw_type.lower()]
    if type_from_url(url) != db_type:
        raise ConfigError(f"{where}: key {key}.type is {db_type!r} but its url is {url!r}")
    return DatabaseConfig(name=name, type=db_type, url=url)


def _number(value: Any, where: str, key: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}") from None


def load_settings(
    data_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read config.json from the data dir (default ~/.memory-palace) and the environment.

    Raises ConfigError naming the file and key on a malformed file or value.
    """
    env = os.environ if env is None else env
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir(env)
    root = root.resolve()
    path = root / "config.json"
    where = str(path)
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{where} must hold a JSON object at the top level")
        raw = loaded
    cfg = _merge(DEFAULTS, raw)
    if overrides:
        cfg = _merge(cfg, overrides)
        where = f"{where} (with overrides)"

    default_name = cfg.get("default_database") or "default"
    if not isinstance(default_name, str):
        raise ConfigError(f"{where}: key default_database must be a string")

    env_url = env.get("MEMORY_PALACE_DATABASE_URL") or None
    databases: dict[str, DatabaseConfig] = {}
    named = cfg.get("databases")
    if named is not None:
        if not isinstance(named, Mapping):
            raise ConfigError(f"{where}: key databases must be an object of name -> {{type, url}}")
        for name, entry in named.items():
            databases[name] = _db_entry(name, entry, where, f"databases.{name}")
    legacy = cfg.get("database") or {}
    if default_name not in databases:
        url = legacy.get("url") if isinstance(legacy, Mapping) else None
        if url is None:
            url = f"sqlite:///{root / 'memories.db'}"
            legacy = {"url": url}
        databases[default_name] = _db_entry(default_name, legacy, where, "database")
    if env_url:
        # The env var wins over both the legacy key and the named default entry.
        databases[default_name] = DatabaseConfig(default_name, type_from_url(env_url), env_url)

    embedder = env.get("MEMORY_PALACE_EMBEDDER") or cfg.get("embedder")
    model = env.get("MEMORY_PALACE_EMBEDDING_MODEL") or cfg.get("embedding_model")
    if embedder is None:
        embedder = "ollama" if model else "local"
    if embedder not in EMBEDDERS:
        raise ConfigError(
            f"{where}: key embedder is {embedder!r}; use one of {', '.join(EMBEDDERS)}"
        )
    dim = cfg.get("embedding_dimension")
    if dim is not None and (not isinstance(dim, int) or dim <= 0):
        raise ConfigError(f"{where}: key embedding_dimension must be a positive integer")

    ollama_url = env.get("OLLAMA_HOST") or cfg.get("ollama_url")
    if ollama_url and "://" not in ollama_url:
        ollama_url = f"http://{ollama_url}"

    weights_cfg = cfg["recall"].get("weights", {})
    weights = {
        k: _number(weights_cfg.get(k, 0.0), where, f"recall.weights.{k}")
        for k in ("similarity", "access", "centrality")
    }
    for var, key in ENV_WEIGHTS.items():
        if env.get(var):
            weights[key] = _number(env[var], "environment", var)
    total = sum(weights.values())
    if total <= 0:
        raise ConfigError(f"{where}: recall weights must not all be zero")
    weights = {k: v / total for k, v in weights.items()}

    instances = list(cfg.get("instances") or [])
    instance_id = env.get("MEMORY_PALACE_INSTANCE_ID") or None
    if instance_id and instance_id not in instances:
        instances.append(instance_id)
    routes = cfg.get("instance_routes") or {}
    if not isinstance(routes, Mapping):
        raise ConfigError(f"{where}: key instance_routes must be an object of instance -> route")
    extensions = cfg.get("extensions") or []
    if not isinstance(extensions, list) or not all(isinstance(e, str) for e in extensions):
        raise ConfigError(f"{where}: key extensions must be a list of strings")

    return Settings(
        data_dir=root,
        config_path=path,
        databases=databases,
        default_database=default_name,
        extensions=tuple(extensions),
        instances=tuple(instances),
        instance_id=instance_id,
        instance_routes=dict(routes),
        embedder=embedder,
        ollama_url=ollama_url or "http://localhost:11434",
        embedding_model=model,
        embedding_dimension=dim,
        llm_model=env.get("MEMORY_PALACE_LLM_MODEL") or cfg.get("llm_model"),
        auto_link=dict(cfg["auto_link"]),
        weights=weights,
        rrf_k=int(cfg["recall"].get("rrf_k", 60)),
        max_limit=int(cfg["recall"].get("max_limit", 100)),
        raw=cfg,
    )
