"""Real OpenSSH clients (ssh, scp, sftp, rsync -e ssh) against a deployed board, as a user runs
them: the user's key, the host key the reservation pinned, strict checking, no agent, no config."""

from __future__ import annotations

import asyncio
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from helpers.rpi_fixtures import known_hosts_name


@dataclass
class Login:
    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path

    @classmethod
    def of(cls, folder: Path, connection: dict[str, object], key: Path) -> Login:
        host, port = str(connection["host"]), int(str(connection["port"]))
        known = folder / f"known_hosts_{host}_{port}"
        known.write_text(f"{known_hosts_name(host, port)} {connection['host_key']}\n")
        return cls(host, port, str(connection["user"]), key, known)

    def options(self, *, batch: bool = True) -> list[str]:
        opts = ["-F", "/dev/null", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10",
                "-i", str(self.key)]
        return opts + (["-o", "BatchMode=yes"] if batch else [])

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}"

    def ssh(self, *command: str, tty: bool = False, batch: bool = True) -> list[str]:
        return ["ssh", *self.options(batch=batch), *(["-tt"] if tty else []), "-p", str(self.port),
                self.target, *command]

    def scp(self, *paths: str) -> list[str]:
        return ["scp", *self.options(), "-P", str(self.port), *paths]

    def sftp(self, batch_file: Path) -> list[str]:
        return ["sftp", *self.options(), "-P", str(self.port), "-b", str(batch_file), self.target]

    def rsync(self, *paths: str) -> list[str]:
        shell = shlex.join(["ssh", *self.options(), "-p", str(self.port)])
        return ["rsync", "-a", "-e", shell, *paths]

    def remote(self, path: str) -> str:
        return f"{self.target}:{path}"


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


async def run(argv: list[str], *, timeout: float = 60, env: dict[str, str] | None = None,
              stdin: bytes | None = None) -> Done:
    """Runs a client without blocking the event loop (the simulator and the agent share it)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})})
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return Done(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))


def askpass(folder: Path, password: str) -> dict[str, str]:
    """The environment that makes OpenSSH read the password from a program (no terminal needed)."""
    script = folder / "askpass.sh"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' {shlex.quote(password)}\n")
    script.chmod(0o700)
    return {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
