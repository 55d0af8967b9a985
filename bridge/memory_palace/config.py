"""Settings: built-in defaults, then `config.json`, then `MEMORY_PALACE_*` variables.

The file is validated by a schema (`ConfigFile`, pydantic): an unknown key is an error with a
"did you mean" suggestion, and a wrong type names the file, the key, what it must be and an
example. `load_settings()` is called by entry points only; everything else receives the
result. Nothing here opens a database or chooses a backend.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.engine import make_url

from .errors import ConfigError

DATABASE_TYPES = {"sqlite": "sqlite", "postgres": "postgres", "postgresql": "postgres"}
EMBEDDERS = ("local", "ollama", "hash")
#: Extension names accepted in `extensions` (the first is the original Memory Palace's name).
EXTENSIONS = ("mcp_server.extensions.db_manager", "db_manager")
ENV_WEIGHTS = {
    "MEMORY_PALACE_WEIGHT_SIMILARITY": "similarity",
    "MEMORY_PALACE_WEIGHT_ACCESS": "access",
    "MEMORY_PALACE_WEIGHT_CENTRALITY": "centrality",
    "MEMORY_PALACE_WEIGHT_RECENCY": "recency",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DatabaseEntry(_Strict):
    type: Literal["sqlite", "postgres", "postgresql"] | None = Field(
        None, description="sqlite or postgres; derived from the URL when omitted"
    )
    url: str = Field(min_length=1, description="sqlite:///path/file.db or postgresql://...")


class AutoLink(_Strict):
    enabled: bool = True
    link_threshold: float = Field(0.75, ge=0, le=1)
    suggest_threshold: float = Field(0.675, ge=0, le=1)
    max_suggestions: int = Field(10, ge=0, le=100)
    same_project_only: bool = True
    # Accepted so the original Memory Palace's config.json loads unchanged; not used here.
    classify_edges: bool = False
    classification_model: str | None = None


class Weights(_Strict):
    """The final blend (normalised to sum 1). Access and centrality default to 0: on
    bench/bench_quality.py every non-zero access weight lost recall quality."""

    similarity: float = Field(1.0, ge=0)
    access: float = Field(0.0, ge=0)
    centrality: float = Field(0.0, ge=0)
    # Recency decay: 0.5 ** (age / recall.half_life_days) on occurred_at (else created_at);
    # foundational memories count as new. Off: bench_quality's memories carry no dates, so it
    # cannot choose a weight.
    recency: float = Field(0.0, ge=0)


class Bm25Params(_Strict):
    k1: float = Field(0.9, gt=0, le=10)
    b: float = Field(0.4, ge=0, le=1)


class FieldWeights(_Strict):
    subject: float = Field(2.0, ge=0, le=10)
    content: float = Field(1.0, ge=0, le=10)
    keywords: float = Field(2.0, ge=0, le=10)


class Recall(_Strict):
    """Ranking parameters; see services/recall.py for the formula."""

    weights: Weights = Weights()
    # None: chosen by the embedder (services/recall.py KEYWORD_DEFAULTS)
    keyword_weight: float | None = Field(None, ge=0, le=100)
    keyword_threshold: float | None = Field(None, ge=0, lt=1)
    identifier_weight: float = Field(1.0, ge=0, le=10)
    half_life_days: float = Field(30.0, gt=0, le=36500)  # of the recency weight
    bm25: Bm25Params = Bm25Params()
    field_weights: FieldWeights = FieldWeights()
    # vector hits per recall when access, centrality or recency weigh in (else the limit is
    # enough: services/recall.py vector_depth)
    candidates: int = Field(100, ge=1, le=1000)
    keyword_candidates: int = Field(500, ge=10, le=10_000)
    # how much of the centre of the memories a filter allows is taken out of the query
    # (services/vectors.py Query; chosen on bench_quality's dev split); 0: plain cosine
    centre_weight: float = Field(0.4, ge=0, le=1)
    document_cache: int = Field(50_000, ge=0, le=10_000_000)
    max_limit: int = Field(100, ge=1, le=1000)
    rrf_k: int | None = Field(None, description="accepted from earlier versions; unused")

    @property
    def fields(self) -> tuple[float, float, float]:
        """(subject, content, keywords) weights, in search_text.memory_fields' order."""
        w = self.field_weights
        return (w.subject, w.content, w.keywords)


class Limits(_Strict):
    """Sizes that are refused with a clear error before any heavy work."""

    max_content_bytes: int = Field(256 * 1024, ge=1024, le=8 * 1024 * 1024)
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)
    max_reply_bytes: int = Field(1024 * 1024, ge=16 * 1024, le=64 * 1024 * 1024)


