"""Users' API benchmark: 10 agents x 100 nodes, each answering every call after 100 ms.

Median and p95 of `GET /api/v1/nodes` (with a filter) and `GET /api/v1/reservations`, with a
personal access token, the web UI in its own process and the agents in another (the same fake
agents as bench_webui.py). Target: under 300 ms, as the pages.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
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

from bench_webui import AGENTS, DELAY, NODES, free_port, serve_agents  # noqa: E402
from results import emit  # noqa: E402

ROUNDS = 30
TARGET = 0.300
USER = "bench@example.org"


PARTIAL: dict[str, int] = {}


def measure(client: httpx.Client, path: str, params: dict[str, str] | None = None) -> tuple[float, float]:
    """(median, p95) seconds; answers missing an agent (it timed out) are counted in PARTIAL."""
    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        r = client.get(path, params=params)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text[:300]
        if "x-piseduce-unavailable" in r.headers:
            PARTIAL[path] = PARTIAL.get(path, 0) + 1
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))]


def main() -> None:
    from helpers.agent_helpers import TOKEN, piseduce_cmd, subprocess_env
    from helpers.api_helpers import make_token
    from helpers.webui_fixtures import add_user, write_webui_config
    from piseduce import crypto
    from piseduce.config import load_webui_config
    from piseduce.db import make_engine, session_factory
    from piseduce.webui.models import Agent

    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    ports = [free_port() for _ in range(AGENTS)]
    ready = mp.Event()
    agents = mp.Process(target=serve_agents, args=(ports, ready), daemon=True)
    agents.start()
    cfg_path = write_webui_config(tmp, agent_timeout_seconds=1.0, health_check_seconds=30)
    add_user(cfg_path, USER, "bench-password")
    token = make_token(cfg_path, USER, "read")
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
    engine.dispose()
    log = open(tmp / "webui.log", "ab")  # noqa: SIM115
    webui = subprocess.Popen(
        piseduce_cmd("webui", "serve", str(cfg_path), "--log-level", "warning"),
        env=subprocess_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
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
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"{url}/api/v1", timeout=30, headers=headers) as c:
            for _ in range(30):  # warm-up (connections), until every agent answered once
                every = c.get("/nodes").json()
                if len(every) == AGENTS * NODES:
                    break
                time.sleep(1)
            assert len(every) == AGENTS * NODES, f"{len(every)} nodes, not {AGENTS * NODES}"
            assert len(c.get("/reservations").json()) == AGENTS * 5
            results = {
                "GET /nodes": measure(c, "/nodes"),
                "GET /nodes?filter=memory>=4G": measure(c, "/nodes", {"filter": "memory>=4G"}),
                "GET /reservations": measure(c, "/reservations"),
            }
        print(
            f"users' API: {AGENTS} agents x {NODES} nodes, {DELAY * 1000:.0f} ms per agent call, "
            f"{ROUNDS} requests each, token auth"
        )
        for name, (median, p95) in results.items():
            print(f"  {name:<30} median {median * 1000:7.1f} ms")
            emit(f"API: {name} p95", f"{AGENTS} x {NODES} nodes", p95 * 1000, "ms", TARGET * 1000)
        for path, n in PARTIAL.items():
            print(f"  WARNING: {n} answers of {path} lacked an agent (timed out: is the machine loaded?)")
    finally:
        webui.terminate()
        webui.wait(10)
        agents.terminate()
        agents.join(10)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)  # its database, config, key and log


if __name__ == "__main__":
    main()
