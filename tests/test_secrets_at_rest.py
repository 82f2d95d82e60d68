"""Secrets at rest (issue 11, #4): the deploy form's OS password is sealed with the key file in the
agent database, shown to its owner only while the reservation lasts, erased when it ends; an older
database's clear passwords are sealed or erased by init-db; databases, keys and secrets are 0600
from their creation (folders PiSeduce creates 0700), -wal and -shm included."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.agent_helpers import ADMIN, headers, node_body, piseduce_cmd, subprocess_env, write_config
from piseduce.config import AgentConfig
from piseduce.crypto import decrypt_json, load_fernet

PASSWORD = "Correct-Horse-Battery-7"
ALICE = headers("alice@example.org")


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def raw_params(db: Path) -> dict[int, tuple[str, dict[str, Any], str | None]]:
    """The reservations as the database file holds them (no ORM, no key)."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT id, status, params, credentials FROM reservations").fetchall()
    finally:
        conn.close()
    return {rid: (status, json.loads(params or "{}"), creds) for rid, status, params, creds in rows}


def files_holding(folder: Path, secret: str) -> list[str]:
    """The files of the agent's folder (database, -wal, -shm...) that contain `secret` in clear."""
    needle = secret.encode()
    return [p.name for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


@contextlib.asynccontextmanager
async def agent(config: AgentConfig) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The agent API (ASGI) and its executor, in this process."""
    from piseduce.agent.app import create_app
    from piseduce.agent.engine.executor import Executor

    app = create_app(config)
    state = app.state.agent
    stop = asyncio.Event()
    task = asyncio.create_task(Executor(config, state.sessions, state.driver, "secrets").run_forever(stop))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
            yield c, app
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        state.engine.dispose()


async def wait_status(c: httpx.AsyncClient, rid: int, want: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        body = (await c.get(f"/api/reservations/{rid}", headers=ALICE)).json()
        if body["status"] in want:
            return dict(body)
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


@pytest.fixture
def password_agent(make_agent_config: Callable[..., AgentConfig], tmp_path: Path) -> AgentConfig:
    return make_agent_config(
        driver="helpers.fake_driver:PasswordDriver", fake_log=str(tmp_path / "fake.log"), poll_interval=0.05,
        timeout_scale=0.2, turnaround_minutes=0,
    )


async def test_password_sealed_shown_to_its_owner_erased_at_the_end(
    password_agent: AgentConfig, tmp_path: Path
) -> None:
    db = Path(password_agent.database_url.removeprefix("sqlite:///"))
    async with agent(password_agent) as (c, _app):
        assert (await c.post("/api/admin/nodes", json=node_body("pi-1"), headers=ADMIN)).status_code == 201
        r = await c.post("/api/reservations", json={"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1},
                         headers=ALICE)
        rid = r.json()["reservations"][0]["id"]
        r = await c.post(f"/api/reservations/{rid}/deploy",
                         json={"environment": "tiny", "os_password": PASSWORD}, headers=ALICE)
        assert r.status_code == 202, r.text

        # In the database: a Fernet token of the key file, the password nowhere in clear.
        _status, params, _ = raw_params(db)[rid]
        assert "os_password" not in params and params["environment"] == "tiny"
        secret = decrypt_json(load_fernet(password_agent.key_path), params["_sealed"])
        assert secret == {"os_password": PASSWORD}
        assert files_holding(db.parent, PASSWORD) == []

        # The owner reads it back (Manage shows it); an admin does not, nor the token.
        body = await wait_status(c, rid, {"deployed", "failed"})
        assert body["status"] == "deployed", body
        assert body["params"]["os_password"] == PASSWORD and "_sealed" not in body["params"]
        other = (await c.get(f"/api/reservations/{rid}", headers=ADMIN)).json()
        assert "os_password" not in other["params"] and "_sealed" not in other["params"]
        # The executor had it in memory for the install step.
        digest = hashlib.sha256(PASSWORD.encode()).hexdigest()
        assert f"pi-1 deploy install sha256={digest}" in (tmp_path / "fake.log").read_text()
        assert files_holding(db.parent, PASSWORD) == []

        # Ended: the sealed password is gone from the row, and from the answer.
        assert (await c.post(f"/api/reservations/{rid}/destroy", headers=ALICE)).status_code == 202
        body = await wait_status(c, rid, {"ended"})
        assert "os_password" not in body["params"]
    status, params, creds = raw_params(db)[rid]
    assert status == "ended" and params == {"environment": "tiny", "ssh_keys": []} and creds is None


async def test_a_cancelled_or_expired_reservation_forgets_its_password(password_agent: AgentConfig) -> None:
    from piseduce.agent.models import Reservation
    from piseduce.db import write_session

    db = Path(password_agent.database_url.removeprefix("sqlite:///"))
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)).isoformat()
    async with agent(password_agent) as (c, app):
        for name in ("pi-1", "pi-2"):
            await c.post("/api/admin/nodes", json=node_body(name), headers=ADMIN)
        rids = []
        for name in ("pi-1", "pi-2"):
            r = await c.post("/api/reservations", json={"filters": [{"nodes": [name]}], "duration_hours": 1,
                                                          "start": later}, headers=ALICE)
            rids.append(r.json()["reservations"][0]["id"])
            r = await c.post(f"/api/reservations/{rids[-1]}/deploy",
                             json={"environment": "tiny", "os_password": PASSWORD}, headers=ALICE)
            assert r.status_code == 202 and r.json()["status"] == "scheduled"
        assert all("_sealed" in raw_params(db)[rid][1] for rid in rids)
        # Cancelled by its owner before it started.
        r = await c.post(f"/api/reservations/{rids[0]}/destroy", headers=ALICE)
        assert r.json()["status"] == "cancelled"
        # Whatever path ends a reservation erases it: here a status written by any code.
        with write_session(app.state.agent.sessions) as s:
            row = s.get(Reservation, rids[1])
            assert row is not None
            row.status = "ended"
    rows = raw_params(db)
    for rid in rids:
        assert rows[rid][1] == {"environment": "tiny", "ssh_keys": []}, rows[rid]


def test_init_db_seals_or_erases_what_an_older_version_stored_in_clear(tmp_path: Path) -> None:
    with umask(0o022):
        cfg = write_config(tmp_path, driver="helpers.fake_driver:PasswordDriver")
        run = subprocess.run(piseduce_cmd("agent", "init-db", str(cfg)), env=subprocess_env(),
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
    db = tmp_path / "agent.db"
    # What an older version wrote: the password in clear, kept after the end.
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO nodes (name, ip, status, properties, attrs, present, updated_at) "
                     "VALUES ('pi-1', '', 'available', '{}', '{}', 1, '2030-01-01 00:00:00')")
        for rid, status in ((1, "deployed"), (2, "ended"), (3, "cancelled")):
            conn.execute(
                "INSERT INTO reservations (id, node_name, owner, bin, start, \"end\", busy_until, status, "
                "params, driver_state, connection, error, created_at, updated_at) VALUES "
                "(?, 'pi-1', 'alice@example.org', '', '2030-01-01 00:00:00', '2030-01-01 01:00:00', "
                "'2030-01-01 01:00:00', ?, ?, '{}', '{}', '', '2030-01-01 00:00:00', '2030-01-01 00:00:00')",
                (rid, status, json.dumps({"environment": "tiny", "os_password": f"legacy-{rid}"})),
            )
    conn.close()
    run = subprocess.run(piseduce_cmd("agent", "init-db", str(cfg)), env=subprocess_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "1 sealed with the key file, 2 erased" in run.stdout
    rows = raw_params(db)
    fernet = load_fernet(tmp_path / "secret.key")
    assert decrypt_json(fernet, rows[1][1]["_sealed"]) == {"os_password": "legacy-1"}
    assert rows[2][1] == rows[3][1] == {"environment": "tiny"}
    assert [name for name in files_holding(tmp_path, "legacy-") if name.startswith("agent.db")] == []
    # Idempotent: nothing left to do.
    run = subprocess.run(piseduce_cmd("agent", "init-db", str(cfg)), env=subprocess_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "sealed" not in run.stdout


# ---------------------------------------------------------------- file modes


def test_agent_files_are_private_from_their_creation(tmp_path: Path) -> None:
    from piseduce.agent.app import create_app
    from piseduce.config import load_agent_config

    with umask(0o022):  # the usual umask: files 0644, folders 0755 unless told otherwise
        cfg_path = write_config(tmp_path, db_url="sqlite:///state/db/agent.db", key_file="keys/agent.key")
        run = subprocess.run(piseduce_cmd("agent", "init-db", str(cfg_path)), env=subprocess_env(),
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        config = load_agent_config(cfg_path)
        app = create_app(config)
        try:
            with app.state.agent.sessions() as s, s.begin():  # a write: WAL and shared memory files
                from piseduce.agent.models import Node

                s.add(Node(name="pi-1"))
            db = tmp_path / "state" / "db" / "agent.db"
            for path in (db, db.with_name("agent.db-wal"), db.with_name("agent.db-shm"),
                         tmp_path / "keys" / "agent.key"):
                assert path.exists() and mode(path) == 0o600, (path, oct(mode(path)))
            for folder in (tmp_path / "state", tmp_path / "state" / "db", tmp_path / "keys"):
                assert mode(folder) == 0o700, (folder, oct(mode(folder)))
        finally:
            app.state.agent.engine.dispose()


def test_webui_files_are_private_from_their_creation(tmp_path: Path) -> None:
    from piseduce.config import load_webui_config
    from piseduce.webui.app import create_app

    folder = tmp_path / "webui"
    folder.mkdir()
    config = {"db_url": "sqlite:///data/webui.db", "key_file": "keys/secret.key",
              "secret_file": "keys/session.secret"}
    (folder / "config_webui.json").write_text(json.dumps(config))
    cfg_path = folder / "config_webui.json"
    with umask(0o022):
        for command in ("gen-key", "init-db"):
            run = subprocess.run(piseduce_cmd("webui", command, str(cfg_path)), env=subprocess_env(),
                                 capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stderr
        app = create_app(load_webui_config(cfg_path), health_checks=False)
        try:
            from sqlalchemy import text

            with app.state.engine.begin() as conn:
                conn.execute(text("CREATE TABLE IF NOT EXISTS probe (x INTEGER)"))
            for path in (folder / "data" / "webui.db", folder / "data" / "webui.db-wal",
                         folder / "data" / "webui.db-shm", folder / "keys" / "secret.key",
                         folder / "keys" / "session.secret"):
                assert path.exists() and mode(path) == 0o600, (path, oct(mode(path)))
            for sub in ("data", "keys"):
                assert mode(folder / sub) == 0o700, sub
        finally:
            app.state.engine.dispose()


def test_an_older_world_readable_database_is_tightened(tmp_path: Path) -> None:
    from piseduce.db import make_engine

    db = tmp_path / "old.db"
    sqlite3.connect(db).close()
    os.chmod(db, 0o644)
    make_engine(f"sqlite:///{db}").dispose()
    assert mode(db) == 0o640  # others lose access; a group an administrator chose keeps it


async def test_simulated_boards_cards_are_private(tmp_path: Path) -> None:
    from helpers.rpi_fixtures import running_cluster

    with umask(0o022):
        async with running_cluster(tmp_path, boards=1):
            state = tmp_path / "rpi" / "state"
            cards = list(state.rglob("sdcard.img"))
            assert cards and all(mode(card) == 0o600 for card in cards)
            assert mode(state) == 0o700
