"""The demo starts a process again when it dies, as the systemd units' Restart=on-failure does in
production (an executor killed -9 in the middle of a deployment stopped the whole demo: every
user lost the web UI), and it says so; a process that keeps dying stops the demo (unit:
test_a_process_that_keeps_dying_is_not_restarted_for_ever)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from helpers.demo_fixtures import alive, processes_mentioning, running_demo
from helpers.waiting import wait_until_sync
from piseduce.demo.supervisor import RESTART_BURST, RESTART_WINDOW, Child, Supervisor


@pytest.mark.slow
def test_a_killed_executor_is_started_again_and_the_demo_keeps_serving(tmp_path: Path) -> None:
    with running_demo(tmp_path, boards=1) as demo:
        name = next(n for n in demo["processes"] if "exec" in n)
        pid = demo["processes"][name]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        os.kill(pid, signal.SIGKILL)
        wait_until_sync(lambda: not alive(pid), timeout=10, what="the executor to die")
        again = wait_until_sync(lambda: [p for p in processes_mentioning(cmdline) if p != pid],
                                timeout=30, interval=0.2, what=f"the {name} to be started again")
        time.sleep(2)  # it stays up (a crash loop would show here)
        assert all(alive(p) for p in again), again
        assert demo["proc"].poll() is None, "the demo stopped"
        assert httpx.get(demo["url"].rstrip("/") + "/healthz", timeout=10).status_code == 200
        log = (tmp_path / "demo-data" / "logs" / f"{name}.log").read_text(errors="replace")
        assert log, "the restarted process appends to its log"
    out = demo["proc"].stdout.read().decode(errors="replace") if demo["proc"].stdout else ""
    assert f"The {name} stopped unexpectedly (exit code -9); restarting it" in out, out[-2000:]
    assert not [p for p in processes_mentioning(cmdline)], "the restarted process outlived the demo"


def test_a_process_that_keeps_dying_is_not_restarted_for_ever(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    child = sup.start("crasher", ["/bin/false"])
    child.proc.wait(10)
    now = time.monotonic()
    for _ in range(RESTART_BURST):
        assert sup.may_restart(child, now)
        sup.restart(child)
        child.proc.wait(10)
    assert not sup.may_restart(child, now), "restarted for ever"
    assert sup.may_restart(child, now + RESTART_WINDOW + 1), "the window slides"
    assert isinstance(child, Child) and child.log.exists()
    sup.stop()
