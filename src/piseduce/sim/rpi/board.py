"""One simulated Raspberry Pi: power state machine, boot, SSH server, power draw and temperature."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from piseduce.node.board import CPUINFO_ENV, THERMAL_ENV
from piseduce.sim.rpi import shell
from piseduce.sim.rpi.systems import NoSystem, System, decide

if TYPE_CHECKING:
    from piseduce.sim.rpi.cluster import ClusterOptions

log = logging.getLogger(__name__)

MODELS = {
    # model: (revision code, model string, MAC OUI)
    "RPI3B+": ("a020d3", "Raspberry Pi 3 Model B Plus Rev 1.3", "b8:27:eb"),
    "RPI4B2G": ("b03114", "Raspberry Pi 4 Model B Rev 1.4", "dc:a6:32"),
    "RPI4B4G": ("c03114", "Raspberry Pi 4 Model B Rev 1.4", "dc:a6:32"),
    "RPI4B8G": ("d03114", "Raspberry Pi 4 Model B Rev 1.4", "dc:a6:32"),
}
CARD_SIZE = 16 * 1024**3  # apparent size; the file stays sparse
AMBIENT_C = 30.0
THERMAL_TAU_S = 120.0  # simulated seconds


@dataclass
class Identity:
    name: str
    port: int
    model: str
    serial: str
    mac: str
    ssh_port: int = 0


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
    def __init__(self, board: Board, system: System) -> None:
        self.board = board
        self.system = system
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.board.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.board.connections.discard(self.conn)

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


class Board:
    def __init__(self, identity: Identity, opts: ClusterOptions, state_dir: Path,
                 host_key: asyncssh.SSHKey, nfs_host_key: asyncssh.SSHKey, rng: random.Random) -> None:
        self.identity = identity
        self.opts = opts
        self.state_dir = state_dir
        self.host_key = host_key
        self.nfs_host_key = nfs_host_key
        self.rng = rng
        self.card_path = state_dir / "sdcard.img"
        self.fail_next_boots = 0
        self.never_boot = False
        self.boots = 0
        self.last_boot_error = ""
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._powered = False
        self._system = "off"
        self._sock: socket.socket | None = reserve_port(opts.host, identity.ssh_port)
        identity.ssh_port = self._sock.getsockname()[1]
        self._server: asyncssh.SSHAcceptor | None = None
        self._boot_task: asyncio.Task[None] | None = None
        self._helpers: set[asyncio.subprocess.Process] = set()
        self._temp_c = AMBIENT_C
        self._temp_at = self._sim_now()
        self._prepare_state()

    # -- identity and files ------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def powered(self) -> bool:
        return self._powered

    @property
    def system(self) -> str:
        return self._system

    @property
    def ssh_port(self) -> int:
        return self.identity.ssh_port

    def _prepare_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.card_path.exists():
            with open(self.card_path, "wb") as f:
                f.truncate(CARD_SIZE)
        (self.state_dir / "cpuinfo").write_text(self.cpuinfo())

    def cpuinfo(self) -> str:
        revision, model_name, _ = MODELS[self.identity.model]
        part = "0xd08" if self.identity.model.startswith("RPI4") else "0xd03"
        cores = "".join(
            f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
            f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\n"
            "CPU revision\t: 3\n\n"
            for i in range(4)
        )
        return (f"{cores}Hardware\t: BCM2835\nRevision\t: {revision}\n"
                f"Serial\t\t: 10000000{self.identity.serial}\nModel\t\t: {model_name}\n")

    def helper_env(self) -> dict[str, str]:
        thermal = self.state_dir / "thermal_zone0_temp"
        thermal.write_text(f"{self.temperature_mc()}\n")
        return {
            "PISEDUCE_NODE_DEVICE": str(self.card_path),
            CPUINFO_ENV: str(self.state_dir / "cpuinfo"),
            THERMAL_ENV: str(thermal),
        }

    # -- power and temperature ---------------------------------------------------------------
    def _sim_now(self) -> float:
        return time.monotonic() * self.opts.time_scale

    def power_mw(self) -> int:
        if not self._powered:
            return 0
        base = {"booting": 3400, "none": 2100}.get(self._system, 2700)
        busy = min(len(self._helpers), 2) * 2300
        return base + busy + self.rng.randint(-40, 40)

    def temperature_mc(self) -> int:
        now = self._sim_now()
        target = AMBIENT_C + self.power_mw() / 1000.0 * 6.0
        self._temp_c += (target - self._temp_c) * (1 - math.exp(-(now - self._temp_at) / THERMAL_TAU_S))
        self._temp_at = now
        return int(self._temp_c * 1000) // 100 * 100 + self.rng.randint(0, 9) * 10

    def power_on(self) -> None:
        if self._powered:
            return
        self._powered = True
        self.temperature_mc()  # settle the thermal model at the old power level
        self._start_boot()

    def power_off(self) -> None:
        if not self._powered:
            return
        self.temperature_mc()
        self._powered = False
        self._system = "off"
        if self._boot_task is not None:
            self._boot_task.cancel()
            self._boot_task = None
        self._shutdown()

    def soft_reboot(self) -> None:
        """`reboot`: the exit status goes out, then SSH drops and the board boots again."""
        async def later() -> None:
            await asyncio.sleep(0.05)
            if self._powered:
                self._shutdown()
                self._start_boot()

        if self._boot_task is not None:
            self._boot_task.cancel()
        self._boot_task = asyncio.create_task(later(), name=f"reboot-{self.name}")

    def _start_boot(self) -> None:
        self._system = "booting"
        current = asyncio.current_task()
        if self._boot_task is not None and self._boot_task is not current:
            self._boot_task.cancel()
        self._boot_task = asyncio.create_task(self._boot(), name=f"boot-{self.name}")

    def _shutdown(self) -> None:
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()
        for proc in list(self._helpers):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if self._server is not None:
            self._server.close()
            self._server = None
            # the listening socket went with the server: bind the port again, refusing connections
            self._rebind()

    def _rebind(self) -> None:
        try:
            self._sock = reserve_port(self.opts.host, self.identity.ssh_port, fallback=False)
        except OSError:  # retried at the next boot
            self._sock = None

    async def _boot(self) -> None:
        await asyncio.sleep(self.opts.boot_delay / self.opts.time_scale)
        self.boots += 1
        try:
            if self.never_boot:
                raise NoSystem("fault knob never_boot")
            if self.fail_next_boots > 0:
                self.fail_next_boots -= 1
                raise NoSystem("fault knob fail_next_boots")
            if self.opts.boot_failure_rate and self.rng.random() < self.opts.boot_failure_rate:
                raise NoSystem("random boot failure")
            folder = self.opts.tftp_root / self.identity.serial
            system = await asyncio.to_thread(decide, folder, self.card_path, self.opts.nfs_root)
            if system.ssh_enabled:
                await self._start_ssh(system)
        except NoSystem as exc:
            self.last_boot_error = str(exc)
            self._system = "none"
            log.info("%s: no system (%s)", self.name, exc)
            return
        self.last_boot_error = ""
        self._system = system.kind
        log.info("%s: booted %s (%s)", self.name, system.kind, system.hostname)

    async def _start_ssh(self, system: System) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            sock = reserve_port(self.opts.host, self.identity.ssh_port, fallback=False)
        key = self.nfs_host_key if system.kind == "nfs" else self.host_key
        try:
            sock.listen(100)
            sock.setblocking(False)
            self._server = await self._listen(sock, system, key)
        except BaseException:
            sock.close()
            self._rebind()
            raise

    async def _listen(
        self, sock: socket.socket, system: System, key: asyncssh.SSHKey
    ) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
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

    # -- sessions ----------------------------------------------------------------------------
    async def _handle(self, process: asyncssh.SSHServerProcess[Any], system: System) -> None:
        user = process.get_extra_info("username")
        session = shell.Session(self, system, user, process.stdin, process.stdout, process.stderr)
        conn = process.channel.get_connection()
        drop = self.opts.ssh_drop_rate > 0 and self.rng.random() < self.opts.ssh_drop_rate
        if process.command is None:
            task = asyncio.ensure_future(shell.interactive(session))
        else:
            task = asyncio.ensure_future(self._exec(session, process.command))
        if drop:
            # the network drops the connection at a random moment of the command
            await asyncio.wait({task}, timeout=self.rng.uniform(0.0, 0.3))
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

    def helper_started(self, proc: asyncio.subprocess.Process) -> None:
        self.temperature_mc()
        self._helpers.add(proc)

    def helper_finished(self, proc: asyncio.subprocess.Process) -> None:
        self.temperature_mc()
        self._helpers.discard(proc)

    async def close(self) -> None:
        if self._boot_task is not None:
            self._boot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._boot_task
            self._boot_task = None
        self._powered = False
        self._system = "off"
        self._shutdown()
        for proc in list(self._helpers):
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ip": self.opts.host,
            "ssh_port": self.ssh_port,
            "port": self.identity.port,
            "model": self.identity.model,
            "serial": self.identity.serial,
            "mac": self.identity.mac,
            "nfs_host_key": self.nfs_host_key.export_public_key("openssh").decode().strip(),
            "host_key": self.host_key.export_public_key("openssh").decode().strip(),
        }
