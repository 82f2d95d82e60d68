"""Node detection (issue 16): power a switch's ports on, let each board netboot the detection path
(the netboot template a board nobody registered boots, tftp.TEMPLATE), read its serial, model, MAC
and card size with `piseduce-node info` over SSH, register it under a name from a pattern, power
the port off. Ports are detected concurrently; each ends `registered` or `failed` with a reason.

Where a board is reached: on a DHCP network (`dhcp_leases_file` set), at the address dnsmasq's
lease file shows for it once it has asked (a board nobody registered gets one of the dynamic
range); it is then registered with a free static address (`free_address`), which the dnsmasq file
detection rewrites gives it at its next power-on. Without DHCP, at the board network's per-port
rule (`port_address`).

A lease says which board (MAC) asked, not on which port: on a DHCP network, ports are powered on
one at a time until each one's board has its lease (or the port failed); reading the boards'
`piseduce-node info` and registering them stay concurrent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal

from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry import tftp
from piseduce.agent.drivers.raspberry.netconfig import BoardNetwork
from piseduce.agent.drivers.raspberry.ops import NFS_HOSTNAME, TIMEOUTS, RpiOps
from piseduce.agent.drivers.raspberry.power import PowerError
from piseduce.agent.drivers.raspberry.snmp import SwitchInfo

log = logging.getLogger(__name__)

PortStep = Literal["waiting", "powering", "booting", "reading", "registering", "registered", "failed"]
PATTERN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\{port\}[A-Za-z0-9._-]*$|^\{port\}[A-Za-z0-9._-]*$")
PORT_ADDRESS_BASE = 9  # port p's board at the network's address + 9 + p (the .1 is the pimaster)
INFO = ["piseduce-node", "info"]


class DetectError(ValueError):
    """Bad input: nothing was powered or registered."""


def name_for(pattern: str, port: int) -> str:
    if not PATTERN_RE.match(pattern) or pattern.count("{port}") != 1:
        raise DetectError(
            f"pattern {pattern!r} must hold {{port}} once, with letters, digits and . _ - around it "
            "(e.g. pi-{port})"
        )
    return pattern.replace("{port}", str(port))


def port_address(net: BoardNetwork, port: int) -> IPv4Address:
    return net.network.network_address + PORT_ADDRESS_BASE + port


def free_address(net: BoardNetwork, port: int, taken: set[str]) -> IPv4Address | None:
    """A static address for the board of `port`: its per-port address when free, else the first
    host address that is no node's, not the pimaster's and outside the dynamic range."""

    def free(ip: IPv4Address) -> bool:
        in_range = net.dhcp_range is not None and net.dhcp_range[0] <= ip <= net.dhcp_range[1]
        edges = (net.network.network_address, net.network.broadcast_address)
        return ip in net.network and ip not in edges and ip != net.server and str(ip) not in taken \
            and not in_range

    preferred = port_address(net, port)
    if free(preferred):
        return preferred
    return next((ip for ip in net.network.hosts() if free(ip)), None)


def read_leases(path: Path) -> dict[str, tuple[str, str]]:
    """dnsmasq's lease file (`expiry mac ip name client-id` per line): MAC -> (address, expiry);
    a missing or unreadable file is no lease."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    out: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            try:
                IPv4Address(fields[2])
            except ValueError:
                continue
            out[fields[1].lower()] = (fields[2], fields[0])
    return out


# dnsmasq writes a lease's expiry in whole seconds, and rewrites its lease file only when a lease
# changes: a board that asks again within the second of its previous lease (a known board powered
# off and re-detected at once) leaves the file as it was and would look as if it never asked.
LEASE_RESOLUTION_S = 1.0


async def lease_second_past(path: Path) -> None:
    """Until the lease file's last write is a whole second old (at most LEASE_RESOLUTION_S): from
    then on, any lease dnsmasq grants has an expiry no lease in the file has."""
    try:
        written = (await asyncio.to_thread(path.stat)).st_mtime
    except OSError:
        return  # no file yet: any lease is new
    wait = written + LEASE_RESOLUTION_S - time.time()
    if wait > 0:
        await asyncio.sleep(min(wait, LEASE_RESOLUTION_S))


