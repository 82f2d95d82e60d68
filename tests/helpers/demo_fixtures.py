"""`piseduce demo` started for a test (tests/test_demo.py, tests/test_pisctl_experiment.py): on
free ports, in the test's folder, stopped and checked for leftovers at the end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.agent_helpers import free_port


def free_base() -> int:
    """A base port whose demo ports (base+1..3, +10, +11 TCP, +20 UDP) are all free."""
    import socket

    for _ in range(50):
        base = free_port()
        if base > 64000:
            continue
        try:
            for off in (1, 2, 3, 10, 11):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + off))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", base + 20))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range for the demo")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not read its status yet.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and int(entry.name) != os.getpid() and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@contextlib.contextmanager
def running_demo(tmp_path: Path, *, boards: int = 3) -> Iterator[dict[str, Any]]:
    """`piseduce demo` in `tmp_path` until the `with` ends (Ctrl-C, then whatever is left killed);
    what it wrote in its ready file, with `proc`."""
    data = tmp_path / "demo-data"
    ready = tmp_path / "ready.json"
    webui_port, base = free_port(), free_base()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "piseduce.cli",
            "demo",
            "--data",
            str(data),
            "--webui-port",
            str(webui_port),
            "--base-port",
            str(base),
            "--boards",
            str(boards),
            "--time-scale",
            "20",
            "--ready-file",
            str(ready),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 240
    while not ready.exists():
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"the demo stopped while starting:\n{out}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the demo did not start within 240 s")
        time.sleep(0.5)
    info = json.loads(ready.read_text())
    info["proc"] = proc
    try:
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C does
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for pid in info["pids"]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
