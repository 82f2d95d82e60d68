"""The init of a simulated board: PID 1 inside the board, after `boardsetup` has mounted its root.

It starts the system's own OpenSSH server (Debian's sshd from the card's configuration, host keys,
users and passwords), says "ready" on the pipe the supervisor gave once sshd accepts connections,
reaps every orphan of the board, and ends the board like busybox's init does on a signal from
the board's `reboot` (SIGTERM or SIGINT) or `poweroff`/`halt` (SIGUSR2, SIGUSR1): every process
of the board is killed and the exit status tells the supervisor which (10 reboot, 11 poweroff).

Everything is imported before the root is switched: the host's library paths are gone after.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

EXIT_REBOOT = 10
EXIT_POWEROFF = 11
EXIT_NO_SSH = 21
SSHD = "/usr/sbin/sshd"
PYTHON = "/usr/bin/python3"  # the board's (the host's, through the board's /usr)
DROP_SESSION = "/usr/lib/piseduce/drop_session.py"  # on the board's tools layer (see `firmware`)
PR_SET_NAME = 15
MARKER = "/run/piseduce-board"


class _Stop(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _on_signal(sig: int, _frame: Any) -> None:
    raise _Stop(EXIT_REBOOT if sig in (signal.SIGTERM, signal.SIGINT) else EXIT_POWEROFF)


def _say(text: str) -> None:
    sys.stderr.write(f"[{time.monotonic():12.3f}] {text}\n")
    sys.stderr.flush()


def sshd_argv(config_text: str | None, drop_rate: float = 0.0, seed: int | None = None) -> list[str]:
    """sshd in the foreground, logging to the console. PAM is off: the simulated images carry no
    PAM stack, so passwords are checked against /etc/shadow by sshd itself. An image whose
    configuration declares no sftp subsystem gets OpenSSH's own (scp uses it since OpenSSH 9).
    With the ssh_drop_rate knob on, every session goes through `drop_session` (a command-line
    option: it wins over the image's configuration)."""
    argv = [SSHD, "-D", "-e", "-o", "UsePAM=no"]
    if drop_rate > 0:
        force = f"{PYTHON} -I {DROP_SESSION} --rate {drop_rate!r}"
        argv += ["-o", f"ForceCommand={force}" + (f" --seed {int(seed)}" if seed is not None else "")]
    if config_text is None:
        argv += ["-f", "/dev/null"]
    lines = [line.split("#", 1)[0].split() for line in (config_text or "").splitlines()]
    if not any(len(w) >= 2 and w[0].lower() == "subsystem" and w[1] == "sftp" for w in lines):
        argv += ["-o", "Subsystem=sftp /usr/lib/openssh/sftp-server"]
    return argv


def _wait_listening(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", 22)) == 0:
                return True
        time.sleep(0.01)
    return False


def _ready(fd: int, text: str) -> None:
    try:
        os.write(fd, (text + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def run(ready_fd: int, start_ssh: bool, drop_rate: float = 0.0, seed: int | None = None) -> int:
    """The init's life; returns its exit status."""
    ctypes.CDLL(None).prctl(PR_SET_NAME, b"piseduce-init", 0, 0, 0)
    with open(MARKER, "w") as f:
        f.write("piseduce simulated board\n")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, _on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sshd = None
    try:
        if start_ssh:
            try:
                with open("/etc/ssh/sshd_config") as f:
                    config: str | None = f.read()
            except OSError:
                config = None
            sshd = subprocess.Popen(sshd_argv(config, drop_rate, seed), stdin=subprocess.DEVNULL,
                                    close_fds=True)
            if not _wait_listening(sshd):
                _say(f"sshd did not start (status {sshd.poll()})")
                _ready(ready_fd, "sshd did not start")
                return EXIT_NO_SSH
        _say("system up" + (", sshd listening on port 22" if sshd else " (no SSH server)"))
        _ready(ready_fd, "ready")
        while True:
            _reap()
    except _Stop as stop:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)  # one ending at a time
        _say("reboot requested" if stop.code == EXIT_REBOOT else "power off requested")
        time.sleep(0.1)  # the command that asked has its exit status sent first
        _kill_all()
        return stop.code


def _reap() -> None:
    try:
        while True:
            os.waitpid(-1, 0)
    except ChildProcessError:
        signal.pause()


def _kill_all() -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)  # every process of the board but its init
