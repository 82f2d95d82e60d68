"""The commands an in-process simulated board answers over SSH (no shell: argument lists only).

Only the fallback boards (`inproc`) use it; real-mode boards run Debian's sshd and bash."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from piseduce.sim.rpi.board import Board
    from piseduce.sim.rpi.systems import System

THERMAL = "/sys/class/thermal/thermal_zone0/temp"
CPUINFO = "/proc/cpuinfo"
PIPE_CHUNK = 1 << 16


@dataclass
class Session:
    board: Board
    system: System
    user: str
    stdin: Any  # asyncssh SSHReader[bytes]
    stdout: Any  # asyncssh SSHWriter[bytes]
    stderr: Any

    def out(self, text: str) -> None:
        self.stdout.write(text.encode())

    def err(self, text: str) -> None:
        self.stderr.write(text.encode())


def _uname(session: Session, args: list[str]) -> str:
    host = session.system.hostname
    fields = {"-s": "Linux", "-n": host, "-r": "6.6.31+rpt-rpi-v8", "-m": "aarch64", "-o": "GNU/Linux"}
    if not args:
        return "Linux"
    if args == ["-a"]:
        return f"Linux {host} 6.6.31+rpt-rpi-v8 #1 SMP PREEMPT Debian 1:6.6.31-1+rpt1 aarch64 GNU/Linux"
    return " ".join(fields.get(a, "") for a in args)


def _id(session: Session) -> str:
    acc = session.system.accounts.get(session.user)
    uid, gid = (acc.uid, acc.gid) if acc else (0, 0)
    return f"uid={uid}({session.user}) gid={gid}({session.user}) groups={gid}({session.user})"


async def run(session: Session, argv: list[str]) -> int:
    """Runs one command; returns its exit status."""
    board, system = session.board, session.system
    if not argv:
        return 0
    cmd, args = argv[0], argv[1:]
    if cmd == "sudo" and args:
        # the images' users are in the sudo group; the NFS system is root only
        return await run(Session(board, system, "root", session.stdin, session.stdout, session.stderr), args)
    if cmd == "true":
        return 0
    if cmd == "false":
        return 1
    if cmd == "hostname":
        session.out(system.hostname + "\n")
        return 0
    if cmd == "whoami":
        session.out(session.user + "\n")
        return 0
    if cmd == "id":
        session.out(_id(session) + "\n")
        return 0
    if cmd == "uname":
        session.out(_uname(session, args) + "\n")
        return 0
    if cmd == "echo":
        session.out(" ".join(args) + "\n")
        return 0
    if cmd == "cat":
        return _cat(session, args)
    if cmd == "reboot":
        if session.user != "root":
            session.err("reboot: must be superuser.\n")
            return 1
        board.soft_reboot()
        return 0
    if cmd == "piseduce-node" and system.kind == "nfs":
        return await run_helper(session, args)
    session.err(f"bash: {cmd}: command not found\n")
    return 127


def _cat(session: Session, paths: list[str]) -> int:
    board, status = session.board, 0
    for path in paths:
        if path == THERMAL:
            session.out(f"{board.temperature_mc()}\n")
        elif path == CPUINFO:
            session.out(board.cpuinfo())
        elif path == "/etc/hostname":
            session.out(session.system.hostname + "\n")
        elif path == "/etc/os-release" and session.system.os_release:
            session.out(session.system.os_release)
        else:
            session.err(f"cat: {path}: No such file or directory\n")
            status = 1
    return status


async def run_helper(session: Session, args: list[str]) -> int:
    """The real node helper, in a subprocess, against the board's card file (at the card's speed)."""
    board = session.board
    env = {**os.environ, **board.helper_env()}
    proc = await asyncio.create_subprocess_exec(
        *board.helper_command(), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    board.helper_started(proc)
    feeder = asyncio.create_task(_feed(session.stdin, proc))
    try:
        await asyncio.gather(_drain(proc.stdout, session.stdout), _drain(proc.stderr, session.stderr))
        status = await proc.wait()
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await feeder
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        board.helper_finished(proc)
    return status


async def _feed(reader: Any, proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    try:
        while True:
            data = await reader.read(PIPE_CHUNK)
            if not data:
                break
            proc.stdin.write(data)
            await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        return
    finally:
        with contextlib.suppress(Exception):
            proc.stdin.close()


async def _drain(reader: asyncio.StreamReader | None, writer: Any) -> None:
    assert reader is not None
    while True:
        data = await reader.read(PIPE_CHUNK)
        if not data:
            return
        writer.write(data)
        await writer.drain()


async def interactive(session: Session) -> int:
    """A line-based prompt with the same commands, plus `exit`."""
    prompt = f"{session.user}@{session.system.hostname}:~{'#' if session.user == 'root' else '$'} "
    buffer = b""
    session.out(prompt)
    while True:
        data = await session.stdin.read(PIPE_CHUNK)
        if not data:
            return 0
        buffer += data
        while b"\n" in buffer or b"\r" in buffer:
            cut = min(i for i in (buffer.find(b"\n"), buffer.find(b"\r")) if i >= 0)
            line, buffer = buffer[:cut].decode(errors="replace"), buffer[cut + 1:]
            try:
                argv = shlex.split(line)
            except ValueError as exc:
                session.err(f"bash: {exc}\n")
                argv = []
            if argv[:1] == ["exit"]:
                return int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 0
            if argv:
                await run(Session(session.board, session.system, session.user, _NoInput(),
                                  session.stdout, session.stderr), argv)
            session.out(prompt)


class _NoInput:
    async def read(self, n: int = -1) -> bytes:
        return b""
