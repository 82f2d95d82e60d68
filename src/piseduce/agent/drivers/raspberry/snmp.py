"""PoE power of switch ports over SNMP v2c (POWER-ETHERNET-MIB pethPsePortAdminEnable, RFC 3621).

`<poe_oid>.<oid_offset + port>` = 1 powers a port on, 2 powers it off. Per-port power draw comes from
a vendor OID (`<power_oid>.<power_oid_offset + port>`): an integer in milliwatts or a string in watts.
Writes to the switch's master (uplink) port are refused here, whatever the caller: cutting it cuts
the pimaster.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import weakref
from dataclasses import dataclass
from typing import Any, Literal

from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    get_cmd,
    set_cmd,
    walk_cmd,
)
from pysnmp.proto.rfc1902 import Integer32, OctetString

PortState = Literal["on", "off", "unknown"]
ADMIN_ON = 1
ADMIN_OFF = 2
_OID = re.compile(r"^\.?\d+(\.\d+)*$")


class SnmpError(Exception):
    """The switch did not answer or refused the request (message is readable)."""


class MasterPortRefused(SnmpError):
    """A write to the uplink/master port was asked for."""


@dataclass(frozen=True)
class SwitchInfo:
    name: str
    ip: str
    snmp_port: int = 161
    community: str = "private"
    poe_oid: str = "1.3.6.1.2.1.105.1.1.1.3.1"
    oid_offset: int = 0
    port_count: int = 8
    power_oid: str = ""
    power_oid_offset: int = 0
    master_port: int = 0

    @classmethod
    def from_row(cls, row: Any) -> SwitchInfo:
        return cls(
            name=row.name,
            ip=row.ip,
            snmp_port=row.snmp_port,
            community=row.community,
            poe_oid=row.poe_oid,
            oid_offset=row.oid_offset,
            port_count=row.port_count,
            power_oid=row.power_oid,
            power_oid_offset=row.power_oid_offset,
            master_port=row.master_port,
        )

    def port_oid(self, port: int) -> str:
        return f"{self.poe_oid.strip('.')}.{self.oid_offset + port}"

    def check_port(self, port: int) -> None:
        if not 1 <= port <= self.port_count:
            raise SnmpError(f"switch {self.name} has ports 1..{self.port_count}, not {port}")


def valid_oid(oid: str) -> bool:
    return bool(_OID.match(oid))


def _auth(sw: SwitchInfo) -> CommunityData:
    # PoE switches of this kind speak v2c only; the community is kept out of logs and API answers.
    return CommunityData(sw.community, mpModel=1)  # noqa: S508


def _state(value: Any) -> PortState:
    try:
        v = int(value)
    except (TypeError, ValueError):
        return "unknown"
    return "on" if v == ADMIN_ON else "off" if v == ADMIN_OFF else "unknown"


def _watts(value: Any) -> float | None:
    """Vendor power values: OctetString in watts ("4.0", D-Link), integers in milliwatts."""
    if isinstance(value, OctetString):
        try:
            return float(bytes(value).decode("ascii", "replace").strip())
        except ValueError:
            return None
    try:
        return int(value) / 1000.0
    except (TypeError, ValueError):
        return None


class SnmpClient:
    """One pysnmp engine per event loop (pysnmp binds its transport to the loop that used it).

    Requests to one switch are limited to `max_in_flight` at once: a switch's management CPU is
    small, and 200 boards powered at the same moment must queue here rather than time out there
    (a timed-out request is retransmitted, which only adds to the pile)."""

    def __init__(self, timeout: float = 1.0, retries: int = 3, max_in_flight: int = 8) -> None:
        self.timeout = timeout
        self.retries = retries
        self.max_in_flight = max_in_flight
        self._engines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SnmpEngine] = (
            weakref.WeakKeyDictionary()
        )
        self._gates: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Semaphore]
        ] = weakref.WeakKeyDictionary()

    def _engine(self) -> SnmpEngine:
        loop = asyncio.get_running_loop()
        engine = self._engines.get(loop)
        if engine is None:
            engine = SnmpEngine()
            self._engines[loop] = engine
        return engine

    def _gate(self, sw: SwitchInfo) -> asyncio.Semaphore:
        gates = self._gates.setdefault(asyncio.get_running_loop(), {})
        key = (sw.ip, sw.snmp_port)
        if key not in gates:
            gates[key] = asyncio.Semaphore(self.max_in_flight)
        return gates[key]

    async def _target(self, sw: SwitchInfo) -> UdpTransportTarget:
        try:
            return await UdpTransportTarget.create(
                (sw.ip, sw.snmp_port), timeout=self.timeout, retries=self.retries
            )
        except Exception as exc:  # pysnmp raises its own error types for bad addresses
            raise SnmpError(f"switch {sw.name}: bad address {sw.ip}:{sw.snmp_port} ({exc})") from None

    @staticmethod
    def _check(sw: SwitchInfo, what: str, err_ind: Any, err_status: Any, err_index: Any) -> None:
        if err_ind:
            raise SnmpError(f"switch {sw.name} ({sw.ip}:{sw.snmp_port}): {what}: {err_ind}")
        if err_status:
            raise SnmpError(f"switch {sw.name}: {what} refused: {err_status.prettyPrint()} at {err_index}")

    async def get(self, sw: SwitchInfo, oid: str) -> Any:
        async with self._gate(sw):
            err_ind, err_status, err_index, binds = await get_cmd(
                self._engine(),
                _auth(sw),
                await self._target(sw),
                ContextData(),
                ObjectType(ObjectIdentity(oid)),
                lookupMib=False,
            )
        self._check(sw, f"get {oid}", err_ind, err_status, err_index)
        return binds[0][1]

    async def set_power(self, sw: SwitchInfo, port: int, on: bool) -> None:
        sw.check_port(port)
        if sw.master_port and port == sw.master_port:
            raise MasterPortRefused(
                f"port {port} of switch {sw.name} is its master (uplink) port: its power is never switched"
            )
        oid = sw.port_oid(port)
        async with self._gate(sw):
            err_ind, err_status, err_index, _ = await set_cmd(
                self._engine(),
                _auth(sw),
                await self._target(sw),
                ContextData(),
                ObjectType(ObjectIdentity(oid), Integer32(ADMIN_ON if on else ADMIN_OFF)),
                lookupMib=False,
            )
        self._check(sw, f"set {oid}", err_ind, err_status, err_index)

    async def port_status(self, sw: SwitchInfo, port: int) -> PortState:
        sw.check_port(port)
        value = await self.get(sw, sw.port_oid(port))
        return _state(value)

    async def ports_status(self, sw: SwitchInfo) -> dict[int, PortState]:
        """PoE admin state of every port, by one walk of the column."""
        base = sw.poe_oid.strip(".")
        out: dict[int, PortState] = dict.fromkeys(range(1, sw.port_count + 1), "unknown")
        async with self._gate(sw):
            async for err_ind, err_status, err_index, binds in walk_cmd(
                self._engine(),
                _auth(sw),
                await self._target(sw),
                ContextData(),
                ObjectType(ObjectIdentity(base)),
                lookupMib=False,
                lexicographicMode=False,
            ):
                self._check(sw, f"walk {base}", err_ind, err_status, err_index)
                for name, value in binds:
                    oid = str(name)
                    if not oid.startswith(base + "."):
                        continue
                    port = int(oid.rsplit(".", 1)[1]) - sw.oid_offset
                    if 1 <= port <= sw.port_count:
                        out[port] = _state(value)
        return out

    async def port_power(self, sw: SwitchInfo, port: int) -> float | None:
        """Watts drawn on a port, or None when the switch has no power OID configured."""
        if not sw.power_oid:
            return None
        sw.check_port(port)
        value = await self.get(sw, f"{sw.power_oid.strip('.')}.{sw.power_oid_offset + port}")
        return _watts(value)

    def close(self) -> None:
        for engine in list(self._engines.values()):
            # Best effort: the loop that used the engine may already be closed.
            with contextlib.suppress(Exception):
                engine.close_dispatcher()
        self._engines.clear()
