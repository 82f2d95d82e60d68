"""A PoE switch answering SNMP v2c on a loopback UDP port.

The agent is small on purpose: it decodes messages with pysnmp's v2c codecs (pyasn1 BER), serves a
sorted table of instances (so GETNEXT/GETBULK walks are exact) and lets only
pethPsePortAdminEnable be written. A wrong community gets no answer, as on real switches.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Protocol, cast

from pyasn1.codec.ber import decoder, encoder
from pyasn1.error import PyAsn1Error
from pysnmp.proto import api

log = logging.getLogger(__name__)

V2C = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]

POE_ADMIN_OID = (1, 3, 6, 1, 2, 1, 105, 1, 1, 1, 3, 1)  # pethPsePortAdminEnable, group 1
POE_DETECTION_OID = (1, 3, 6, 1, 2, 1, 105, 1, 1, 1, 6, 1)  # pethPsePortDetectionStatus, group 1
MAIN_PSE_POWER_OID = (1, 3, 6, 1, 2, 1, 105, 1, 3, 1, 1, 2, 1)  # pethMainPsePower (W)
MAIN_PSE_STATUS_OID = (1, 3, 6, 1, 2, 1, 105, 1, 3, 1, 1, 3, 1)  # pethMainPseOperStatus
MAIN_PSE_CONSUMPTION_OID = (1, 3, 6, 1, 2, 1, 105, 1, 3, 1, 1, 4, 1)  # pethMainPseConsumptionPower (W)
# CISCO-POWER-ETHERNET-EXT-MIB cpeExtPsePortPwrConsumption (mW), group 1: the per-port reading.
PORT_POWER_OID = (1, 3, 6, 1, 4, 1, 9, 9, 402, 1, 2, 1, 9, 1)


@dataclass(frozen=True)
class PowerReading:
    """Where and how a vendor's switch answers the power drawn on port p: `oid.<offset + p>`."""

    oid: Oid
    offset: int
    syntax: str  # "gauge-mW" (Gauge32), "integer-mW" (INTEGER: 2700) or "string-W" (STRING: "4.0")

    def value(self, mw: int) -> Any:
        if self.syntax == "string-W":
            return V2C.OctetString(f"{mw / 1000:.1f}")
        return V2C.Gauge32(mw) if self.syntax == "gauge-mW" else V2C.Integer(mw)


# RFC 3621 has no per-port reading, so each vendor has its own (see the protocols reference).
VENDORS: dict[str, PowerReading] = {
    "cisco": PowerReading(PORT_POWER_OID, 0, "gauge-mW"),
    "linksys": PowerReading((1, 3, 6, 1, 4, 1, 3955, 1000, 201, 108, 1, 1, 5, 1), 48, "integer-mW"),
    "dlink": PowerReading((1, 3, 6, 1, 4, 1, 171, 11, 153, 1000, 22, 1, 1, 9, 1), 0, "string-W"),
}
SYS_DESCR_OID = (1, 3, 6, 1, 2, 1, 1, 1, 0)
SYS_UPTIME_OID = (1, 3, 6, 1, 2, 1, 1, 3, 0)
SYS_NAME_OID = (1, 3, 6, 1, 2, 1, 1, 5, 0)

# RFC 3416 error-status values
NO_ERROR = 0
TOO_BIG = 1
GEN_ERR = 5
WRONG_TYPE = 7
WRONG_VALUE = 10
NOT_WRITABLE = 17

MAX_BULK_VARBINDS = 256

Oid = tuple[int, ...]


def oid_str(oid: Oid) -> str:
    return ".".join(str(x) for x in oid)


class PortBackend(Protocol):
    """What the switch needs from the cluster: one PoE output per port."""

    @property
    def port_count(self) -> int: ...

    def port_enabled(self, port: int) -> bool: ...

    def set_port_enabled(self, port: int, enabled: bool) -> None: ...

    def port_power_mw(self, port: int) -> int: ...


@dataclass
class SwitchOptions:
    name: str = "sw1"
    host: str = "127.0.0.1"
    port: int = 0
    community: str = "private"
    loss: float = 0.0
    max_power_w: int = 370
    vendor: str = "cisco"


