"""`pisctl ssh NODE_OR_KEY [-- command…]`: OpenSSH with the agent's pinned host key, strictly
checked (piseduce.client.ssh), in the foreground with this terminal."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from piseduce.client.cli import output
from piseduce.client.cli.common import client
from piseduce.client.errors import ApiError, PiseduceError
from piseduce.client.ssh import USER_RE, Target, argv, find, pinned_file, target_of
from piseduce.client.sync import Client


def run(args: list[str]) -> int:
    """OpenSSH in the foreground with this terminal; Ctrl-C is its, not ours."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.run(args, check=False).returncode
    except FileNotFoundError:
        raise PiseduceError("OpenSSH's ssh is not installed (apt-get install openssh-client)") from None
    finally:
        signal.signal(signal.SIGINT, previous)


def jump_host(api: Client, t: Target, use_via: bool) -> str:
    """Grid'5000's access machine, with the user's Grid'5000 login when Settings has it."""
    if not t.via or not use_via:
        return ""
    if "@" in t.via:
        return t.via
    try:
        login = api.credentials("g5k").login
    except ApiError:
        login = ""
    return f"{login}@{t.via}" if login and USER_RE.fullmatch(login) else t.via


def ssh(
    node: Annotated[
        str, typer.Argument(metavar="NODE", help="NODE, AGENT/NODE or a reservation key AGENT/ID.")
    ],
    command: Annotated[list[str] | None, typer.Argument(help="After --: the command to run there.")] = None,
    identity: Annotated[
        Path | None, typer.Option("--identity", "-i", metavar="KEY_FILE", help="Your private key file.")
    ] = None,
    known_hosts: Annotated[
        Path | None,
        typer.Option(
            "--known-hosts", metavar="FILE", help="Keep the pinned key in this file (for scp, rsync)."
        ),
    ] = None,
    via: Annotated[
        bool, typer.Option("--via/--no-via", help="Through the testbed's access machine when it has one.")
    ] = True,
) -> None:
    """Log in with OpenSSH (the agent's pinned host key, strictly checked); exits with ssh's code."""
    command = list(command or [])
    if command[:1] == ["--"]:  # `pisctl ssh NODE -- cmd`: the `--` only ends pisctl's options
        command = command[1:]
    with client() as api:
        t = target_of(find(api, node))
        jump = jump_host(api, t, via)
    if not t.host_key:
        output.say(f"note: {t.node}'s agent pins no host key; OpenSSH checks it against your known_hosts")
        raise typer.Exit(run(argv(t, None, identity, jump, command)))
    with pinned_file(t, known_hosts) as path:
        code = run(argv(t, path, identity, jump, command))
    if code == 255:
        output.say(
            f"error: ssh to {t.node} failed (exit 255); if it said REMOTE HOST IDENTIFICATION HAS "
            "CHANGED, the node is not the one deployed for you: do not log in, tell an admin"
        )
    raise typer.Exit(code)