def _memory(value: object) -> int | float | None:
    """The board's memory_gb if it is a plausible number (the board's word: anything else is
    not learnt)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1024:
        return None
    return value


@dataclass
class PortDetection:
    port: int
    name: str
    step: PortStep = "waiting"
    reason: str = ""
    ip: str = ""
    serial: str = ""
    model: str = ""
    mac: str = ""
    card_size: int = 0
    updated: bool = False  # a known board (same serial): its row was updated


@dataclass
class Found:
    """What a board's netboot system said of itself, and the host key it offered (recorded)."""

    ip: str  # where it answered (on a DHCP network: its lease, maybe of the dynamic range)
    ssh_port: int
    serial: str
    model: str
    mac: str
    card_size: int
    host_key: str
    dhcp: bool = False  # reached by its DHCP lease: registered with a static address of its own
    memory_gb: int | float | None = None  # from its revision code; None: not said (kept as it was)


Register = Callable[[PortDetection, Found], bool]  # registers (True: an existing row updated)


@dataclass
class Detection:
    """One detection job: its ports' progress, read by the API while it runs."""

    id: str
    switch: str
    ports: list[PortDetection]
    started: float = field(default_factory=time.time)
    done: bool = False

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "switch": self.switch, "done": self.done, "started": self.started,
                "ports": [asdict(p) for p in self.ports]}


