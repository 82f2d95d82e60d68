"""config_agent.json: the seed's example loads unchanged; bad values give one line naming the key
and the file; unknown keys only warn."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from helpers.constants import ROOT
from piseduce.config import ConfigError, load_agent_config
from piseduce.crypto import generate_key_file

EXAMPLES = ROOT / "docs" / "examples"
SEED = Path("/work/shared/seed/using-grid5000-with-piseduce.md")


def copy_example(tmp_path: Path, name: str = "config_agent.json", key: bool = True) -> Path:
    dst = tmp_path / name
    shutil.copy(EXAMPLES / name, dst)
    if key:
        generate_key_file(tmp_path / "secret.key")
    return dst


def test_example_is_exactly_the_seed() -> None:
    text = (EXAMPLES / "config_agent.json").read_text()
    assert text.count('"comments"') == 2
    if SEED.is_file():
        blocks = SEED.read_text().split("```")
        assert any(b.strip() == text.strip() for b in blocks), (
            "docs/examples/config_agent.json differs from the seed"
        )


def test_seed_example_loads_unchanged(tmp_path: Path) -> None:
    cfg = load_agent_config(copy_example(tmp_path))
    assert cfg.auth_token == ["g5ksuperlongtoken1234"]
    assert (cfg.port_number, cfg.node_type, cfg.g5k_site, cfg.iot_site) == (
        8099,
        "g5k",
        "nancy",
        "strasbourg",
    )
    assert cfg.key_path == tmp_path / "secret.key"
    assert cfg.database_url == f"sqlite:///{tmp_path / 'test-g5k.db'}"
    assert cfg.env_path == "/root/environments/"
    assert "comments" not in (cfg.model_extra or {})
    assert cfg.site == "nancy" and cfg.max_duration_hours == 72


def test_raspberry_example_loads_without_key(tmp_path: Path) -> None:
    cfg = load_agent_config(copy_example(tmp_path, "config_agent_raspberry.json", key=False))
    assert cfg.node_type == "raspberry" and cfg.env_path == "environments/"


def test_env_path_slash_tolerated(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text('{"auth_token": ["0123456789"], "env_path": "/srv/envs"}')
    assert load_agent_config(p).env_path == "/srv/envs/"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"auth_token": ["short"]}', "'auth_token'"),
        ('{"auth_token": "x"}', "'auth_token'"),
        ('{"auth_token": []}', "'auth_token'"),
        ('{"auth_token": ["0123456789"], "node_type": "arduino"}', "'node_type'"),
        ('{"auth_token": ["0123456789"], "port_number": 70000}', "'port_number'"),
        ('{"auth_token": ["0123456789"], "port_number": "high"}', "'port_number'"),
        ('{"auth_token": ["0123456789"], "node_type": "g5k"}', "'key_file'"),
        ('{"auth_token": ["0123456789"], "node_type": "iot-lab", "key_file": "nope.key"}', "'key_file'"),
        ('{"auth_token": ["0123456789"],, }', "malformed JSON at line 1"),
        ('{"auth_token": ["0123456789"], "port_number": 1, "port_number": 2}', "'port_number' appears twice"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_bad_configs_one_line(tmp_path: Path, text: str, words: str) -> None:
    p = tmp_path / "config_agent.json"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_agent_config(p)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(p) in msg and words in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_agent_config(tmp_path / "none.json")


def test_unknown_key_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "c.json"
    p.write_text('{"auth_token": ["0123456789"], "colour": "blue"}')
    with caplog.at_level(logging.WARNING):
        cfg = load_agent_config(p)
    assert cfg.port_number == 8090
    assert any("'colour'" in r.getMessage() for r in caplog.records)