class _Mib:
    """The instance table, rebuilt per request so that values follow the boards."""

    def __init__(self, switch: SnmpSwitch) -> None:
        sw = switch
        ports = range(1, sw.backend.port_count + 1)
        powers = [sw.backend.port_power_mw(p) for p in ports]
        total_mw = sum(powers)
        uptime = int((time.monotonic() - sw.started) * 100) % 2**32
        rows: dict[Oid, Any] = {
            SYS_DESCR_OID: V2C.OctetString(f"PiSeduce simulated PoE switch {sw.options.name}"),
            SYS_UPTIME_OID: V2C.TimeTicks(uptime),
            SYS_NAME_OID: V2C.OctetString(sw.options.name),
            MAIN_PSE_POWER_OID: V2C.Gauge32(sw.options.max_power_w),
            MAIN_PSE_STATUS_OID: V2C.Integer(1),
            MAIN_PSE_CONSUMPTION_OID: V2C.Gauge32(total_mw // 1000),
        }
        reading = VENDORS[sw.options.vendor]
        for p in ports:
            enabled = sw.backend.port_enabled(p)
            rows[POE_ADMIN_OID + (p,)] = V2C.Integer(1 if enabled else 2)
            rows[POE_DETECTION_OID + (p,)] = V2C.Integer(3 if enabled else 1)
            rows[reading.oid + (reading.offset + p,)] = reading.value(powers[p - 1])
        self.rows = rows
        self.keys = sorted(rows)

    def get(self, oid: Oid) -> Any:
        if oid in self.rows:
            return self.rows[oid]
        # noSuchObject when no column/scalar matches the prefix, noSuchInstance otherwise
        for key in self.keys:
            if key[: len(oid) - 1] == oid[:-1] and len(key) == len(oid):
                return V2C.NoSuchInstance("")
        return V2C.NoSuchObject("")

    def next(self, oid: Oid) -> tuple[Oid, Any] | None:
        i = bisect.bisect_right(self.keys, oid)
        if i >= len(self.keys):
            return None
        key = self.keys[i]
        return key, self.rows[key]


class SnmpSwitch(asyncio.DatagramProtocol):
    def __init__(self, backend: PortBackend, options: SwitchOptions, rng: random.Random | None = None):
        self.backend = backend
        self.options = options
        self.rng = rng or random.Random()
        self.started = time.monotonic()
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.requests = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.options.host, self.options.port)
        )
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    async def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.requests += 1
        if self.options.loss and self.rng.random() < self.options.loss:
            return
        try:
            reply = self.handle(data)
        except Exception:  # a malformed packet must never stop the agent
            log.exception("SNMP request from %s failed", addr)
            return
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def handle(self, data: bytes) -> bytes | None:
        try:
            if api.decodeMessageVersion(data) != api.SNMP_VERSION_2C:
                return None
            msg, _ = decoder.decode(data, asn1Spec=V2C.Message())
        except PyAsn1Error:
            return None
        if str(V2C.apiMessage.get_community(msg)) != self.options.community:
            return None
        req = V2C.apiMessage.get_pdu(msg)
        rsp_msg = V2C.apiMessage.get_response(msg)
        rsp = V2C.apiMessage.get_pdu(rsp_msg)
        mib = _Mib(self)
        var_binds = [(tuple(oid), val) for oid, val in V2C.apiPDU.get_varbinds(req)]
        if req.isSameTypeWith(V2C.GetRequestPDU()):
            out = [(oid, mib.get(oid)) for oid, _ in var_binds]
        elif req.isSameTypeWith(V2C.GetNextRequestPDU()):
            out = [self._next(mib, oid) for oid, _ in var_binds]
        elif req.isSameTypeWith(V2C.GetBulkRequestPDU()):
            out = self._bulk(mib, req, var_binds)
        elif req.isSameTypeWith(V2C.SetRequestPDU()):
            status, index = self._set(var_binds)
            out = [(oid, val) for oid, val in var_binds]
            if status:
                V2C.apiPDU.set_error_status(rsp, status)
                V2C.apiPDU.set_error_index(rsp, index)
        else:
            return None
        V2C.apiPDU.set_varbinds(rsp, out)
        encoded: bytes = encoder.encode(rsp_msg)
        if len(encoded) > 65000:
            V2C.apiPDU.set_varbinds(rsp, [])
            V2C.apiPDU.set_error_status(rsp, TOO_BIG)
            encoded = encoder.encode(rsp_msg)
        return encoded

    @staticmethod
    def _next(mib: _Mib, oid: Oid) -> tuple[Oid, Any]:
        found = mib.next(oid)
        return found if found is not None else (oid, V2C.EndOfMibView(""))

    def _bulk(self, mib: _Mib, req: Any, var_binds: list[tuple[Oid, Any]]) -> list[tuple[Oid, Any]]:
        non_rep = max(0, min(int(V2C.apiBulkPDU.get_non_repeaters(req)), len(var_binds)))
        max_rep = max(0, int(V2C.apiBulkPDU.get_max_repetitions(req)))
        out = [self._next(mib, oid) for oid, _ in var_binds[:non_rep]]
        cursors = [oid for oid, _ in var_binds[non_rep:]]
        for _ in range(max_rep):
            if not cursors or len(out) + len(cursors) > MAX_BULK_VARBINDS:
                break
            row = [self._next(mib, oid) for oid in cursors]
            out.extend(row)
            cursors = [oid for oid, _ in row]
            if all(isinstance(val, V2C.EndOfMibView) for _, val in row):
                break
        return out

    def _set(self, var_binds: list[tuple[Oid, Any]]) -> tuple[int, int]:
        """Validate every binding first, then apply them all (SET is atomic)."""
        changes: list[tuple[int, bool]] = []
        for i, (oid, val) in enumerate(var_binds, start=1):
            port = oid[-1] if len(oid) == len(POE_ADMIN_OID) + 1 else 0
            if oid[:-1] != POE_ADMIN_OID or not 1 <= port <= self.backend.port_count:
                return NOT_WRITABLE, i
            if not isinstance(val, V2C.Integer) or isinstance(val, V2C.Gauge32 | V2C.TimeTicks):
                return WRONG_TYPE, i
            if int(val) not in (1, 2):
                return WRONG_VALUE, i
            changes.append((port, int(val) == 1))
        for port, enabled in changes:
            try:
                self.backend.set_port_enabled(port, enabled)
            except Exception:
                log.exception("PoE change on port %s failed", port)
                return GEN_ERR, 0
        return NO_ERROR, 0
