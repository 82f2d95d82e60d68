"""`piseduce agent gateway`: an SSH jump host that lets a user reach only the boards they hold.

Authorization is by key, not by user name: a client key is accepted when it is one of the
`ssh_keys` a DEPLOYED, unexpired reservation deployed, and it may then open direct-tcpip channels
only to those reservations' boards (by name or address) on their SSH port (the node's registered
`ssh_port`, else `gateway_board_port`). Everything else
(sessions: shells, exec, sftp, scp; remote forwarding; agent and X11 forwarding) is refused and
logged. The user name is one fixed name (`gateway_user`): OpenSSH's `-J user@host:port` then needs
no quoting (a PiSeduce identity is an e-mail address, whose '@' -J would split on).

A thread reads the reservations every `gateway_poll_seconds`; the channels to a board the key no
longer grants are closed at once, and the connection once the key grants nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.forward import SSHForwarder
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from piseduce.agent.lifecycle import DEPLOYED
from piseduce.agent.models import Reservation
from piseduce.config import AgentConfig
from piseduce.protocol import GatewayInfo

log = logging.getLogger(__name__)
# A flood's refusals: one log line per address per period, with how many were refused meanwhile.
REFUSAL_LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class Board:
    reservation_id: int
    owner: str
    name: str
    ip: str
    port: int  # its SSH port: the one port the gateway forwards to


# public key blob -> the boards that key may reach
Grants = dict[bytes, tuple[Board, ...]]


def key_blob(line: str) -> bytes | None:
    try:
        return bytes(asyncssh.import_public_key(line.strip()).public_data)
    except (asyncssh.KeyImportError, ValueError, TypeError):
        return None


def read_grants(
    sessions: sessionmaker[Session], now: dt.datetime | None = None, board_port: int = 22
) -> Grants:
    """Runs in a thread: the deployed reservations' keys and boards (a board's SSH port: its
    registered `ssh_port`, else `board_port`)."""
    now = now or dt.datetime.now(dt.UTC)
    grants: dict[bytes, list[Board]] = {}
    with sessions() as s:
        rows = s.scalars(select(Reservation).where(Reservation.status == DEPLOYED, Reservation.end > now))
        for r in rows:
            attrs = (r.node.attrs or {}) if r.node else {}
            port = attrs.get("ssh_port")
            port = port if isinstance(port, int) and 0 < port < 65536 else board_port
            board = Board(r.id, r.owner, r.node_name, r.node.ip if r.node else "", port)
            keys = (r.params or {}).get("ssh_keys") or []
            for line in keys if isinstance(keys, list) else []:
                blob = key_blob(str(line))
                if blob is not None:
                    grants.setdefault(blob, []).append(board)
    return {k: tuple(v) for k, v in grants.items()}


def host_key(path: Path) -> asyncssh.SSHKey:
    """The gateway's own key, made on first start (0600). The agent API makes it too when it starts
    first (it advertises the public half in /api/info): the key is written whole to a temporary
    file and linked into place, so whichever process comes second reads the first one's key."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        os.link(tmp, path)
    except FileExistsError:
        return asyncssh.read_private_key(str(path))
    finally:
        tmp.unlink(missing_ok=True)
    return key


def public_info(config: AgentConfig) -> GatewayInfo | None:
    """What /api/info says of the gateway: None unless `gateway_public_host` is set."""
    if not config.gateway_public_host:
        return None
    key = host_key(config.resolve(config.gateway_host_key_file))
    return GatewayInfo(
        host=config.gateway_public_host,
        port=config.gateway_advertised_port,
        user=config.gateway_user,
        host_key=" ".join(key.export_public_key().decode().split()[:2]),
    )


def known_hosts_line(key: asyncssh.SSHKey, host: str, port: int) -> str:
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key.export_public_key().decode().strip()}"


@dataclass
class Gateway:
    config: AgentConfig
    grants: Grants = field(default_factory=dict)
    unauthenticated: int = 0
    waiting: dict[str, int] = field(default_factory=dict)  # unauthenticated connections per address
    connections: set[GatewayServer] = field(default_factory=set)
    quiet: dict[str, tuple[float, int]] = field(default_factory=dict)  # address: (logged at, since)

    def admit(self, peer: str) -> str | None:
        """Why a new connection from `peer` is refused (None: it may try to log in). The waiting
        slots are shared, so one address holds at most its share (OpenSSH's PerSourceMaxStartups):
        idle connections from one place cannot lock every user out for the login grace time."""
        if self.unauthenticated >= self.config.gateway_max_unauthenticated:
            return "too many unauthenticated connections"
        if self.waiting.get(peer, 0) >= self.config.gateway_max_unauthenticated_per_address:
            return "too many unauthenticated connections from this address"
        self.unauthenticated += 1
        self.waiting[peer] = self.waiting.get(peer, 0) + 1
        return None

    def done_waiting(self, peer: str) -> None:
        self.unauthenticated -= 1
        left = self.waiting.get(peer, 0) - 1
        if left > 0:
            self.waiting[peer] = left
        else:
            self.waiting.pop(peer, None)

    def refused(self, peer: str, why: str, now: float) -> None:
        logged, since = self.quiet.get(peer, (0.0, 0))
        if now - logged < REFUSAL_LOG_EVERY_S:
            self.quiet[peer] = (logged, since + 1)
            return
        more = f" ({since} more since the last line)" if since else ""
        log.warning("gateway: refused %s: %s%s", peer, why, more)
        self.quiet[peer] = (now, 0)
        if len(self.quiet) > 10_000:  # many addresses: forget the oldest
            for old in sorted(self.quiet, key=lambda a: self.quiet[a][0])[:5_000]:
                del self.quiet[old]

    def allowed(self, blob: bytes | None, dest: str, port: int | None = None) -> Board | None:
        for board in self.grants.get(blob or b"", ()):
            if dest in (board.name, board.ip) and board.ip and port in (None, board.port):
                return board
        return None

    def update(self, grants: Grants) -> None:
        self.grants = grants
        for conn in list(self.connections):
            conn.recheck()


