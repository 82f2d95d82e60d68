"""The demo's child processes: started in their own sessions, logging to `<data>/logs/`, watched
while they start and stopped in reverse order, so nothing is left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from piseduce.private_files import FILE_MODE

# Where the demo speaks: stderr (its stdout stays free for a caller's pipe).
console = Console(stderr=True)


class DemoError(Exception):
    """A problem the demo explains in one line and stops on."""


# A process that dies once the demo runs is started again, as the systemd units' Restart=on-failure
# does in production (deploy/systemd/), unless it died this many times within the window (its
# StartLimitBurst / StartLimitIntervalSec): then it would only die again, and the demo stops.
RESTART_BURST = 5
RESTART_WINDOW = 60.0


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    args: list[str]
    env: dict[str, str]
    restarts: list[float] = field(default_factory=list)  # monotonic times of its restarts


@dataclass
class Supervisor:
    logs: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.logs / f"{name}.log"
        child = Child(name, self._spawn(log, args, env or {}), log, args, env or {})
        self.children.append(child)
        return child

    @staticmethod
    def _spawn(log: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open_log(log) as out:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
                env={**os.environ, **env},
            )

    def dead(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def may_restart(self, child: Child, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return sum(1 for t in child.restarts if now - t < RESTART_WINDOW) < RESTART_BURST

    def restart(self, child: Child) -> None:
        """Start a dead child again, with the same command, appending to the same log."""
        # What the dead process left in its session (a port held by a grandchild) goes first.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.proc.pid, signal.SIGKILL)
        child.restarts.append(time.monotonic())
        child.proc = self._spawn(child.log, child.args, child.env)

    def stop(self, timeout: float = 15.0) -> None:
        # Reverse order: the web UI first, the simulators last.
        for child in reversed(self.children):
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.proc.wait(remaining)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(5)
            # Anything the child left in its session goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)


def open_log(path: Path) -> Any:
    """A child's log, appended to, mode 0600 (also when an older version left it 0644): logs
    name users, nodes and the demo's URLs."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return os.fdopen(fd, "ab")


def piseduce_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "piseduce.cli", *args]


def wait_until(check: Any, what: str, sup: Supervisor, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = sup.dead()
        if dead is not None:
            raise DemoError(f"the {dead.name} stopped while starting; see {dead.log}")
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise DemoError(f"{what} did not come up within {timeout:.0f} s; see the logs in {sup.logs}")


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def tcp_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