class Postgres(_Strict):
    """Connections to PostgreSQL, per process and database. The pool keeps at most `pool_size`
    idle connections and opens up to `max_overflow` more under load (closed when returned); a
    call waits up to `pool_timeout` seconds for one. `listen_url` is a direct URL to the same
    server for LISTEN when `url` goes through PgBouncer in transaction mode (each database's
    name replaces the one in it)."""

    pool_size: int = Field(5, ge=1, le=100)
    max_overflow: int = Field(10, ge=0, le=1000)
    pool_timeout: float = Field(30.0, gt=0, le=600)
    listen_url: str | None = Field(None, min_length=1)

    @field_validator("listen_url")
    @classmethod
    def _listen_url(cls, value: str | None) -> str | None:
        scheme = value.split("://", 1)[0].split("+", 1)[0] if value else ""
        if value is not None and scheme not in ("postgres", "postgresql"):
            raise ValueError("must be a postgresql:// URL (LISTEN needs PostgreSQL)")
        return value


class Messaging(_Strict):
    """Push messaging. `ack_rewakes`: how often a recipient that has not acknowledged an
    `ack_within_s` message by its deadline is woken again (one deadline apart) before its sender
    gets an overdue notice; 0 tells the sender at the first deadline."""

    ack_rewakes: int = Field(2, ge=0, le=10)


class Resources(_Strict):
    """What names cost a process. A database (its engine and pool, its caches) and a bridge's
    listener for it, or an instance a bridge serves only because a call ran as it, that nobody
    used for `idle_timeout` seconds is released and comes back on the next use (wakes sent
    meanwhile are replayed then). At most `max_open_databases` databases are open at once; one
    more is refused with an error naming this key."""

    idle_timeout: float = Field(300.0, gt=0, le=86_400)
    max_open_databases: int = Field(32, ge=1, le=10_000)


class Synthesis(_Strict):
    enabled: bool = False  # accepted from the original's config; synthesis needs llm_model


class ConfigFile(_Strict):
    """The schema of config.json. Every key is optional."""

    database: DatabaseEntry | None = None
    databases: dict[str, DatabaseEntry] | None = None
    default_database: str = Field("default", min_length=1)
    auto_create: bool = True  # unknown database names derive and create a database
    token: str | None = None  # this process's identity; env MEMORY_PALACE_TOKEN wins
    require_token: bool = False  # refuse to serve without a valid token (bridge, MCP)
    default_visibility: str = Field("shared", min_length=1)
    extensions: list[Literal[EXTENSIONS]] = []  # type: ignore[valid-type]
    instances: list[str] = ["default"]
    instance_routes: dict[str, dict[str, Any]] = {}
    embedder: Literal["local", "ollama", "hash"] | None = None
    ollama_url: str = "http://localhost:11434"
    embedding_model: str | None = None
    embedding_dimension: int | None = Field(None, gt=0, le=65_536)
    llm_model: str | None = None
    synthesis: Synthesis = Synthesis()
    toon_output: bool = False  # accepted from the original's config; replies are JSON
    auto_link: AutoLink = AutoLink()
    recall: Recall = Recall()
    limits: Limits = Limits()
    postgres: Postgres = Postgres()
    messaging: Messaging = Messaging()
    resources: Resources = Resources()

    @field_validator("instances")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or name != name.strip():
                raise ValueError(f"instance id {name!r} must be non-empty without outer spaces")
        return value


