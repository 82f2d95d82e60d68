"""How a user reaches a board through the agent's SSH gateway, as text to copy: the one-line
`ssh -J` command, a `~/.ssh/config` block (a Host for the gateway, one per board) and the
known_hosts lines it points at (the gateway's key and each board's pinned key), strictly checked.
One builder for Manage, the user API and `pisctl ssh-config`, so the three always agree.

Every piece is checked before it is printed: a value with a space or a newline would add
directives to the user's ssh config."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

HOST_RE = re.compile(r"[A-Za-z0-9_.:%\[\]][A-Za-z0-9_.:%\[\]-]{0,252}")
USER_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}")
KEY_RE = re.compile(r"(ssh-|ecdsa-|sk-)[A-Za-z0-9@._-]{1,60} [A-Za-z0-9+/]{16,16384}={0,3}")
# Where the block says the keys are; the user saves the known_hosts lines there.
DEFAULT_KNOWN_HOSTS = "~/.ssh/piseduce_known_hosts"


class GatewayFields(Protocol):
    """What an agent says of its gateway (its /api/info `gateway`, a connection's `gateway`)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def user(self) -> str: ...
    @property
    def host_key(self) -> str: ...


@dataclass(frozen=True)
class Gateway:
    host: str
    port: int
    user: str
    host_key: str  # "type base64"

    @classmethod
    def of(cls, said: GatewayFields) -> Gateway:
        return cls(said.host, said.port, said.user, said.host_key)

    @property
    def jump(self) -> str:
        return f"{self.user}@{self.host}" + ("" if self.port == 22 else f":{self.port}")

    @property
    def alias(self) -> str:
        return "piseduce-gw-" + re.sub(r"[^A-Za-z0-9_.-]", "-", self.host)


@dataclass(frozen=True)
class Board:
    name: str  # its Host in the block
    host: str  # its address on the board network
    port: int
    user: str
    host_key: str  # "type base64", "" when none is pinned


def _name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _key(key: str) -> str:
    return " ".join(key.split()[:2])


def _one_line_key(key: str) -> bool:
    """A key as an agent pins it ("type base64 [comment]"), one line: a newline in it means the
    agent's answer is not what it seems; nothing of it is printed."""
    return bool(KEY_RE.fullmatch(_key(key))) and all(c.isprintable() for c in key)


def usable(gw: Gateway, b: Board) -> bool:
    words = (gw.host, b.host, b.name)
    return (
        all(HOST_RE.fullmatch(w) for w in words)
        and all(USER_RE.fullmatch(u) for u in (gw.user, b.user))
        and _one_line_key(gw.host_key)
        and (not b.host_key or _one_line_key(b.host_key))
        and 0 < gw.port < 65536
        and 0 < b.port < 65536
    )


def command(gw: Gateway, b: Board) -> str:
    port = "" if b.port == 22 else f"-p {b.port} "
    return f"ssh -J {gw.jump} {port}{b.user}@{b.host}"


def known_hosts(gw: Gateway, boards: list[Board]) -> str:
    lines = [f"{_name(gw.host, gw.port)} {_key(gw.host_key)}"]
    lines += [f"{_name(b.host, b.port)} {_key(b.host_key)}" for b in boards if b.host_key]
    return "\n".join(dict.fromkeys(lines)) + "\n"


def ssh_config(
    gw: Gateway, boards: list[Board], known_hosts_file: str = DEFAULT_KNOWN_HOSTS, identity: str = ""
) -> str:
    """`identity`: a private key file for both hops (the gateway takes the key deployed with)."""
    strict = f"  UserKnownHostsFile {known_hosts_file}\n  StrictHostKeyChecking yes\n"
    if identity:
        strict += f"  IdentityFile {identity}\n  IdentitiesOnly yes\n"
    out = [
        f"Host {gw.alias}\n  HostName {gw.host}\n  Port {gw.port}\n  User {gw.user}\n"
        f"  ProxyJump none\n{strict}"
    ]
    for b in boards:
        out.append(
            f"Host {b.name}\n  HostName {b.host}\n  Port {b.port}\n  User {b.user}\n"
            f"  ProxyJump {gw.alias}\n{strict}"
        )
    return "\n".join(out)


@dataclass(frozen=True)
class Jump:
    """What Manage, the API and pisctl show of one board behind the gateway."""

    command: str
    ssh_config: str
    known_hosts: str


def jump(gw: Gateway, b: Board, known_hosts_file: str = DEFAULT_KNOWN_HOSTS) -> Jump | None:
    if not usable(gw, b):
        return None
    return Jump(command(gw, b), ssh_config(gw, [b], known_hosts_file), known_hosts(gw, [b]))


def board_of(node: str, conn: dict[str, object]) -> Board | None:
    """A deployed board from an agent's connection info (host, port, user, host_key)."""
    host, port, user, key = conn.get("host"), conn.get("port") or 22, conn.get("user"), conn.get("host_key")
    if not isinstance(host, str) or not isinstance(user, str) or not isinstance(port, int):
        return None
    return Board(node, host, port, user, key if isinstance(key, str) else "")
