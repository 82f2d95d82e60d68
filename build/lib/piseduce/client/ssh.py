"""OpenSSH to a deployed node with the host key its agent pinned (`pisctl ssh`, and scripts:
`with ssh_command(api, key, ["uname", "-a"]) as argv: subprocess.run(argv)`). The key goes to a
temporary known_hosts file (0600, removed afterwards) and OpenSSH runs with
`StrictHostKeyChecking=yes` on it alone, so a changed key is refused, never learnt.

OpenSSH is run from an argument list (no shell on this side). What the API says of the node is
checked before it reaches that list: a host or user starting with `-` would be read as an option,
a host key holding a newline would add lines to known_hosts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from piseduce import sshjump
from piseduce.client import models as m
from piseduce.client.calls import split_key
from piseduce.client.errors import PiseduceError
from piseduce.client.sync import Client

# Matched whole (fullmatch: `$` would let a trailing newline through).
HOST_RE, USER_RE = sshjump.HOST_RE, sshjump.USER_RE
JUMP_RE = re.compile(f"({USER_RE.pattern}@)?{HOST_RE.pattern}")
# "type base64 [comment]": printable ASCII only, one line (a newline would add a known_hosts line).
HOST_KEY_RE = re.compile(
    r"(ssh-|ecdsa-|sk-)[A-Za-z0-9@._-]{1,60} [A-Za-z0-9+/]{16,16384}={0,3}( [ -~]{0,200})?"
)


@dataclass(frozen=True)
class Target:
    node: str
    host: str
    port: int
    user: str
    host_key: str  # "" when the agent pins none (Grid'5000, IoT-LAB frontends)
    via: str = ""
    gateway: sshjump.Gateway | None = None  # the agent's SSH gateway (raspberry), its key pinned

    @property
    def board(self) -> sshjump.Board:
        return sshjump.Board(self.node, self.host, self.port, self.user, self.host_key)

    @property
    def known_hosts_line(self) -> str:
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {self.host_key}\n"


def next_step(r: m.Reservation) -> str:
    """The command that moves this reservation towards a login, for its status now."""
    if r.status == m.CONFIGURING:
        return f"pisctl deploy {r.key} --wait"
    if r.status in (m.SCHEDULED, m.DEPLOYING):  # its deployment is asked for already
        return f"pisctl wait {r.key}"
    if r.status == m.FAILED:
        return f"pisctl status {r.key} says why; then pisctl redeploy {r.key} --wait"
    return "pisctl reserve --nodes " + f"{r.agent}/{r.node}"


def target_of(r: m.Reservation) -> Target:
    """Where to log in, from the reservation's connection, every piece checked."""
    conn = r.connection
    if r.status != m.DEPLOYED or conn is None:
        when = f" (starts {r.start:%Y-%m-%d %H:%M %Z})" if r.status == m.SCHEDULED and r.start else ""
        raise PiseduceError(
            f"{r.node} ({r.key}) is {r.status}{when}, not deployed: no SSH yet ({next_step(r)})"
        )
    host, user, port = conn.host, conn.user, conn.port
    if not HOST_RE.fullmatch(host) or not USER_RE.fullmatch(user) or not 1 <= port <= 65535:
        where = f"{user[:40]!r}@{host[:80]!r} port {port}"
        raise PiseduceError(f"{r.node} ({r.key}): the agent gave no usable SSH address ({where})")
    key = (conn.host_key or "").strip()
    if key and not HOST_KEY_RE.fullmatch(key):
        raise PiseduceError(f"{r.node} ({r.key}): the pinned host key is malformed; refusing to connect")
    via = conn.jump or ""
    if via and not JUMP_RE.fullmatch(via):
        raise PiseduceError(
            f"{r.node} ({r.key}): the jump host {via[:80]!r} is malformed; refusing to connect"
        )
    gw = conn.gateway
    gateway = sshjump.Gateway.of(gw) if gw is not None else None
    if gateway is not None and not sshjump.usable(gateway, sshjump.Board(r.node, host, port, user, key)):
        raise PiseduceError(f"{r.node} ({r.key}): the agent's gateway is malformed; refusing to connect")
    return Target(r.node, host, port, user, key, via, gateway)


def write_known_hosts(path: Path, gw: sshjump.Gateway, t: Target) -> None:
    """The gateway's and the board's keys into `path` (0600): lines for other hosts are kept, a
    host's old key is replaced (a redeployed board has a new one)."""
    lines = sshjump.known_hosts(gw, [t.board]).splitlines()
    names = {line.split()[0] for line in lines}
    old = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in old if line.strip() and line.split()[0] not in names]
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{line}\n" for line in [*kept, *lines]))


