"""Node detection (issue 16): power a switch's ports on, let each board netboot the detection path
(the netboot template a board nobody registered boots, tftp.TEMPLATE), read its serial, model, MAC
and card size with `piseduce-node info` over SSH, register it under a name from a pattern, power
the port off. Ports are detected concurrently; each ends `registered` or `failed` with a reason.

Where a board's address comes from: for now the board network's per-port rule (`port_address`),
the one the simulated cluster's board network uses today; the dnsmasq lease of the port's board
replaces it once the boards get their addresses by DHCP.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address
from typing import Any, Literal

from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry.netconfig import BoardNetwork
from piseduce.agent.drivers.raspberry.ops import TIMEOUTS, RpiOps
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

    ip: str
    ssh_port: int
    serial: str
    model: str
    mac: str
    card_size: int
    host_key: str


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

    def __init__(self, ops: RpiOps) -> None:
        self.ops = ops

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
            await asyncio.gather(*(self._port(p, sw, net, register) for p in job.ports))
        finally:
            job.done = True

    async def _port(self, p: PortDetection, sw: SwitchInfo, net: BoardNetwork, register: Register) -> None:
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
            except PowerError as exc:
                if p.step != "failed":
                    p.step, p.reason = "failed", f"registered, but the port stayed on: {exc}"

    async def _find(self, p: PortDetection, sw: SwitchInfo, net: BoardNetwork) -> Found | None:
        p.step = "powering"
        try:
            await self.ops.power_port.set(sw, p.port, True, f"port {p.port}")
        except PowerError as exc:
            raise DetectError(f"the switch refused: {exc}") from None
        if not await self._draws_power(sw, p.port):
            raise DetectError("nothing plugged: no power drawn on the port after power on")
        p.step = "booting"
        p.ip = str(port_address(net, p.port))
        target = sshc.Target(p.ip, 22, "root", self.ops.agent_key, pinned=None,
                             timeout=min(5.0, self.ops.connect_timeout))
        conn, offered = await self._wait_ssh(target)
        p.step = "reading"
        try:
            async with conn:
                info = await sshc.run_helper(conn, INFO, timeout=self.info_timeout)
        except (sshc.SSHUnavailable, sshc.NodeCommandError) as exc:
            reason = f"timeout: the netboot system answered but `piseduce-node info` did not: {exc}"
            raise DetectError(reason) from None
        p.serial, p.model = str(info.get("serial") or ""), str(info.get("model") or "")
        p.mac, p.card_size = str(info.get("mac") or "").lower(), int(info.get("card_size") or 0)
        if not p.serial:
            raise DetectError("the board reported no serial number")
        return Found(p.ip, 22, p.serial, p.model, p.mac, p.card_size, offered)

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
