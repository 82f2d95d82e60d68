"""The in-process boards: an asyncssh server per board on a loopback port with a small command
set (`shell`), for machines where network namespaces are impossible (not root).

Kept only as a fallback: the real mode (`realsys`) runs Debian's sshd and a real userland.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import socket
from typing import TYPE_CHECKING, Any

import asyncssh

from piseduce.sim.rpi import shell
from piseduce.sim.rpi.drop_session import DROP_WINDOW_S
from piseduce.sim.rpi.systems import System

if TYPE_CHECKING:
    from piseduce.sim.rpi.board import Board


def reserve_port(host: str, port: int = 0, *, fallback: bool = True) -> socket.socket:
    """A bound, not listening, socket: connections are refused until the board's sshd starts.

    With fallback, a port already taken (a persisted port after a restart) is replaced by a free one.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        if port == 0 or not fallback:
            sock.close()
            raise
        sock.bind((host, 0))
    return sock


class _SshServer(asyncssh.SSHServer):
    def __init__(self, runtime: InProcessRuntime, system: System) -> None:
        self.runtime = runtime
        self.system = system
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.runtime.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.runtime.connections.discard(self.conn)

    def begin_auth(self, username: str) -> bool:
        if self.conn is not None:
            keys = _import_keys(self.system.keys_for(username))
            if keys is not None:
                self.conn.set_authorized_keys(keys)
        return True

    def password_auth_supported(self) -> bool:
        return self.system.kind == "deployed"

    def validate_password(self, username: str, password: str) -> bool:
        return self.system.password_ok(username, password)


def _import_keys(text: str) -> asyncssh.SSHAuthorizedKeys | None:
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:  # one bad line must not lock every key out, as with OpenSSH
            asyncssh.import_authorized_keys(line)
        except (ValueError, asyncssh.KeyImportError):
            continue
        lines.append(line)
    return asyncssh.import_authorized_keys("\n".join(lines) + "\n") if lines else None


class InProcessRuntime:
    """A board's SSH server inside the simulator's process, on its own loopback port."""

    mode = "in-process"

    def __init__(self, board: Board) -> None:
        self.board = board
        self.host = board.opts.host
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._sock: socket.socket | None = reserve_port(self.host, board.identity.ssh_port)
        board.identity.ssh_port = self._sock.getsockname()[1]
        self._server: asyncssh.SSHAcceptor | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.board.identity.ssh_port

    async def link(self, up: bool) -> None:
        return None  # loopback has no link to take down

    async def start(self, system: System) -> None:
        if not system.ssh_enabled:
            return
        sock, self._sock = self._sock, None
        if sock is None:
            sock = reserve_port(self.host, self.board.identity.ssh_port, fallback=False)
        # a deployed system serves its card's key, as the real board's sshd reads its /etc/ssh
        key = (self.board.nfs_host_key if system.kind == "nfs"
               else asyncssh.import_private_key(system.host_key))
        try:
            sock.listen(100)
            sock.setblocking(False)
            self._server = await asyncssh.listen(
                sock=sock,
                server_factory=lambda: _SshServer(self, system),
                server_host_keys=[key],
                process_factory=lambda process: self._handle(process, system),
                encoding=None,
                allow_scp=False,
                agent_forwarding=False,
                x11_forwarding=False,
                login_timeout=30,
            )
        except BaseException:
            sock.close()
            self._rebind()
            raise

    def cut(self) -> None:
        """Power gone: every connection drops at once, the port refuses connections."""
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
            # the listening socket went with the server: bind the port again, refusing connections
            self._rebind()

    async def halt(self) -> None:
        self.cut()

    def _rebind(self) -> None:
        try:
            self._sock = reserve_port(self.host, self.board.identity.ssh_port, fallback=False)
        except OSError:  # retried at the next boot
            self._sock = None

    async def close(self) -> None:
        self.cut()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _handle(self, process: asyncssh.SSHServerProcess[Any], system: System) -> None:
        board = self.board
        user = process.get_extra_info("username")
        session = shell.Session(board, system, user, process.stdin, process.stdout, process.stderr)
        conn = process.channel.get_connection()
        drop = board.opts.ssh_drop_rate > 0 and board.rng.random() < board.opts.ssh_drop_rate
        if process.command is None:
            task = asyncio.ensure_future(shell.interactive(session))
        else:
            task = asyncio.ensure_future(self._exec(session, process.command))
        if drop:
            # the network drops the connection at a random moment of the command, or at its end:
            # before its exit status goes out (the real mode's `drop_session` does the same)
            await asyncio.wait({task}, timeout=board.rng.uniform(0.0, DROP_WINDOW_S))
            conn.abort()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            return
        try:
            status = await task
        except (asyncssh.Error, OSError, asyncio.CancelledError):
            task.cancel()
            return
        with contextlib.suppress(asyncssh.Error, OSError, BrokenPipeError):
            process.exit(status)

    async def _exec(self, session: shell.Session, command: str) -> int:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            session.err(f"bash: {exc}\n")
            return 2
        return await shell.run(session, argv)
