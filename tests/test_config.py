from pathlib import Path

import orjson
import pytest
from memory_palace import ConfigError, load_settings
from memory_palace.db.urls import derive_url, mask_url


def write(tmp_path: Path, cfg: object) -> Path:
    (tmp_path / "config.json").write_bytes(orjson.dumps(cfg))
    return tmp_path


def test_defaults_use_sqlite_in_data_dir(tmp_path: Path) -> None:
    s = load_settings(tmp_path, env={})
    assert s.default_database == "default"
    assert s.default_url == f"sqlite:///{tmp_path.resolve() / 'memories.db'}"
    assert s.embedder == "local"


def test_data_dir_from_env(tmp_path: Path) -> None:
    write(tmp_path, {"database": {"type": "postgres", "url": "postgresql://u@h/memory_palace"}})
    s = load_settings(env={"MEMORY_PALACE_DATA_DIR": str(tmp_path)})
    assert s.default_url == "postgresql://u@h/memory_palace"
    assert s.databases["default"].type == "postgres"


def test_legacy_database_key(tmp_path: Path) -> None:
    write(
        tmp_path, {"database": {"type": "postgres", "url": "postgresql://u:p@h:5432/memory_palace"}}
    )
    s = load_settings(tmp_path, env={})
    assert list(s.databases) == ["default"]
    assert s.databases["default"].url == "postgresql://u:p@h:5432/memory_palace"


def test_named_databases_and_default(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "databases": {
                "main": {"type": "postgres", "url": "postgresql://h/memory_palace"},
                "life": {"type": "sqlite", "url": "sqlite:////tmp/life.db"},
            },
            "default_database": "main",
        },
    )
    s = load_settings(tmp_path, env={})
    assert s.default_database == "main"
    assert s.databases["life"].type == "sqlite"


@pytest.mark.parametrize("named", [False, True])
def test_env_url_overrides_default_in_both_modes(tmp_path: Path, named: bool) -> None:
    cfg: dict = {"database": {"type": "sqlite", "url": "sqlite:////tmp/a.db"}}
    if named:
        cfg["databases"] = {
            "default": {"type": "sqlite", "url": "sqlite:////tmp/a.db"},
            "work": {"type": "sqlite", "url": "sqlite:////tmp/w.db"},
        }
    write(tmp_path, cfg)
    s = load_settings(
        tmp_path, env={"MEMORY_PALACE_DATABASE_URL": "postgresql://x@y/memory_palace"}
    )
    assert s.default_url == "postgresql://x@y/memory_palace"
    assert s.databases["default"].type == "postgres"
    if named:
        assert s.databases["work"].url == "sqlite:////tmp/w.db"


def test_malformed_config_names_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path, env={})
    assert str(tmp_path / "config.json") in str(err.value)


def test_unknown_database_type_names_key(tmp_path: Path) -> None:
    write(tmp_path, {"databases": {"life": {"type": "mysql", "url": "mysql://h/db"}}})
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path, env={})
    assert "databases.life" in str(err.value) and "config.json" in str(err.value)


def test_unknown_scheme_is_clear() -> None:
    with pytest.raises(ConfigError, match="unsupported database URL scheme 'mysql'"):
        derive_url("mysql://h/db", "life")


def test_instance_id_env_appended(tmp_path: Path) -> None:
    s = load_settings(tmp_path, env={"MEMORY_PALACE_INSTANCE_ID": "prime"})
    assert s.instance_id == "prime" and "prime" in s.instances


def test_weights_from_env_are_normalised(tmp_path: Path) -> None:
    s = load_settings(
        tmp_path,
        env={
            "MEMORY_PALACE_WEIGHT_SIMILARITY": "2",
            "MEMORY_PALACE_WEIGHT_ACCESS": "1",
            "MEMORY_PALACE_WEIGHT_CENTRALITY": "1",
        },
    )
    assert s.weights == {"similarity": 0.5, "access": 0.25, "centrality": 0.25, "recency": 0.0}


@pytest.mark.parametrize(
    "base,name,expected",
    [
        (
            "postgresql://localhost/memory_palace",
            "life",
            "postgresql://localhost/memory_palace_life",
        ),
        (
            "postgresql://u:p@h:5432/memory_palace",
            "memory_palace_work",
            "postgresql://u:p@h:5432/memory_palace_work",
        ),
        (
            "postgresql://postgres:@/postgres?host=/tmp/s",
            "life",
            "postgresql://postgres:@/memory_palace_life?host=/tmp/s",
        ),
        ("sqlite:///path/memories.db", "life", "sqlite:///path/memories_life.db"),
        ("sqlite:////abs/dir/memories.db", "work", "sqlite:////abs/dir/memories_work.db"),
    ],
)
def test_derivation(base: str, name: str, expected: str) -> None:
    assert derive_url(base, name) == expected


def test_mask_url_parses() -> None:
    assert mask_url("postgresql://bob:s3cret@h:5432/db") == "postgresql://bob:***@h:5432/db"
    # a password equal to another part of the URL must not mangle it
    assert mask_url("postgresql://db:db@db/db") == "postgresql://db:***@db/db"