class Detector:
    """Detects ports with the driver's SNMP power code and the agent's SSH key."""

    def __init__(self, ops: RpiOps, leases_file: Path | None = None, *,
                 netboot: dict[int, str] | None = None) -> None:
        self.ops = ops
        # port -> serial of the board registered there: its TFTP folder may hold its card's boot
        # files (a deployment's); detection points it at the netboot template before power-on.
        self.netboot = netboot or {}
        self.leases_file = leases_file  # None: no DHCP on the board network
        self._power_on_turn = asyncio.Lock()
        self._claimed: set[str] = set()  # MACs whose lease a port of this run took

    @property
    def draw_wait(self) -> float:
        return max(1.0, 5.0 * self.ops.scale)

    @property
    def boot_timeout(self) -> float:
        # as long as the deployment's first wait for the netboot system, reboot included
        return max(10.0, float(TIMEOUTS["wait_nfs"][1] or 300) * self.ops.scale)

    @property
    def info_timeout(self) -> float:
        return max(20.0, 60.0 * self.ops.scale)

    async def run(self, job: Detection, sw: SwitchInfo, net: BoardNetwork, register: Register) -> None:
        try:
            # a port planned `failed` (held by a reservation) is never touched, not even powered off
            await asyncio.gather(*(self._port(job.id, p, sw, net, register) for p in job.ports
                                   if p.step != "failed"))
        finally:
            job.done = True
            log.info("detection %s on %s done: %d registered, %d failed", job.id, job.switch,
                     sum(p.step == "registered" for p in job.ports),
                     sum(p.step == "failed" for p in job.ports))

    async def _port(self, job_id: str, p: PortDetection, sw: SwitchInfo, net: BoardNetwork,
                    register: Register) -> None:
        try:
            found = await self._find(p, sw, net)
            if found is not None:
                p.step = "registering"
                p.updated = await asyncio.to_thread(register, p, found)
                p.step = "registered"
        except DetectError as exc:
            p.step, p.reason = "failed", str(exc)
        except Exception as exc:  # one port's trouble is that port's reason, never the others'
            log.exception("detection of port %d", p.port)
            p.step, p.reason = "failed", f"unexpected error: {exc}"
        finally:
            try:
                await self.ops.power_port.set(sw, p.port, False, f"port {p.port}")
                log.info("detection %s: %s port %d powered off", job_id, sw.name, p.port)
            except PowerError as exc:
                log.warning("detection %s: %s port %d stayed on: %s", job_id, sw.name, p.port, exc)
                if p.step != "failed":
                    p.step, p.reason = "failed", f"registered, but the port stayed on: {exc}"
            if p.step == "registered":
                log.info("detection %s: %s port %d: registered %s (serial %s, MAC %s, %s)%s", job_id,
                         sw.name, p.port, p.name, p.serial, p.mac, p.ip,
                         " (known board)" if p.updated else "")
            else:
                log.info("detection %s: %s port %d: failed: %s", job_id, sw.name, p.port, p.reason)

    async def _power_on(self, p: PortDetection, sw: SwitchInfo) -> None:
        p.step = "powering"
        serial = self.netboot.get(p.port)
        if serial:
            try:
                if not await asyncio.to_thread(tftp.is_nfs_boot, self.ops.tftp_root, serial):
                    await asyncio.to_thread(tftp.set_nfs_boot, self.ops.tftp_root, serial)
            except (tftp.BootFilesError, OSError) as exc:
                raise DetectError(f"cannot make the board boot the netboot template: {exc}") from None
        try:
            await self.ops.power_port.set(sw, p.port, True, f"port {p.port}")
        except PowerError as exc:
            raise DetectError(f"the switch refused: {exc}") from None
        log.info("detection: %s port %d powered on", sw.name, p.port)
        if not await self._draws_power(sw, p.port):
            raise DetectError("nothing plugged: no power drawn on the port after power on")
        p.step = "booting"

    async def _leased(self, p: PortDetection, sw: SwitchInfo, leases: Path) -> str:
        """Powers the port on and waits for the lease its board asks for: the first lease, new or
        renewed since the power-on, that no other port of this run took."""
        async with self._power_on_turn:
            await lease_second_past(leases)
            before = await asyncio.to_thread(read_leases, leases)
            await self._power_on(p, sw)
            deadline = time.monotonic() + self.boot_timeout
            while True:
                now = await asyncio.to_thread(read_leases, leases)
                fresh = sorted(mac for mac, lease in now.items()
                               if before.get(mac) != lease and mac not in self._claimed)
                if fresh:
                    self._claimed.add(fresh[0])
                    return now[fresh[0]][0]
                if time.monotonic() > deadline:
                    raise DetectError(
                        f"no boot: the board draws power but asked for no DHCP lease within "
                        f"{self.boot_timeout:.0f} s (dnsmasq's lease file {leases})")
                await asyncio.sleep(self.ops.poll)

    async def _find(self, p: PortDetection, sw: SwitchInfo, net: BoardNetwork) -> Found | None:
        if self.leases_file is not None:
            p.ip = await self._leased(p, sw, self.leases_file)
        else:
            await self._power_on(p, sw)
            p.ip = str(port_address(net, p.port))
        target = sshc.Target(p.ip, 22, "root", self.ops.agent_key, pinned=None,
                             timeout=min(5.0, self.ops.connect_timeout))
        conn, offered = await self._wait_ssh(target)
        p.step = "reading"
        try:
            async with conn:
                # Only the netboot system is trusted to say who the board is (and only it is the
                # agent's to log into): a board that booted anything else is not detected.
                hostname = (await sshc.run(conn, ["hostname"], timeout=self.info_timeout)).stdout.strip()
                if hostname != NFS_HOSTNAME:
                    raise DetectError(
                        f"the board booted another system than the netboot template (hostname "
                        f"{hostname[:64]!r}, not {NFS_HOSTNAME}): not trusted, not detected")
                info = await sshc.run_helper(conn, INFO, timeout=self.info_timeout)
        except sshc.SSHUnavailable as exc:
            reason = f"timeout: the netboot system answered but `piseduce-node info` did not: {exc}"
            raise DetectError(reason) from None
        except sshc.NodeCommandError as exc:
            raise DetectError(f"`piseduce-node info` failed on the board: {exc}") from None
        p.serial, p.model = str(info.get("serial") or ""), str(info.get("model") or "")
        p.mac, p.card_size = str(info.get("mac") or "").lower(), int(info.get("card_size") or 0)
        if not p.serial:
            raise DetectError("the board reported no serial number")
        return Found(p.ip, 22, p.serial, p.model, p.mac, p.card_size, offered,
                     dhcp=self.leases_file is not None, memory_gb=_memory(info.get("memory_gb")))

    async def _draws_power(self, sw: SwitchInfo, port: int) -> bool:
        deadline = time.monotonic() + self.draw_wait
        while True:
            try:
                watts = await self.ops.power_port.draw(sw, port)
            except PowerError:
                watts = None
            if watts is None or watts > 0:
                return True  # a switch without a power OID: the boot wait decides
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(self.ops.poll)

    async def _wait_ssh(self, target: sshc.Target) -> tuple[Any, str]:
        deadline = time.monotonic() + self.boot_timeout
        while True:
            try:
                # First contact: nothing to pin yet; the key offered is recorded with the node.
                return await sshc.connect(target)
            except sshc.SSHUnavailable:
                pass
            if time.monotonic() > deadline:
                raise DetectError(
                    f"no boot: the board draws power but its netboot system did not answer SSH on "
                    f"{target.host} within {self.boot_timeout:.0f} s"
                )
            await asyncio.sleep(self.ops.poll)