EXAMPLES = {
    "database": '{"type": "postgres", "url": "postgresql://user:pass@localhost:5432/memory_palace"}',
    "databases": '{"work": {"type": "sqlite", "url": "sqlite:///~/.memory-palace/work.db"}}',
    "instances": '["prime", "sandy"]',
    "extensions": '["mcp_server.extensions.db_manager"]',
    "recall": '{"max_limit": 100, "weights": {"similarity": 0.7, "access": 0.15, '
    '"centrality": 0.15}}',
    "auto_link": '{"enabled": true, "link_threshold": 0.75}',
    "limits": '{"max_content_bytes": 262144}',
    "postgres": '{"pool_size": 2, "max_overflow": 3, "listen_url": "postgresql://u:p@db/x"}',
    "messaging": '{"ack_rewakes": 2}',
    "resources": '{"idle_timeout": 300, "max_open_databases": 32}',
    "instance_routes": '{"sandy": {"gateway": "http://127.0.0.1:18789", "token": "..."}}',
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
    auto_create: bool = True
    token: str | None = field(default=None, repr=False)
    require_token: bool = False
    default_visibility: str = "shared"
    extensions: tuple[str, ...] = ()
    instances: tuple[str, ...] = ("default",)
    instance_id: str | None = None
    instance_routes: Mapping[str, Any] = field(default_factory=dict)
    embedder: str = "local"
    ollama_url: str = "http://localhost:11434"
    embedding_model: str | None = None
    embedding_dimension: int | None = None
    llm_model: str | None = None
    auto_link: AutoLink = field(default_factory=AutoLink)
    weights: Mapping[str, float] = field(default_factory=dict)
    recall: Recall = field(default_factory=Recall)
    limits: Limits = field(default_factory=Limits)
    postgres: Postgres = field(default_factory=Postgres)
    messaging: Messaging = field(default_factory=Messaging)
    resources: Resources = field(default_factory=Resources)

    @property
    def max_limit(self) -> int:
        return self.recall.max_limit

    @property
    def default_url(self) -> str:
        return self.databases[self.default_database].url


def default_data_dir(env: Mapping[str, str]) -> Path:
    raw = env.get("MEMORY_PALACE_DATA_DIR")
    return Path(raw).expanduser() if raw else Path.home() / ".memory-palace"


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***: parsed when it parses, else cut at its
    structure (everything between 'user:' and the last '@' is the password), so a scheme
    typo, a bad port or an unescaped '@' in the password never shows the password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _QUERY_PASSWORD.sub(r"\1***", url)
    try:
        parsed = make_url(url)
    except Exception:
        parsed = None
    if parsed is not None and rest.count("@") <= 1:
        shown = parsed.render_as_string(hide_password=parsed.password is not None)
    elif "@" in rest:
        userinfo, host = rest.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        shown = f"{scheme}://{user}{':***' if colon else ''}@{host}"
    else:
        shown = url
    return _QUERY_PASSWORD.sub(r"\1***", shown)


_QUERY_PASSWORD = re.compile(r"((?:^|[?&])password=)[^&]*", re.IGNORECASE)


def type_from_url(url: str) -> str:
    """'sqlite' or 'postgres' for a URL that parses; ConfigError (password masked) otherwise."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        if not url.split(":", 1)[1].startswith("///"):
            raise ConfigError(
                f"SQLite URL {mask_url(url)} must look like sqlite:///path/to/file.db (three "
                "slashes, no user, password or host)"
            )
        return "sqlite"
    if scheme not in ("postgres", "postgresql"):
        raise ConfigError(
            f"unsupported database URL scheme {scheme!r} in {mask_url(url)}: use "
            "sqlite:///path/to/file.db or postgresql://user:pass@host:5432/dbname"
        )
    try:
        make_url(url)
        if url.partition("://")[2].split("?", 1)[0].count("@") > 1:
            raise ValueError("an unescaped @ in the password")
    except Exception as exc:  # sqlalchemy: ArgumentError, or ValueError for a bad port
        reason = str(exc) if "password" in str(exc) else "malformed"
        reason = "the port must be a number" if "int()" in str(exc) else reason
        raise ConfigError(
            f"database URL {mask_url(url)} cannot be parsed ({reason}); use "
            "postgresql://user:pass@host:5432/dbname, with characters such as @ : / in the "
            "password percent-encoded (@ is %40)"
        ) from None
    return "postgres"


def _key(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at `loc` (its last part is the unknown key)."""
    for part in loc[:-1]:
        fields = model.model_fields
        if part not in fields:
            return []
        annotation = fields[part].annotation
        nested = [
            a
            for a in getattr(annotation, "__args__", (annotation,))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def _explain(exc: ValidationError, where: str) -> ConfigError:
    """One ConfigError naming the file, the key, what is wrong and what to write instead."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        key = _key(loc)
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _known_keys(ConfigFile, loc), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown key {key!r}{hint}")
            continue
        example = EXAMPLES.get(str(loc[0]))
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) else f", got {got!r}"
        problems.append(
            f"key {key!r}: {err['msg'].lower()}{shown}"
            + (f'; e.g. "{loc[0]}": {example}' if example else "")
        )
    return ConfigError(
        f"{where}: " + "; ".join(problems), keys=[_key(e["loc"]) for e in exc.errors()]
    )


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        loaded = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc.strerror}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a JSON object at the top level")
    return loaded


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _database(name: str, entry: DatabaseEntry, where: str, key: str, root: Path) -> DatabaseConfig:
    try:
        url_type = type_from_url(entry.url)
    except ConfigError as exc:
        raise ConfigError(f"{where}: key {key}.url: {exc.message}") from None
    db_type = DATABASE_TYPES[entry.type] if entry.type else url_type
    if url_type != db_type:
        raise ConfigError(
            f"{where}: key {key}.type is {db_type!r} but its url is a "
            f"{url_type} URL; make them agree"
        )
    return DatabaseConfig(name, db_type, _absolute(entry.url, root))


def _absolute(url: str, root: Path) -> str:
    """A relative SQLite path is relative to the data dir, never to the current directory."""
    if type_from_url(url) != "sqlite" or not url.startswith("sqlite:///"):
        return url
    path = url[len("sqlite:///") :]
    if path.startswith(("/", "~")) or path == ":memory:" or not path:
        return url
    return f"sqlite:///{root / path}"


def _databases(
    cfg: ConfigFile, where: str, root: Path, env_url: str | None
) -> dict[str, DatabaseConfig]:
    databases = {
        name: _database(name, entry, where, f"databases.{name}", root)
        for name, entry in (cfg.databases or {}).items()
    }
    name = cfg.default_database
    if name not in databases:
        legacy = cfg.database or DatabaseEntry(url=f"sqlite:///{root / 'memories.db'}")
        databases[name] = _database(name, legacy, where, "database", root)
    if env_url:  # wins over both the legacy key and the named default entry
        try:
            databases[name] = DatabaseConfig(name, type_from_url(env_url), env_url)
        except ConfigError as exc:
            raise ConfigError(f"environment: MEMORY_PALACE_DATABASE_URL: {exc.message}") from None
    return databases


def _weights(cfg: ConfigFile, env: Mapping[str, str], where: str) -> dict[str, float]:
    weights = cfg.recall.weights.model_dump()
    for var, key in ENV_WEIGHTS.items():
        if env.get(var):
            try:
                weights[key] = float(env[var])
            except ValueError:
                raise ConfigError(
                    f"environment: {var} must be a number, got {env[var]!r}"
                ) from None
    total = sum(weights.values())
    if total <= 0 or min(weights.values()) < 0:
        raise ConfigError(f"{where}: recall weights must be >= 0 and not all zero")
    return {k: v / total for k, v in weights.items()}


def load_settings(
    data_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read config.json from the data dir (default ~/.memory-palace) and the environment.

    Raises ConfigError naming the file and key on a malformed file or value.
    """
    env = os.environ if env is None else env
    root = (
        Path(data_dir).expanduser() if data_dir is not None else default_data_dir(env)
    ).resolve()
    path = root / "config.json"
    where = str(path) + (" (with overrides)" if overrides else "")
    raw = _merge(_read(path), overrides or {})
    try:
        cfg = ConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise _explain(exc, where) from None
    model = env.get("MEMORY_PALACE_EMBEDDING_MODEL") or cfg.embedding_model
    embedder = env.get("MEMORY_PALACE_EMBEDDER") or cfg.embedder or ("ollama" if model else "local")
    if embedder not in EMBEDDERS:
        raise ConfigError(
            f"environment: MEMORY_PALACE_EMBEDDER is {embedder!r}; use one of "
            f"{', '.join(EMBEDDERS)}"
        )
    ollama_url = env.get("OLLAMA_HOST") or cfg.ollama_url
    if "://" not in ollama_url:
        ollama_url = f"http://{ollama_url}"
    instances = list(cfg.instances)
    instance_id = env.get("MEMORY_PALACE_INSTANCE_ID") or None
    if instance_id and instance_id not in instances:
        instances.append(instance_id)
    return Settings(
        data_dir=root,
        config_path=path,
        databases=_databases(cfg, where, root, env.get("MEMORY_PALACE_DATABASE_URL") or None),
        default_database=cfg.default_database,
        auto_create=cfg.auto_create,
        token=env.get("MEMORY_PALACE_TOKEN") or cfg.token,
        require_token=cfg.require_token,
        default_visibility=cfg.default_visibility,
        extensions=tuple(cfg.extensions),
        instances=tuple(instances),
        instance_id=instance_id,
        instance_routes=dict(cfg.instance_routes),
        embedder=embedder,
        ollama_url=ollama_url,
        embedding_model=model,
        embedding_dimension=cfg.embedding_dimension,
        llm_model=env.get("MEMORY_PALACE_LLM_MODEL") or cfg.llm_model,
        auto_link=cfg.auto_link,
        weights=_weights(cfg, env, where),
        recall=cfg.recall,
        limits=cfg.limits,
        postgres=cfg.postgres,
        messaging=cfg.messaging,
        resources=cfg.resources,
    )
