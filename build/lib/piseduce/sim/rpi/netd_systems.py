"""The systems the boards boot, as seen from the supervisor (`netd`).

A boot is `nsenter --net=<the board's namespace> unshare --pid --fork --kill-child --mount --uts
python -m piseduce.sim.rpi.boardsetup SPEC`: boardsetup, PID 1 of a new PID namespace, mounts the
board's root filesystem and becomes its init (`board_init`), which tells on an inherited pipe
when sshd accepts connections. Halting (power off) kills `unshare`; its child, the init, gets
SIGKILL as its parent-death signal and the kernel kills the rest of the namespace. The init's exit
status says why a system ended by itself: reboot, poweroff, or a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("piseduce.sim.rpi.netd")

EXIT_REBOOT = 10
EXIT_POWEROFF = 11
READY_TIMEOUT_S = 60.0
GONE_TIMEOUT_S = 10.0
CMD_TIMEOUT_S = 60.0
HELPER_MARKERS = (b"piseduce.node.cli", b"piseduce.sim.rpi.card")


async def run_cmd(cmd: list[str], stdin: str | None = None, timeout: float = CMD_TIMEOUT_S) -> str:
    """Runs an ip, tc, nft... command; RuntimeError when it fails or has not ended in `timeout`."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    except TimeoutError:
        raise RuntimeError(f"{' '.join(cmd[:6])} did not end within {timeout:g} s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} failed: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def loop_devices_of(path: str) -> list[str]:
    """The loop devices whose backing file is `path`."""
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().strip() == path:
                found.append(backing.parent.parent.name)
    return found


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    card: str
    console: str
    init_pid: int = 0
    init_start: str | None = None
    pid_ns: str = ""
    halting: bool = False
    watcher: asyncio.Task[None] | None = None
    gone: asyncio.Event = field(default_factory=asyncio.Event)


def _console_tail(path: str, lines: int = 6) -> str:
    try:
        text = Path(path).read_bytes()[-4000:].decode(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


class Systems:
    def __init__(self, emit: Callable[[dict[str, Any]], Awaitable[None]],
                 netns_pid: Callable[[int], int]) -> None:
        self.emit = emit
        self.netns_pid = netns_pid
        self.running: dict[int, Running] = {}

    async def boot(self, index: int, spec: dict[str, Any]) -> dict[str, Any]:
        if index in self.running:
            await self.halt(index)
        holder = self.netns_pid(index)
        read_fd, write_fd = os.pipe()
        spec = {**spec, "ready_fd": write_fd}
        spec_path = Path(spec["state"]) / "boot.json"
        spec_path.write_text(json.dumps(spec))
        cmd = ["nsenter", f"--net=/proc/{holder}/ns/net", "--",
               "unshare", "--pid", "--fork", "--kill-child", "--mount", "--uts", "--propagation", "private",
               "--", sys.executable, "-m", "piseduce.sim.rpi.boardsetup", str(spec_path)]
        console = open(spec["console"], "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=console, stderr=console, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
            console.close()
        run = Running(proc, spec.get("card", ""), spec["console"])
        self.running[index] = run
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):  # (not wait_for: see `bounded`)
                status = await self._ready(read_fd)
        except TimeoutError:
            status = f"no answer from the board's init within {READY_TIMEOUT_S:g} s"
        if status != "ready":
            if self.running.get(index) is run:  # not halted (and replaced) meanwhile
                await self.halt(index)
            tail = _console_tail(spec["console"], 3)
            raise RuntimeError(f"{status} (console: {tail})" if tail else status)
        self._learn_init(run)
        run.watcher = asyncio.create_task(self._watch(index, run))
        return {"init_pid": run.init_pid}

    async def _ready(self, fd: int) -> str:
        def read() -> str:
            with os.fdopen(fd, "rb") as f:
                return f.readline().decode(errors="replace").strip() or "the system stopped while booting"
        return await asyncio.to_thread(read)

    def _learn_init(self, run: Running) -> None:
        pid = run.proc.pid
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            run.init_pid = int(children[0])
            run.init_start = _start_time(run.init_pid)
            run.pid_ns = os.readlink(f"/proc/{run.init_pid}/ns/pid")

    async def _watch(self, index: int, run: Running) -> None:
        try:
            status = await run.proc.wait()
            await self._gone(run)
        finally:
            run.gone.set()  # whatever happens to this watcher, a halt waiting for it goes on
        if run.halting:
            return
        if self.running.get(index) is run:
            del self.running[index]
        reason = {EXIT_REBOOT: "reboot", EXIT_POWEROFF: "poweroff"}.get(status, "crash")
        await self.emit({"event": "exit", "index": index, "reason": reason, "status": status,
                         "detail": _console_tail(run.console) if reason == "crash" else ""})

    async def _gone(self, run: Running) -> None:
        """Until the init has exited and the card is no longer mounted (its loop device released)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GONE_TIMEOUT_S
        while loop.time() < deadline:
            alive = run.init_pid and _start_time(run.init_pid) == run.init_start
            if not alive and not (run.card and loop_devices_of(run.card)):
                break
            await asyncio.sleep(0.01)
        else:
            log.warning("board system (init %d) still there after %.0f s", run.init_pid, GONE_TIMEOUT_S)
        run.gone.set()

    async def halt(self, index: int) -> None:
        run = self.running.pop(index, None)
        if run is None:
            return
        run.halting = True
        with contextlib.suppress(ProcessLookupError):
            run.proc.kill()
        if run.watcher is None:
            await run.proc.wait()
            await self._gone(run)
            return
        try:
            async with asyncio.timeout(GONE_TIMEOUT_S + 5):  # the watcher waits GONE_TIMEOUT_S at most
                await run.gone.wait()
        except TimeoutError:
            log.warning("board %d: its system was not seen gone after the halt", index)

    async def halt_all(self) -> None:
        await asyncio.gather(*(self.halt(i) for i in list(self.running)), return_exceptions=True)

    def namespaces(self) -> dict[str, int]:
        """The PID namespace of each booted board (read in the event loop, used by `usage`)."""
        return {run.pid_ns: index for index, run in self.running.items() if run.pid_ns}

    @staticmethod
    def usage(by_ns: dict[str, int]) -> dict[str, dict[str, float]]:
        """CPU seconds used so far by each booted board (its live processes and what they reaped)
        and how many `piseduce-node` helpers run on it. Blocking: reads /proc."""
        out = {str(index): {"cpu": 0.0, "helpers": 0} for index in by_ns.values()}
        ticks = os.sysconf("SC_CLK_TCK")
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                index = by_ns.get(os.readlink(f"/proc/{entry.name}/ns/pid"))
                if index is None:
                    continue
                fields = Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2].split()
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except (OSError, IndexError):
                continue
            row = out[str(index)]
            row["cpu"] += sum(int(v) for v in fields[11:15]) / ticks
            if any(m in cmdline for m in HELPER_MARKERS) and b"python" in cmdline.split(b"\0")[0]:
                row["helpers"] += 1
        return out
