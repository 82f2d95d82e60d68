"""PoE power of switch ports over SNMP (POWER-ETHERNET-MIB pethPsePortAdminEnable, RFC 3621), in
v1 or v2c with a community, or v3 with a USM user (SHA/SHA-256 authentication, AES privacy), per
switch: many sites forbid v2c write communities.

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
from dataclasses import dataclass, field
from typing import Any, Literal

from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    get_cmd,
    set_cmd,
    usmAesCfb128Protocol,
    usmHMAC192SHA256AuthProtocol,
    usmHMACSHAAuthProtocol,
    usmNoPrivProtocol,
    walk_cmd,
)
from pysnmp.proto.rfc1902 import Integer32, OctetString

PortState = Literal["on", "off", "unknown"]
ADMIN_ON = 1
ADMIN_OFF = 2
_OID = re.compile(r"^\.?[0-9]+(\.[0-9]+)*$")
V3_AUTH_PROTOCOLS = {"SHA": usmHMACSHAAuthProtocol, "SHA-256": usmHMAC192SHA256AuthProtocol}
V3_PRIV_PROTOCOLS = {"AES": usmAesCfb128Protocol, "none": usmNoPrivProtocol}


class SnmpError(Exception):
    """The switch did not answer or refused the request (message is readable)."""


class MasterPortRefused(SnmpError):
    """A write to the uplink/master port was asked for."""


class SnmpRefused(SnmpError):
    """The switch answered, and refused the request (an SNMP error status): not a lost packet,
    so repeating it changes nothing."""


# What an SNMP error status means to the operator who configured the switch (RFC 3416 §3).
_REFUSALS = {
    "notWritable": "the switch refuses writes to {oid} (notWritable): this OID is read-only for this "
                   "community; check the switch's PoE OID and offset, and that the community is the "
                   "read-write one",
    "noAccess": "the switch refuses access to {oid} (noAccess) for this community; use its read-write "
                "community",
    "readOnly": "the switch answers this community read-only (readOnly): use its read-write community",
    "authorizationError": "the switch refuses this community for {oid} (authorizationError)",
    "noCreation": "the switch has no object {oid} (noCreation): check the PoE OID, offset and port number",
    "wrongType": "the switch wants another value type at {oid} (wrongType)",
    "wrongValue": "the switch refuses that value at {oid} (wrongValue)",
    "inconsistentValue": "the switch refuses that value at {oid} now (inconsistentValue)",
    "resourceUnavailable": "the switch has no resources to apply the change (resourceUnavailable)",
}


def refusal(sw: SwitchInfo, what: str, oid: str, status: str, index: Any) -> SnmpRefused:
    """The readable error for an SNMP error status (`status` as pysnmp prints it)."""
    words = _REFUSALS.get(status)
    reason = words.format(oid=oid) if words else f"refused: {status} at {index}"
    return SnmpRefused(f"switch {sw.name}: {what}: {reason}")


@dataclass(frozen=True)
class SwitchInfo:
    name: str
    ip: str
    snmp_port: int = 161
    community: str = field(default="private", repr=False)
    poe_oid: str = "1.3.6.1.2.1.105.1.1.1.3.1"
    oid_offset: int = 0
    port_count: int = 8
    power_oid: str = ""
    power_oid_offset: int = 0
    master_port: int = 0
    snmp_version: str = "v2c"  # v1 | v2c | v3
    v3_user: str = ""
    v3_auth_protocol: str = "SHA"
    v3_auth_key: str = field(default="", repr=False)
    v3_priv_protocol: str = "AES"
    v3_priv_key: str = field(default="", repr=False)

    @classmethod
    def from_row(cls, row: Any, secrets: Any = None) -> SwitchInfo:
        """`secrets`: the row's community and v3 keys, decrypted (switch_secrets.SwitchSecrets);
        without it, the clear `community` column of rows saved before secrets were sealed."""
        return cls(
            name=row.name,
            ip=row.ip,
            snmp_port=row.snmp_port,
            community=secrets.community if secrets is not None else row.community,
            snmp_version=row.snmp_version or "v2c",
            v3_user=row.v3_user,
            v3_auth_protocol=row.v3_auth_protocol,
            v3_auth_key=secrets.auth_key if secrets is not None else "",
            v3_priv_protocol=row.v3_priv_protocol,
            v3_priv_key=secrets.priv_key if secrets is not None else "",
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


def _auth(sw: SwitchInfo) -> CommunityData | UsmUserData:
    """The switch's credentials as pysnmp wants them (kept out of logs and API answers)."""
    if sw.snmp_version == "v3":
        no_priv = sw.v3_priv_protocol == "none"
        return UsmUserData(
            sw.v3_user,
            authKey=sw.v3_auth_key,
            privKey=None if no_priv else sw.v3_priv_key,
            authProtocol=V3_AUTH_PROTOCOLS.get(sw.v3_auth_protocol, usmHMACSHAAuthProtocol),
            privProtocol=V3_PRIV_PROTOCOLS.get(sw.v3_priv_protocol, usmAesCfb128Protocol),
        )
    return CommunityData(sw.community, mpModel=0 if sw.snmp_version == "v1" else 1)  # noqa: S508


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
            oid = what.split()[-1]
            raise refusal(sw, what, oid, err_status.prettyPrint(), err_index)

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