@contextlib.contextmanager
def gateway_files(t: Target, identity: Path | None) -> Iterator[Path]:
    """A temporary ~/.ssh/config (0600, removed afterwards) for `ssh -F`: OpenSSH applies command-line
    options to the last hop only, so the gateway's pinned key has to be in a config file."""
    assert t.gateway is not None
    folder = Path(tempfile.mkdtemp(prefix="pisctl-ssh-"))  # 0700
    try:
        known = folder / "known_hosts"
        write_known_hosts(known, t.gateway, t)
        cfg = folder / "config"
        text = sshjump.ssh_config(t.gateway, [t.board], str(known), str(identity) if identity else "")
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "  GlobalKnownHostsFile /dev/null\n  UpdateHostKeys no\n")
        yield cfg
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def gateway_argv(t: Target, config: Path, command: list[str]) -> list[str]:
    return ["ssh", "-F", str(config), "--", t.node, *command]


def current_first(found: list[m.Reservation]) -> list[m.Reservation]:
    """The booking whose slot holds now first, then the newest booking (the larger id): a node's
    list also holds later slots and, by start, an old booking can come after the current one."""
    now = dt.datetime.now(dt.UTC)

    def now_then_newest(r: m.Reservation) -> tuple[bool, int]:
        return (bool(r.start and r.end and r.start <= now < r.end), r.id)

    return sorted(found, key=now_then_newest, reverse=True)


def find(api: Client, what: str) -> m.Reservation:
    """AGENT/ID is a key; NODE or AGENT/NODE is your current (not over) reservation of that node:
    the deployed one, else the one of now, else the newest. An ended or cancelled one is never picked."""
    agent, _, tail = what.rpartition("/")
    if agent and tail.isascii() and tail.isdigit():
        split_key(what)
        return api.reservation(what)
    node = tail
    mine = [r for r in api.reservations() if r.node == node and (not agent or r.agent == agent)]
    current = current_first([r for r in mine if r.status not in m.GONE])
    deployed = [r for r in current if r.status == m.DEPLOYED]
    if len(deployed) == 1:
        return deployed[0]
    if len(deployed) > 1:
        raise PiseduceError(
            f"{node} is deployed in {len(deployed)} reservations: name one "
            f"({', '.join(r.key for r in deployed)})"
        )
    if current:
        return current[0]  # target_of says why it cannot be logged in to yet, and what to run
    if mine:
        last = current_first(mine)[0]
        raise PiseduceError(
            f"no current reservation of yours holds {what!r} (the last one, {last.key}, is {last.status}); "
            f"book it again: pisctl reserve --nodes {last.agent}/{last.node}"
        )
    raise PiseduceError(f"no reservation of yours holds {what!r} (pisctl status lists them)")


@contextlib.contextmanager
def pinned_file(t: Target, keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.write_text(t.known_hosts_line)
        keep.chmod(0o600)
        yield keep
        return
    folder = Path(tempfile.mkdtemp(prefix="pisctl-ssh-"))  # 0700
    try:
        path = folder / "known_hosts"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(t.known_hosts_line)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def argv(
    t: Target, known_hosts: Path | None, identity: Path | None, jump: str, command: list[str]
) -> list[str]:
    args = ["ssh", "-p", str(t.port)]
    if known_hosts is not None:
        args += [
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "UpdateHostKeys=no",
        ]
    if identity is not None:
        args += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
    if jump:
        args += ["-J", jump]
    # `--`: nothing after it is an option, whatever the node's name.
    return [*args, "--", f"{t.user}@{t.host}", *command]


@contextlib.contextmanager
def ssh_command(
    api: Client,
    node: str,
    command: list[str] | None = None,
    *,
    identity: Path | None = None,
    jump: str | None = None,
) -> Iterator[list[str]]:
    """The OpenSSH argument list to run `command` on `node` (NODE, AGENT/NODE or a key), valid
    inside the `with`: its temporary known_hosts holds the pinned key. A node whose agent pins no
    key (Grid'5000, IoT-LAB) is checked against your own known_hosts. `jump`: ProxyJump host
    (default: the testbed's access machine when the agent names one; "" for none)."""
    t = target_of(find(api, node))
    if not t.host_key:
        yield argv(t, None, identity, t.via if jump is None else jump, command or [])
        return
    with pinned_file(t, None) as path:
        yield argv(t, path, identity, t.via if jump is None else jump, command or [])
