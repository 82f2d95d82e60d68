"""Web UI fan-out benchmark: 10 agents x 100 nodes, each answering every call after 100 ms.

Median time to serve the reserve page and the manage page (the web UI in its own process, the
agents in another), then the same with one more agent that accepts connections and never answers.
Targets: under 300 ms, and under 1.2 s with the dead agent.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from results import emit  # noqa: E402

AGENTS = 10
NODES = 100
DELAY = 0.1
ROUNDS = 15
TARGET = 0.300
TARGET_DEAD = 1.2


def serve_agents(ports: list[int], ready: mp.Event) -> None:  # type: ignore[valid-type]
    import uvicorn

    from helpers.webui_fixtures import fake_agent_app

    async def main() -> None:
        servers = [
            uvicorn.Server(
                uvicorn.Config(
                    fake_agent_app(f"site{i}", nodes=NODES, delay=DELAY),
                    host="127.0.0.1",
                    port=p,
                    log_level="error",
                )
            )
            for i, p in enumerate(ports)
        ]
        tasks = [asyncio.create_task(s.serve()) for s in servers]
        while not all(s.started for s in servers):
            await asyncio.sleep(0.05)
        ready.set()  # type: ignore[attr-defined]
        await asyncio.gather(*tasks)

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(client: httpx.Client, path: str) -> float:
    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        r = client.get(path)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text[:300]
    return statistics.median(times)


def main() -> None:
    from helpers.agent_helpers import TOKEN, piseduce_cmd, subprocess_env
    from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
    from helpers.webui_fixtures import (
        SilentPort,
        add_user,
        csrf_of,
        write_webui_config,
    )
    from piseduce import crypto
    from piseduce.config import load_webui_config
    from piseduce.db import make_engine, session_factory
    from piseduce.webui.models import Agent

    tmp = Path(tempfile.mkdtemp(prefix="bench-webui-"))
    ports = [free_port() for _ in range(AGENTS)]
    ready = mp.Event()
    agents = mp.Process(target=serve_agents, args=(ports, ready), daemon=True)
    agents.start()
    cfg_path = write_webui_config(tmp, agent_timeout_seconds=1.0, health_check_seconds=30)
    add_user(cfg_path, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    add_user(cfg_path, "bench@example.org", "bench-password")
    cfg = load_webui_config(cfg_path)
    fernet = crypto.load_fernet(cfg.key_path)
    engine = make_engine(cfg.database_url)
    with session_factory(engine)() as s, s.begin():
        for i, p in enumerate(ports):
            s.add(
                Agent(
                    name=f"site{i}",
                    host="127.0.0.1",
                    port=p,
                    token=crypto.encrypt_str(fernet, TOKEN),
                    node_type="raspberry",
                    site=f"site{i}",
                    status="connected",
                )
            )
    log = open(tmp / "webui.log", "ab")  # noqa: SIM115
    webui = subprocess.Popen(
        piseduce_cmd("webui", "serve", str(cfg_path), "--log-level", "warning"),
        env=subprocess_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    silent = SilentPort()
    try:
        if not ready.wait(60):
            raise SystemExit("the fake agents did not start")
        url = f"http://127.0.0.1:{cfg.port_number}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=30, follow_redirects=False) as c:
            token = csrf_of(c.get("/login").text)
            r = c.post(
                "/login",
                data={"email": "bench@example.org", "password": "bench-password", "csrf_token": token},
            )
            assert r.status_code == 303, r.text[:300]
            page = c.get("/reserve").text  # warm-up (connections, templates)
            assert page.count('class="cal-row') == AGENTS * NODES + 1, "not every node is shown"
            c.get("/manage")
            results = {"reserve": measure(c, "/reserve"), "manage": measure(c, "/manage")}
            with session_factory(engine)() as s, s.begin():
                s.add(
                    Agent(
                        name="dead",
                        host="127.0.0.1",
                        port=silent.port,
                        token=crypto.encrypt_str(fernet, TOKEN),
                        node_type="raspberry",
                        site="dead",
                        status="connected",
                    )
                )
            t0 = time.perf_counter()
            first = c.get("/reserve")
            first_dead = time.perf_counter() - t0
            assert "Agent dead: unreachable" in first.text
            results["reserve (dead agent)"] = measure(c, "/reserve")
            results["manage (dead agent)"] = measure(c, "/manage")
        print(
            f"web UI fan-out: {AGENTS} agents x {NODES} nodes, {DELAY * 1000:.0f} ms per agent call, "
            f"median of {ROUNDS} requests"
        )
        for name, value in results.items():
            target = TARGET_DEAD if "dead" in name else TARGET
            emit(f"web UI: {name} median", f"{AGENTS} x {NODES} nodes", value * 1000, "ms", target * 1000)
        print(
            f"  first request after the agent died: {first_dead * 1000:.0f} ms (one timeout of "
            f"{cfg.agent_timeout_seconds:g} s, then the circuit breaker skips it)"
        )
    finally:
        silent.close()
        webui.terminate()
        webui.wait(10)
        agents.terminate()
        agents.join(10)
        engine.dispose()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)  # its database, config, key and log


if __name__ == "__main__":
    main()
