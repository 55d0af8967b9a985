"""config.json is validated by a schema: unknown keys get a suggestion, wrong types name the
file, the key, what it must be and an example; relative SQLite paths live in the data dir;
no password is ever echoed."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from memory_palace import ConfigError, load_settings


def settings_from(tmp_path: Path, cfg: object):
    (tmp_path / "config.json").write_bytes(orjson.dumps(cfg))
    return load_settings(tmp_path, env={})


@pytest.mark.parametrize(
    "cfg,expected",
    [
        (
            {"databse": {"url": "sqlite:///x.db"}},
            "unknown key 'databse' (did you mean 'database'?)",
        ),
        ({"recall": {"max_limt": 5}}, "unknown key 'recall.max_limt' (did you mean 'max_limit'?)"),
        ({"recall": 5}, "key 'recall': "),
        ({"auto_link": "off"}, "key 'auto_link': "),
        (
            {"recall": {"max_limit": "lots"}},
            "key 'recall.max_limit': input should be a valid integer, got 'lots'",
        ),
        (
            {"recall": {"max_limit": 0}},
            "key 'recall.max_limit': input should be greater than or equal to 1",
        ),
        ({"instances": "prime"}, "key 'instances': input should be a valid list"),
        ({"extensions": ["db_mangler"]}, "key 'extensions.0': input should be "),
        ({"embedder": "bert"}, "key 'embedder': input should be 'local', 'ollama' or 'hash'"),
        (
            {"auto_link": {"link_threshold": 7}},
            "key 'auto_link.link_threshold': input should be less than or equal to 1",
        ),
    ],
)
def test_bad_values_name_file_key_and_fix(tmp_path: Path, cfg: object, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from(tmp_path, cfg)
    message = err.value.message
    assert str(tmp_path / "config.json") in message
    assert expected in message, message


def test_wrong_type_gives_an_example(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'e\.g\. "recall": \{"max_limit": 100'):
        settings_from(tmp_path, {"recall": 5})


def test_passwords_are_never_echoed(tmp_path: Path) -> None:
    for cfg in (
        {"database": {"url": "postgress://bob:s3cret@h/db"}},
        {"database": {"type": "sqlite", "url": "postgresql://bob:s3cret@h/db"}},
        {"databases": {"x": {"url": "mysql://bob:s3cret@h/db"}}},
    ):
        with pytest.raises(ConfigError) as err:
            settings_from(tmp_path, cfg)
        assert "s3cret" not in err.value.message, err.value.message
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path, env={"MEMORY_PALACE_DATABASE_URL": "postgress://u:s3cret@h/d"})
    assert "s3cret" not in err.value.message


def test_relative_sqlite_path_is_in_the_data_dir(tmp_path: Path) -> None:
    s = settings_from(tmp_path, {"database": {"url": "sqlite:///relative.db"}})
    assert s.default_url == f"sqlite:///{tmp_path.resolve() / 'relative.db'}"


def test_the_originals_keys_still_load(tmp_path: Path) -> None:
    s = settings_from(
        tmp_path,
        {
            "database": {"type": "sqlite", "url": "sqlite:///m.db"},
            "synthesis": {"enabled": False},
            "toon_output": True,
            "llm_model": "qwen3:1.7b",
            "auto_link": {"classify_edges": True, "classification_model": "qwen3:0.6b"},
            "instances": ["prime", "sandy"],
            "extensions": ["mcp_server.extensions.db_manager"],
        },
    )
    assert s.instances == ("prime", "sandy") and s.llm_model == "qwen3:1.7b"
