"""`piseduce agent init-db|api` as users run them (subprocesses of the real console entry point)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers.agent_helpers import free_port, piseduce_cmd, subprocess_env, wait_http, write_config
from helpers.constants import ROOT, TOKEN
from piseduce.crypto import generate_key_file


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        piseduce_cmd(*args), capture_output=True, text=True, env=subprocess_env(), timeout=timeout
    )


def error_lines(p: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in p.stderr.splitlines() if line.strip()]


def test_init_db_is_idempotent(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    first = run("agent", "init-db", str(cfg))
    assert first.returncode == 0, first.stderr
    assert "tables created" in first.stdout
    second = run("agent", "init-db", str(cfg))
    assert second.returncode == 0, second.stderr
    assert "already up to date" in second.stdout
    assert (tmp_path / "agent.db").is_file()


@pytest.mark.parametrize(
    ("data", "key", "command"),
    [
        ({"auth_token": ["short"]}, "auth_token", "api"),
        ({"auth_token": ["short"]}, "auth_token", "init-db"),
        ({"auth_token": [TOKEN], "node_type": "arduino"}, "node_type", "api"),
        ({"auth_token": [TOKEN], "node_type": "g5k", "key_file": "missing.key"}, "key_file", "api"),
        (None, "malformed JSON", "init-db"),
    ],
)
def test_bad_config_is_one_line(
    tmp_path: Path, data: dict[str, object] | None, key: str, command: str
) -> None:
    cfg = tmp_path / "config_agent.json"
    cfg.write_text(
        json.dumps(data) if data is not None else '{"auth_token": ["0123456789abc"],\n  "port_number": }'
    )
    p = run("agent", command, str(cfg))
    assert p.returncode != 0
    lines = error_lines(p)
    assert len(lines) == 1, p.stderr
    assert str(cfg) in lines[0] and key in lines[0]
    assert "Traceback" not in p.stderr


def test_unknown_key_is_a_warning(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, colour="blue")
    p = run("agent", "init-db", str(cfg))
    assert p.returncode == 0, p.stderr
    assert "WARNING" in p.stderr and "'colour'" in p.stderr


def test_api_refuses_an_uninitialised_database(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    p = run("agent", "api", str(cfg))
    assert p.returncode != 0
    lines = error_lines(p)
    assert len(lines) == 1 and "init-db" in lines[0]


def serve(cfg: Path, port: int, *extra: str) -> None:
    proc = subprocess.Popen(
        piseduce_cmd("agent", "api", str(cfg), *extra),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        try:
            r = wait_http(f"http://127.0.0.1:{port}/api/health", timeout=30)
        except TimeoutError:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
            raise AssertionError(f"the agent did not answer; its output:\n{out}") from None
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        # The spec needs the token (issue 11 #9): 401 without it.
        assert wait_http(f"http://127.0.0.1:{port}/openapi.json").status_code == 401
        token = json.loads(cfg.read_text())["auth_token"][0]
        spec = httpx.get(
            f"http://127.0.0.1:{port}/openapi.json", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).json()
        assert "/api/reservations" in spec["paths"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_api_serves_health(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, port_number=port)
    assert run("agent", "init-db", str(cfg)).returncode == 0
    serve(cfg, port, "--log-format", "json")


@pytest.mark.skipif(
    importlib.util.find_spec("piseduce.agent.drivers.g5k") is None, reason="no g5k driver yet"
)
def test_seed_example_serves_once_the_key_is_there(tmp_path: Path) -> None:
    port = free_port()
    data = (ROOT / "docs" / "examples" / "config_agent.json").read_text().replace("8099", str(port))
    cfg = tmp_path / "config_agent.json"
    cfg.write_text(data)
    p = run("agent", "api", str(cfg))
    assert p.returncode != 0 and "key_file" in error_lines(p)[0]
    generate_key_file(tmp_path / "secret.key")  # what `piseduce webui gen-key` writes, copied here
    assert run("agent", "init-db", str(cfg)).returncode == 0
    serve(cfg, port)


def test_cli_help_lists_commands() -> None:
    p = subprocess.run(
        [sys.executable, "-c", "from piseduce.cli import main; main()", "agent", "--help"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert p.returncode == 0
    for cmd in ("init-db", "api", "exec"):
        assert cmd in p.stdout


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger as it was, given back after a command configured it in-process."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("command", "module", "function"),
    [
        ("exec", "piseduce.agent.engine.executor", "run_executor"),
        ("monitor", "piseduce.agent.monitor", "run_monitor"),
        ("gateway", "piseduce.agent.gateway", "run_gateway"),
    ],
)
@pytest.mark.parametrize(("option", "level"), [((), logging.INFO), (("--log-level", "debug"), logging.DEBUG)])
def test_log_level_option(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    root_logging: logging.Logger,
    command: str,
    module: str,
    function: str,
    option: tuple[str, ...],
    level: int,
) -> None:
    """`--log-level debug` lets the engine's per-event DEBUG lines through; INFO is the default."""
    from typer.testing import CliRunner

    from piseduce.agent import cli

    cfg = write_config(tmp_path)
    assert run("agent", "init-db", str(cfg)).returncode == 0
    seen: list[int] = []

    async def loop(_config: object) -> None:
        seen.append(root_logging.level)

    monkeypatch.setattr(importlib.import_module(module), function, loop)
    result = CliRunner().invoke(cli.app, [command, str(cfg), *option])
    assert result.exit_code == 0, result.output
    assert seen == [level]


def test_log_level_rejects_unknown_level(tmp_path: Path) -> None:
    p = run("agent", "exec", str(write_config(tmp_path)), "--log-level", "loud")
    assert p.returncode != 0 and "loud" in p.stderr


def test_api_workers_keep_the_log_level_and_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_logging: logging.Logger
) -> None:
    """`agent api --workers 2` runs fresh interpreters (uvicorn's factory): each must log at the
    level and in the format the command was given, not the defaults."""
    import uvicorn
    from typer.testing import CliRunner

    from piseduce.agent import app as agent_app
    from piseduce.agent import cli
    from piseduce.logs import JsonFormatter

    cfg = write_config(tmp_path)
    assert run("agent", "init-db", str(cfg)).returncode == 0
    started: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda target, **_kw: started.append(target))
    for env in (agent_app.CONFIG_ENV, agent_app.LOG_LEVEL_ENV, agent_app.LOG_FORMAT_ENV):
        # setenv first: monkeypatch then takes away at the end what the command sets.
        monkeypatch.setenv(env, "")
        monkeypatch.delenv(env)
    result = CliRunner().invoke(
        cli.app, ["api", str(cfg), "--workers", "2", "--log-level", "warning", "--log-format", "json"]
    )
    assert result.exit_code == 0, result.output
    assert started == ["piseduce.agent.app:app_from_env"]
    # What a worker process does on start, with the environment the command left it.
    root_logging.setLevel(logging.INFO)
    root_logging.handlers[:] = []
    agent_app.app_from_env()
    assert root_logging.level == logging.WARNING
    assert [type(h.formatter) for h in root_logging.handlers] == [JsonFormatter]
