"""`pisctl ssh NODE_OR_KEY [-- command…]`: OpenSSH with the agent's pinned host key, strictly
checked (piseduce.client.ssh), in the foreground with this terminal."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from piseduce import sshjump
from piseduce.client.cli import output
from piseduce.client.cli.common import JsonOpt, client
from piseduce.client.errors import ApiError, PiseduceError
from piseduce.client.ssh import (
    USER_RE,
    Target,
    argv,
    find,
    gateway_argv,
    gateway_files,
    pinned_file,
    target_of,
    write_known_hosts,
)
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
    if t.gateway is not None and via:
        # From outside the lab: through the agent's gateway, both keys pinned.
        with gateway_files(t, identity) as cfg:
            code = run(gateway_argv(t, cfg, command))
        raise typer.Exit(code)
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


def ssh_config(
    node: Annotated[
        str, typer.Argument(metavar="RESERVATION", help="NODE, AGENT/NODE or a reservation key AGENT/ID.")
    ],
    known_hosts: Annotated[
        str,
        typer.Option(
            "--known-hosts",
            metavar="FILE",
            help="Where the block looks for the keys; pisctl writes the gateway's and the board's there.",
        ),
    ] = sshjump.DEFAULT_KNOWN_HOSTS,
    json_out: JsonOpt = False,
) -> None:
    """Print a ~/.ssh/config block to reach a board through its agent's SSH gateway (from outside
    the lab): `pisctl ssh-config pi-3 >> ~/.ssh/config`, then `ssh pi-3`. The keys it pins are
    written to --known-hosts."""
    with client() as api:
        t = target_of(find(api, node))
    if t.gateway is None:
        raise PiseduceError(f"{t.node}'s agent runs no SSH gateway: log in from the lab (pisctl ssh {node})")
    # The path goes into the block unquoted: a space or a newline would add directives.
    if not known_hosts or known_hosts.startswith("-") or any(c.isspace() or c in "\"'#" for c in known_hosts):
        raise PiseduceError(f"--known-hosts {known_hosts[:80]!r}: a plain path without spaces, please")
    write_known_hosts(Path(known_hosts).expanduser(), t.gateway, t)
    block = sshjump.ssh_config(t.gateway, [t.board], known_hosts)
    if json_out:
        lines = sshjump.known_hosts(t.gateway, [t.board])
        output.print_json({"ssh_config": block, "known_hosts": lines, "known_hosts_file": known_hosts})
        return
    output.say(f"the gateway's and {t.node}'s host keys are in {known_hosts}")
    print(block, end="")
