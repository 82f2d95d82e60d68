"""Shared fixtures: agent configs and databases, an ASGI client of the agent API with the fake
driver, and throwaway PostgreSQL databases; the other fixture modules as plugins."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.agent_helpers import ADMIN, node_body, write_config
from piseduce.config import AgentConfig, load_agent_config

# The shared fixtures and hooks, for every test (tests/helpers/; `pythonpath` in pyproject.toml).
pytest_plugins = [
    "helpers.timeout_hooks",
    "helpers.webui_fixtures",
    "helpers.g5k_fixtures",
    "helpers.sequences_fixtures",
    "helpers.switch_fixtures",
    "helpers.admin_infra_fixtures",
]

PG_ENV = "PISEDUCE_PG_URL"


@pytest.fixture
def make_agent_config(tmp_path: Path) -> Callable[..., AgentConfig]:
    """Factory: a config file in a fresh folder (SQLite by default), its database migrated."""
    from piseduce import db

    counter = iter(range(1000))

    def make(db_url: str | None = None, *, key_file: bool = True, **extra: Any) -> AgentConfig:
        from piseduce.crypto import generate_key_file

        folder = tmp_path / f"agent{next(counter)}"
        folder.mkdir()
        if key_file:
            # The key the webui would generate (g5k and iot-lab agents refuse to start without it).
            generate_key_file(folder / str(extra.get("key_file", "secret.key")))
        cfg = load_agent_config(write_config(folder, db_url, **extra))
        db.upgrade("agent", cfg.database_url)
        return cfg

    return make


@pytest.fixture
def agent_config(make_agent_config: Callable[..., AgentConfig]) -> AgentConfig:
    return make_agent_config()


@pytest.fixture
def agent_app(agent_config: AgentConfig) -> Iterator[Any]:
    from piseduce.agent.app import create_app

    app = create_app(agent_config)
    yield app
    app.state.agent.engine.dispose()


@pytest.fixture
async def client(agent_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=agent_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as c:
        yield c


@pytest.fixture
async def nodes(client: httpx.AsyncClient) -> list[str]:
    """Six registered nodes: pi-1..pi-4 are RPI4B (4 GB), pi-5, pi-6 are RPI3B+ (1 GB)."""
    names = []
    for i in range(1, 7):
        model = "RPI4B" if i <= 4 else "RPI3B+"
        body = node_body(f"pi-{i}", model, memory_gb=4 if i <= 4 else 1)
        r = await client.post("/api/admin/nodes", json=body, headers=ADMIN)
        assert r.status_code == 201, r.text
        names.append(body["name"])
    return names


def _pg_admin_url() -> str | None:
    url = os.environ.get(PG_ENV)
    if url:
        return url
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{PG_ENV} is not set: in CI the PostgreSQL tests must run (./run test starts a cluster)")
    pytest.skip(
        f"{PG_ENV} not set (./run test starts a throwaway PostgreSQL cluster when its binaries exist)"
    )
    return None


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty database on the cluster named by PISEDUCE_PG_URL, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin_url = _pg_admin_url()
    assert admin_url is not None
    name = f"piseduce_test_{uuid.uuid4().hex[:12]}"
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
