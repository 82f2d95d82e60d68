"""One simulated Raspberry Pi: power state machine, boot, power draw and temperature.

What runs once it has booted is its runtime's: the real mode (`realsys`: a network namespace and
Debian's sshd over the root filesystem of its card) or the in-process fallback (`inproc`). The
board serialises what it asks of its runtime (link up, boot, halt, link down) so that a power cut
during a boot, or a power-on right after a cut, happen in the order a real board would see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import asyncssh

from piseduce.node.board import CPUINFO_ENV, THERMAL_ENV
from piseduce.private_files import make_private_dir
from piseduce.sim.rpi import TEMPLATE
from piseduce.sim.rpi.bounded import StopTimeout, stop_task, wait_process
from piseduce.sim.rpi.card import CardSpeed
from piseduce.sim.rpi.mode import IN_PROCESS
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
CLOSE_TIMEOUT_S = 60.0  # for a power cut to complete (a halt: 10 s at most in netd, a link change)


class Runtime(Protocol):
    """What runs a booted board's system (see `inproc` and `realsys`)."""

    mode: str

    @property
    def address(self) -> tuple[str, int]: ...

    async def link(self, up: bool) -> None: ...

    async def start(self, system: System) -> None: ...

    def cut(self) -> None: ...

    async def halt(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Identity:
    name: str
    port: int
    model: str
    serial: str
    mac: str
    ssh_port: int = 0


class Board:
    def __init__(self, identity: Identity, opts: ClusterOptions, state_dir: Path,
                 nfs_host_key: asyncssh.SSHKey, rng: random.Random) -> None:
        self.identity = identity
        self.opts = opts
        self.state_dir = state_dir
        self.nfs_host_key = nfs_host_key
        self.rng = rng
        self.card_path = state_dir / "sdcard.img"
        self.card_speed = CardSpeed()  # unlimited; the cluster sets the configured speed
        self.fail_next_boots = 0
        self.glitching = False  # power lost while the PoE port stays enabled (power_glitch)
        self.never_boot = False
        self.boots = 0
        self.last_boot_error = ""
        self.runtime: Runtime | None = None  # set by the cluster
        self.real_helpers = 0  # piseduce-node processes running on a real-mode board
        self.cpu_cores = 0.0  # CPU a real-mode board used lately, in cores
        self._powered = False
        self._system = "off"
        self._boot_task: asyncio.Task[None] | None = None
        self._down_task: asyncio.Task[None] | None = None
        self._ops = asyncio.Lock()  # one runtime operation at a time, in order
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
        return self.address[1]

    @property
    def address(self) -> tuple[str, int]:
        """Where the board's SSH server answers (once booted)."""
        assert self.runtime is not None
        return self.runtime.address

    @property
    def thermal_path(self) -> Path:
        return self.state_dir / "thermal_zone0_temp"

    def _prepare_state(self) -> None:
        # The card holds what users deploy (password hashes, keys): the simulated boards' owner only.
        make_private_dir(self.state_dir)
        if not self.card_path.exists():
            fd = os.open(self.card_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.truncate(CARD_SIZE)
        (self.state_dir / "cpuinfo").write_text(self.cpuinfo())
        self.write_thermal()

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

    def write_thermal(self) -> None:
        """The sensor file a real-mode board shows as /sys/class/thermal/thermal_zone0/temp: written
        in place, fixed width, so that a reader never sees it half written or empty."""
        text = f"{max(0, min(self.temperature_mc(), 99999)):05d}\n".encode()
        fd = os.open(self.thermal_path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, text, 0)
            os.ftruncate(fd, len(text))
        finally:
            os.close(fd)

    def helper_command(self) -> list[str]:
        """How the in-process netboot system runs `piseduce-node`: the real helper, at this card's speed."""
        if self.card_speed.limited:
            return [sys.executable, "-m", "piseduce.sim.rpi.card", *self.card_speed.argv(), "--"]
        return [sys.executable, "-m", "piseduce.node.cli"]

    def helper_env(self) -> dict[str, str]:
        self.write_thermal()
        return {
            "PISEDUCE_NODE_DEVICE": str(self.card_path),
            CPUINFO_ENV: str(self.state_dir / "cpuinfo"),
            THERMAL_ENV: str(self.thermal_path),
        }

    # -- power and temperature ---------------------------------------------------------------
    def _sim_now(self) -> float:
        return time.monotonic() * self.opts.time_scale

    def power_mw(self) -> int:
        if not self._powered:
            return 0
        base = {"booting": 3400, "none": 2100}.get(self._system, 2700)
        units = max(len(self._helpers) + self.real_helpers, self.cpu_cores)
        busy = int(min(units, 2) * 2300)
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
        self._cut()
        self._down_task = asyncio.create_task(self._power_down(), name=f"power-down-{self.name}")

    async def _power_down(self) -> None:
        async with self._ops:
            if self.runtime is not None:
                await self.runtime.halt()
                if not self._powered:
                    await self.runtime.link(False)

    async def settled(self) -> None:
        """Until the last power cut is complete (the system halted, the link down)."""
        task = self._down_task
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    def power_glitch(self, seconds: float) -> asyncio.Task[None]:
        """Fault knob: the board loses power for `seconds` (simulated) while its PoE port stays
        enabled, as in a brownout or a loose cable; then it boots again like at any power on."""
        async def glitch() -> None:
            self.glitching = True
            try:
                self.power_off()
                await asyncio.sleep(seconds / self.opts.time_scale)
            finally:
                self.glitching = False
            self.power_on()

        log.info("%s: power glitch of %.1f s", self.name, seconds)
        return asyncio.create_task(glitch(), name=f"glitch-{self.name}")

    def soft_reboot(self) -> None:
        """`reboot` (in-process boards): the exit status goes out, then SSH drops and the board
        boots again."""
        async def later() -> None:
            await asyncio.sleep(0.05)
            if self._powered:
                self._cut()
                self._start_boot()

        if self._boot_task is not None:
            self._boot_task.cancel()
        self._boot_task = asyncio.create_task(later(), name=f"reboot-{self.name}")

    def system_ended(self, reason: str, detail: str = "") -> None:
        """A real-mode system stopped by itself: `reboot` boots again, `poweroff` (or a crash)
        leaves the board powered with no system until its power is cycled."""
        if not self._powered:
            return
        log.info("%s: system ended (%s) %s", self.name, reason, detail)
        if reason == "reboot":
            self._start_boot()
            return
        self._system = "none"
        self.last_boot_error = "halted" if reason == "poweroff" else f"system crashed: {detail}"

    def _start_boot(self) -> None:
        self._system = "booting"
        current = asyncio.current_task()
        if self._boot_task is not None and self._boot_task is not current:
            self._boot_task.cancel()
        self._boot_task = asyncio.create_task(self._boot(), name=f"boot-{self.name}")

    def _cut(self) -> None:
        if self.runtime is not None:
            self.runtime.cut()
        for proc in list(self._helpers):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def _boot(self) -> None:
        await self.settled()
        assert self.runtime is not None
        async with self._ops:
            await self.runtime.halt()  # after a reboot: the previous system is gone for good
            await self.runtime.link(True)
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
            if not folder.exists():
                # A board nobody registered: the TFTP server's fallback, the netboot template
                # (the agent's detection path, tftp.TEMPLATE).
                folder = self.opts.tftp_root / TEMPLATE
            system = await asyncio.to_thread(decide, folder, self.card_path, self.opts.nfs_root,
                                             make_host_key=self.runtime.mode == IN_PROCESS)
            async with self._ops:
                await self.runtime.start(system)
        except NoSystem as exc:
            self.last_boot_error = str(exc)
            self._system = "none"
            log.info("%s: no system (%s)", self.name, exc)
            return
        self.last_boot_error = ""
        self._system = system.kind
        self.write_thermal()
        log.info("%s: booted %s (%s)", self.name, system.kind, system.hostname)

    def helper_started(self, proc: asyncio.subprocess.Process) -> None:
        self.temperature_mc()
        self._helpers.add(proc)

    def helper_finished(self, proc: asyncio.subprocess.Process) -> None:
        self.temperature_mc()
        self._helpers.discard(proc)

    async def close(self) -> None:
        """Power gone for good; every wait bounded (StopTimeout names what did not end)."""
        await stop_task(self._boot_task, f"the boot of {self.name}")
        self._boot_task = None
        self._powered = False
        self._system = "off"
        self._cut()
        if self._down_task is not None:
            await asyncio.wait({self._down_task}, timeout=CLOSE_TIMEOUT_S)
            if not self._down_task.done():
                raise StopTimeout(f"the power cut of {self.name} did not end within {CLOSE_TIMEOUT_S:g} s")
        for proc in list(self._helpers):
            await wait_process(proc, f"a piseduce-node helper of {self.name}", CLOSE_TIMEOUT_S)
        if self.runtime is not None:
            await self.runtime.close()

    def describe(self) -> dict[str, Any]:
        ip, port = self.address
        return {
            "name": self.name,
            "ip": ip,
            "ssh_port": port,
            "port": self.identity.port,
            "model": self.identity.model,
            "serial": self.identity.serial,
            "mac": self.identity.mac,
            "nfs_host_key": self.nfs_host_key.export_public_key("openssh").decode().strip(),
        }