class _Forward(SSHForwarder):
    """One channel to a board; tells its connection when it closes (so a long-lived connection's
    list of open channels does not grow with every channel it ever opened)."""

    def __init__(self, peer: SSHForwarder, closed: Callable[[_Forward], object]) -> None:
        super().__init__(peer)
        self._closed: Callable[[_Forward], object] | None = closed

    def close(self) -> None:
        super().close()
        closed, self._closed = self._closed, None
        if closed is not None:
            closed(self)


class GatewayServer(asyncssh.SSHServer):
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = "?"
        self.blob: bytes | None = None
        self.authed = False
        self.waiting = False
        self.targets: set[str] = set()
        self.forwards: dict[str, list[_Forward]] = {}  # destination: its open channels

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.peer = str(conn.get_extra_info("peername", ("?",))[0])
        why = self.gw.admit(self.peer)
        if why is not None:
            self.gw.refused(self.peer, why, asyncio.get_running_loop().time())
            conn.abort()
            return
        self.waiting = True
        self.gw.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting:
            self.waiting = False
            self.gw.done_waiting(self.peer)
        self.gw.connections.discard(self)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        blob = bytes(key.public_data)
        if username != self.gw.config.gateway_user or blob not in self.gw.grants:
            log.warning("gateway: refused key %s for %r from %s", key.get_fingerprint(), username, self.peer)
            return False
        self.blob = blob
        return True

    def auth_completed(self) -> None:
        self.authed = True
        if self.waiting:
            self.waiting = False
            self.gw.done_waiting(self.peer)
        owners = sorted({b.owner for b in self.gw.grants.get(self.blob or b"", ())})
        log.info("gateway: %s logged in for %s", self.peer, ", ".join(owners))

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> Any:
        board = self.gw.allowed(self.blob, dest_host, dest_port)
        if board is None:
            # %r: a destination is the client's text (a newline in it would forge a log line).
            log.warning("gateway: refused forwarding to %r:%s from %s", dest_host, dest_port, self.peer)
            mine = self.gw.allowed(self.blob, dest_host)
            why = f"only port {mine.port} of your boards" if mine is not None else "not one of your boards"
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, why)
        log.info("gateway: %s forwards to %s (%s) for %s", self.peer, board.name, board.ip, board.owner)
        self.targets.add(dest_host)
        return self._forward(dest_host, board.ip, dest_port)

    async def _forward(self, dest: str, ip: str, port: int) -> Any:
        """asyncssh's forward_connection, with a channel that leaves `forwards` as it closes."""
        try:
            _, peer = await asyncio.get_running_loop().create_connection(SSHForwarder, ip, port)
        except OSError as exc:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
        channels = self.forwards.setdefault(dest, [])

        def closed(f: _Forward) -> None:
            if f in channels:
                channels.remove(f)

        forwarder = _Forward(peer, closed)
        channels.append(forwarder)
        return forwarder

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        log.warning("gateway: refused remote forwarding %r:%s from %s", listen_host, listen_port, self.peer)
        return False

    def session_requested(self) -> bool:
        log.warning("gateway: refused a session (shell, command, sftp) from %s", self.peer)
        return False

    def recheck(self) -> None:
        """Close the channels to boards the key no longer grants (the others on the same
        connection go on: a ControlMaster, or -L to two boards), and the connection once the key
        grants nothing."""
        if not self.authed or self.conn is None:
            return
        if self.blob not in self.gw.grants:
            log.info("gateway: reservations over, closing %s", self.peer)
            self.conn.close()
            return
        for target in [t for t in self.targets if self.gw.allowed(self.blob, t) is None]:
            log.info("gateway: reservation over, closing %s's forwards to %r", self.peer, target)
            self.targets.discard(target)
            for forwarder in self.forwards.pop(target, []):
                forwarder.close()


async def serve(
    config: AgentConfig, sessions: sessionmaker[Session], stop: asyncio.Event, host: str | None = None
) -> None:
    gw = Gateway(config)
    gw.grants = await asyncio.to_thread(read_grants, sessions, None, config.gateway_board_port)
    key = host_key(config.resolve(config.gateway_host_key_file))
    server = await asyncssh.create_server(
        lambda: GatewayServer(gw),
        host if host is not None else config.host,
        config.gateway_port,
        server_host_keys=[key],
        login_timeout=config.gateway_login_grace_seconds,
        agent_forwarding=False,
        x11_forwarding=False,
        allow_scp=False,
        sftp_factory=None,
    )
    log.info("gateway: listening on port %s, host key %s", config.gateway_port, key.get_fingerprint())
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), config.gateway_poll_seconds)
            try:
                gw.update(await asyncio.to_thread(read_grants, sessions, None, config.gateway_board_port))
            except Exception:  # a database hiccup: keep the last grants, try next round
                log.exception("gateway: cannot read the reservations")
    finally:
        server.close()
        for conn in list(gw.connections):
            if conn.conn is not None:
                conn.conn.close()
        await server.wait_closed()


async def run_gateway(config: AgentConfig, stop: asyncio.Event | None = None) -> None:
    from piseduce.agent.daemon import run_daemon

    async def body(sessions: sessionmaker[Session], driver: object, stop: asyncio.Event) -> None:
        await serve(config, sessions, stop)

    await run_daemon(config, body, tables=("nodes", "reservations"), stop=stop)
