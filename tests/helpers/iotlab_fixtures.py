"""Shared helpers of the IoT-LAB tests: an emulator served on a free loopback port in a thread,
two testbed accounts, small ELF firmware files made at run time, and an agent config for them."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import secrets
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from piseduce.agent.drivers.base import Driver, NodeView, ReservationView, StepContext, StepError
from piseduce.config import AgentConfig
from piseduce.crypto import generate_key_file
from piseduce.sim.iotlab.app import create_app
from piseduce.sim.iotlab.cli import build_site
from piseduce.sim.iotlab.frontend import Frontend
from piseduce.sim.iotlab.model import Site
from piseduce.sim.iotlab.records import User

SITE = "strasbourg"


def tiny_elf(label: str) -> bytes:
    """A small file with an ELF32 ARM header, enough to stand for an M3 firmware."""
    ident = b"\x7fELF\x01\x01\x01" + b"\0" * 9
    header = struct.pack("<HHIIIIIHHHHHH", 2, 40, 1, 0x08000000, 52, 0, 0x05000000, 52, 32, 0, 40, 0, 0)
    return ident + header + label.encode()


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn on 127.0.0.1, a free port; yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not (server.started and server.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the emulator did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Emulator:
    site: Site
    root: str  # http://127.0.0.1:port
    users: dict[str, str]  # login → password
    frontend: Frontend  # the site's SSH frontend (SFTP: the users' consumption files)

    @property
    def api_url(self) -> str:
        return f"{self.root}/api/"

    def creds(self, login: str) -> dict[str, str]:
        return {"user": login, "password": self.users[login]}

    def faults(self, **knobs: Any) -> dict[str, Any]:
        r = httpx.post(f"{self.root}/_sim/faults", json=knobs)
        r.raise_for_status()
        return dict(r.json())

    def foreign(self, nodes: list[str], duration: int = 60, **extra: Any) -> int:
        r = httpx.post(f"{self.root}/_sim/experiments", json={"nodes": nodes, "duration": duration, **extra})
        r.raise_for_status()
        return int(r.json()["id"])

    def experiment(self, exp_id: int) -> dict[str, Any]:
        for exp in httpx.get(f"{self.root}/_sim/state").json()["experiments"]:
            if exp["id"] == exp_id:
                return dict(exp)
        raise KeyError(exp_id)


PROFILE: dict[str, Any] = {
    "profilename": "power_mon",
    "nodearch": "m3",
    "power": "dc",
    "consumption": {"period": 1100, "average": 64, "power": True, "voltage": False, "current": False},
    "radio": None,
}


@contextlib.contextmanager
def running_emulator(time_scale: float = 40.0, **site_kw: Any) -> Iterator[Emulator]:
    users = {"alice": secrets.token_urlsafe(10), "bob": secrets.token_urlsafe(10)}
    accounts = [User(login, pw) for login, pw in users.items()]
    accounts[0].profiles[PROFILE["profilename"]] = dict(PROFILE)
    site = build_site(SITE, accounts, nodes="m3=6,a8=2", time_scale=time_scale, seed=1, **site_kw)
    frontend = Frontend(site).start()
    try:
        with serve(create_app(site)) as root:
            yield Emulator(site, root, users, frontend)
    finally:
        frontend.stop()


def firmware_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in ("m3_tutorial.elf", "iotlab_a8_m3_tutorial.elf"):
        (path / name).write_bytes(tiny_elf(name))
    return path


def agent_config(tmp_path: Path, api_url: str, **extra: Any) -> AgentConfig:
    """An iot-lab agent config in tmp_path (key file and firmware folder included)."""
    generate_key_file(tmp_path / "secret.key")
    firmware_folder(tmp_path / "firmwares")
    data = {
        "auth_token": ["test-token-0123456789"],
        "node_type": "iot-lab",
        "iot_site": SITE,
        "key_file": "secret.key",
        "db_url": "sqlite:///agent.db",
        "firmware_path": "firmwares/",
        "iotlab_api_url": api_url,
        "timeout_scale": 0.05,
        "poll_interval": 0.05,
        "inventory_refresh_seconds": 60,
        **extra,
    }
    path = tmp_path / "config_agent.json"
    path.write_text(json.dumps(data))
    return AgentConfig.model_validate({**data, "path": path})


# ---------------------------------------------------------------- running a driver's steps directly


class MiniContext(StepContext):
    """The StepContext of the engine, in memory: enough to run a driver's steps in unit tests."""

    def __init__(
        self,
        reservation: ReservationView,
        config: AgentConfig,
        process: str,
        credentials: dict[str, str] | None,
    ) -> None:
        self.reservation = reservation
        self.config = config
        self.process = process
        self.args = {}
        self.credentials = credentials
        self.events: list[tuple[str, str]] = []
        self.percent = 0

    async def progress(self, percent: int, message: str | None = None) -> None:
        self.percent = percent

    async def log(self, message: str, level: str = "info") -> None:
        self.events.append((level, message))

    async def save_node_attrs(self, **attrs: Any) -> None:
        self.reservation.node.attrs.update(attrs)


async def run_process(
    driver: Driver,
    name: str,
    reservation: ReservationView,
    credentials: dict[str, str] | None,
    timeout: float = 15.0,
) -> MiniContext:
    """Run every step of a process as the engine would (run, then poll done); StepError propagates."""
    ctx = MiniContext(reservation, driver.config, name, credentials)
    for step in driver.processes()[name].steps:
        await step.run(ctx)
        if step.done is None:
            continue
        deadline = time.monotonic() + timeout
        while not await step.done(ctx):
            if time.monotonic() > deadline:
                raise StepError(f"{step.name}: timed out in the test")
            await asyncio.sleep(min(step.poll, 0.05))
    return ctx


def reservation_view(
    rid: int,
    node: str = "m3-1",
    *,
    hours: float = 1.0,
    start: dt.datetime | None = None,
    owner: str = "alice@example.org",
    params: dict[str, Any] | None = None,
) -> ReservationView:
    start = start or dt.datetime.now(dt.UTC)
    model = node.split("-", 1)[0]
    return ReservationView(
        id=rid,
        node=NodeView(
            name=node,
            properties={"model": model, "archi": f"{model}:at86rf231"},
            attrs={"network_address": f"{node}.{SITE}.iot-lab.info"},
        ),
        owner=owner,
        bin="exp",
        start=start,
        end=start + dt.timedelta(hours=hours),
        status="deploying",
        params=dict(params or {}),
    )
