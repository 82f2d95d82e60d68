"""The `ssh_drop_rate` fault knob of a real-mode board, on the board: sshd runs every SSH session
through this program (`ForceCommand`, set by the board's init only when the knob is on).

A session is doomed with the knob's probability. A doomed session's command runs until a random
moment of the drop window (`DROP_WINDOW_S`), or until it ends if that is sooner, and then the
connection is cut: the session's sshd process is killed first, so that the command's exit status
can never reach the client, then the session's processes. The client sees its connection end in
the middle of the command, as with a network cut; and the knob is deterministic at rate 1.0:
every command is cut before it can report (a decision made when sshd's poll of the process tree
happens to see the command, as before, let short commands escape).

A spared session runs exactly what sshd would have run without the knob: the user's shell with
the client's command (`SSH_ORIGINAL_COMMAND`, removed from the environment) or as a login shell.

The board's python3 runs this file, copied to the board's tools layer (see `firmware`): it uses
the standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import random
import signal
import sys
import time

DROP_WINDOW_S = 0.3  # a doomed command is cut within this long after it starts (in-process too)
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
BOARD_MARKER = "/run/piseduce-board"  # written by the board's init (`board_init`)


def session_argv(env: dict[str, str], shell: str) -> list[str]:
    """What sshd itself executes for the session (session.c: `-sh` for a login shell, else
    `sh -c COMMAND`); takes the client's command out of `env`."""
    command = env.pop("SSH_ORIGINAL_COMMAND", None)
    name = os.path.basename(shell)
    if command is None:
        return [shell, "-" + name]
    if command == "internal-sftp":  # sshd's built-in server cannot run from here: the same, external
        command = SFTP_SERVER
    return [shell, name, "-c", command]


def _stat(pid: int) -> tuple[str, int]:
    """(command name, parent PID) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    name = text[text.index("(") + 1:text.rindex(")")]
    return name, int(text[text.rindex(")") + 2:].split()[1])


def connection_pid() -> int | None:
    """The sshd process of this session's connection: the nearest sshd among the ancestors."""
    pid = os.getppid()
    while pid > 1:
        try:
            name, parent = _stat(pid)
        except (OSError, ValueError, IndexError):
            return None
        if name.startswith("sshd"):
            return pid
        pid = parent
    return None


def _wait_until(child: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(child, os.WNOHANG)[0]:
                return
        time.sleep(0.005)


def on_a_board() -> bool:
    """Only a simulated board's sessions are ever cut (never, say, the host's own sshd's)."""
    try:
        with open("/proc/1/comm") as f:
            return os.path.exists(BOARD_MARKER) and f.read().strip() == "piseduce-init"
    except OSError:
        return False


def cut(child: int) -> None:
    """The connection first (nothing more goes to the client), then the session's processes."""
    sshd = connection_pid() if on_a_board() else None
    if sshd is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(sshd, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        if os.getpgid(child) != os.getpgrp():  # the command made a process group of its own
            os.killpg(os.getpgid(child), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(child, signal.SIGKILL)
    if os.getpgrp() == os.getpid():  # sshd made the session its own group: all of it goes
        os.killpg(0, signal.SIGKILL)
    os._exit(1)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="drop_session")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seed", default=None)
    args = parser.parse_args(argv)
    env = dict(os.environ)
    shell = env.get("SHELL") or pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"
    target = session_argv(env, shell)
    rng = random.Random(f"{args.seed}:{os.getpid()}") if args.seed is not None else random.SystemRandom()
    if rng.random() >= args.rate:
        os.execve(target[0], target[1:], env)  # noqa: S606 - the session's shell, as sshd runs it
    delay = rng.uniform(0.0, DROP_WINDOW_S)
    child = os.fork()
    if child == 0:
        try:
            os.execve(target[0], target[1:], env)  # noqa: S606 - (same)
        finally:
            os._exit(127)
    _wait_until(child, time.monotonic() + delay)
    cut(child)
    return 1  # not reached: cut() ends this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
