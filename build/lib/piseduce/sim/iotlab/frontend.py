"""The emulated site's SSH frontend (`<site>.iot-lab.info` on the real testbed): SFTP only, public
key authentication with the keys the user registered through the API (`POST user/keys`, what
`iotlab-auth -k` sends), and in each user's home what the testbed writes there for them — the
consumption files of their experiments (`.iot-lab/<id>/consumption/*.oml`, consumption.py).

Each SFTP session sees a snapshot of its user's home written into a private temporary folder
(chrooted, removed when the session ends). The server runs on its own event loop in a thread: it
only reads the site (which the API's loop changes), never writes it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import asyncssh

from piseduce.sim.iotlab.model import Site


class _Auth(asyncssh.SSHServer):
    def __init__(self, site: Site) -> None:
        self.site = site

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        user = self.site.users.get(username)
        if user is None:
            return False
        offered = key.export_public_key("openssh").decode().split()[:2]
        return any(registered.split()[:2] == offered for registered in list(user.ssh_keys))


class _Home(asyncssh.SFTPServer):
    """A read-only snapshot of the user's home on the frontend."""

    def __init__(self, chan: asyncssh.SSHServerChannel, site: Site) -> None:
        login = str(chan.get_extra_info("username"))
        self._root = Path(tempfile.mkdtemp(prefix="iotlab-home-"))
        for relative, text in site.consumption_files(login).items():
            path = self._root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        super().__init__(chan, chroot=str(self._root).encode())

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        if pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_APPEND | asyncssh.FXF_TRUNC):
            raise asyncssh.SFTPPermissionDenied("the emulated frontend is read-only")
        return super().open(path, pflags, attrs)

    def exit(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)
        super().exit()


class Frontend:
    """`start()` serves on host:port (0: a free port) in a thread; `stop()` ends it."""

    def __init__(self, site: Site, host: str = "127.0.0.1", port: int = 0) -> None:
        self.site = site
        self.host = host
        self.port = port
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="iotlab-frontend")

    @property
    def known_hosts_line(self) -> str:
        """The line a client pins the frontend's host key with."""
        public = self.host_key.export_public_key("openssh").decode().split()[:2]
        return f"[{self.host}]:{self.port} {' '.join(public)}\n"

    async def _serve(self) -> None:
        self._server = await asyncssh.create_server(
            lambda: _Auth(self.site),
            self.host,
            self.port,
            server_host_keys=[self.host_key],
            sftp_factory=lambda chan: _Home(chan, self.site),
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    def start(self) -> Frontend:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()
