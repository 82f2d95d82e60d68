"""Executor processes for the engine tests: a fixture that starts `piseduce agent exec`-like
processes (their output in files, all killed at the end), and what the tests read back."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from helpers.engine_fixtures import add_node, add_reservation, reservation

TESTS = Path(__file__).resolve().parent.parent
DEPLOY_STEPS = ("prepare", "boot", "install", "connect")
RUN_EXECUTOR = (
    "import asyncio,sys; from piseduce.config import load_agent_config; "
    "from piseduce.agent.engine.executor import run_executor; "
    "asyncio.run(run_executor(load_agent_config(sys.argv[1])))"
)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start executor processes (their output goes to files); all are killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}

    def start(config: Path, argv: list[str] | None = None) -> subprocess.Popen[bytes]:
        out = open(tmp_path / f"executor{len(procs)}.log", "wb")  # noqa: SIM115
        cmd = argv or [sys.executable, "-c", RUN_EXECUTOR, str(config)]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        out.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def output(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("executor*.log")))


def statuses(sessions: sessionmaker[Session], rids: list[int]) -> list[str]:
    return [reservation(sessions, r).status for r in rids]


def setup_nodes(sessions: sessionmaker[Session], count: int, **attrs: Any) -> tuple[list[str], list[int]]:
    names = [f"n{i}" for i in range(count)]
    rids = []
    for name in names:
        add_node(sessions, name, **attrs)
        rids.append(add_reservation(sessions, name))
    return names, rids
