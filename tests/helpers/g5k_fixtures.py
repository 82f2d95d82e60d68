"""Fixtures of the g5k tests: the Grid'5000 API emulator served on a free loopback port in a
thread of the test process (so tests can also steer its clock-free state directly)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from piseduce.sim.g5k.app import create_app
from piseduce.sim.g5k.model import G5kSim

USERS = {"alice": "alice-secret-pw", "bob": "bob-secret-pw"}
# Fast but ordered: OAR launch 8 s → 40 ms, Kadeploy 240 s → 1.2 s.
TIME_SCALE = 200.0


@dataclass
class Emulator:
    sim: G5kSim
    url: str  # base URL with the /stable prefix
    users_file: Path

    @property
    def root(self) -> str:
        return self.url.rsplit("/stable", 1)[0]

    def faults(self, **knobs: object) -> dict[str, object]:
        r = httpx.post(f"{self.root}/_sim/faults", json=knobs, timeout=5)
        r.raise_for_status()
        return dict(r.json())

    def foreign_job(
        self, user: str, hosts: list[str], walltime: int = 3600, start: float | None = None
    ) -> int:
        r = httpx.post(
            f"{self.root}/_sim/jobs",
            json={"user": user, "hosts": hosts, "walltime": walltime, "start": start, "name": "outside"},
            timeout=5,
        )
        r.raise_for_status()
        return int(r.json()["uid"])


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test runner owns the signals
        pass


def serve(
    sim: G5kSim, wrap: Callable[[Any], Any] | None = None
) -> tuple[str, _ThreadServer, threading.Thread]:
    """Serve the emulator; `wrap` puts an ASGI middleware of the test around it (fault injection)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(sim)
    server = _ThreadServer(
        uvicorn.Config(wrap(app) if wrap else app, log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the g5k emulator did not start")
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}/stable", server, thread


@pytest.fixture
def g5k_emulator(tmp_path: Path) -> Iterator[Emulator]:
    users_file = tmp_path / "g5k-users.json"
    users_file.write_text(json.dumps(USERS))
    from piseduce.sim.g5k.cli import load_users

    sim = G5kSim(
        "nancy",
        [("grisou", 4), ("gros", 2)],
        load_users(users_file),
        time_scale=TIME_SCALE,
        dead=["gros-2"],
        seed=1,
    )
    url, server, thread = serve(sim)
    try:
        yield Emulator(sim, url, users_file)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
