"""What the simulated PoE switch answers: the instances of the groups a real managed PoE switch
serves (SNMPv2-MIB system, IF-MIB ifTable and ifXTable, POWER-ETHERNET-MIB pethPsePortTable and
pethMainPseTable, one vendor's per-port power reading), rebuilt from the ports on every request
so that values follow the boards, and the few columns an operator may write.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyasn1.type import univ
from pysnmp.proto.api import v2c

Oid = tuple[int, ...]

SYSTEM = (1, 3, 6, 1, 2, 1, 1)
SYS_DESCR_OID = SYSTEM + (1, 0)
SYS_OBJECT_ID_OID = SYSTEM + (2, 0)
SYS_UPTIME_OID = SYSTEM + (3, 0)
SYS_CONTACT_OID = SYSTEM + (4, 0)
SYS_NAME_OID = SYSTEM + (5, 0)
SYS_LOCATION_OID = SYSTEM + (6, 0)
SYS_SERVICES_OID = SYSTEM + (7, 0)
IF_NUMBER_OID = (1, 3, 6, 1, 2, 1, 2, 1, 0)
IF_ENTRY = (1, 3, 6, 1, 2, 1, 2, 2, 1)  # ifTable
IFX_ENTRY = (1, 3, 6, 1, 2, 1, 31, 1, 1, 1)  # ifXTable
IF_ALIAS = IFX_ENTRY + (18,)
PSE_PORT_ENTRY = (1, 3, 6, 1, 2, 1, 105, 1, 1, 1)  # pethPsePortTable, index (group, port)
POE_ADMIN_OID = PSE_PORT_ENTRY + (3, 1)  # pethPsePortAdminEnable, group 1
POE_DETECTION_OID = PSE_PORT_ENTRY + (6, 1)  # pethPsePortDetectionStatus, group 1
POE_PRIORITY_OID = PSE_PORT_ENTRY + (7, 1)  # pethPsePortPowerPriority, group 1
POE_TYPE_OID = PSE_PORT_ENTRY + (9, 1)  # pethPsePortType, group 1
MAIN_PSE = (1, 3, 6, 1, 2, 1, 105, 1, 3, 1, 1)  # pethMainPseTable, index group
MAIN_PSE_POWER_OID = MAIN_PSE + (2, 1)  # pethMainPsePower (W, nominal)
MAIN_PSE_STATUS_OID = MAIN_PSE + (3, 1)  # pethMainPseOperStatus
MAIN_PSE_CONSUMPTION_OID = MAIN_PSE + (4, 1)  # pethMainPseConsumptionPower (W)
MAIN_PSE_THRESHOLD_OID = MAIN_PSE + (5, 1)  # pethMainPseUsageThreshold (%)
# CISCO-POWER-ETHERNET-EXT-MIB cpeExtPsePortPwrConsumption (mW), group 1: the per-port reading.
PORT_POWER_OID = (1, 3, 6, 1, 4, 1, 9, 9, 402, 1, 2, 1, 9, 1)

GIGABIT = 1_000_000_000
# A Raspberry Pi's PoE+ HAT announces class 4 (802.3at); pethPsePortPowerClassifications class4 = 5.
PI_POE_CLASS = 5
CHATTER_BYTES_PER_S = 1500  # what an idle board's link carries (ARP, DHCP, SSH keep-alives)


def oid_str(oid: Oid) -> str:
    return ".".join(str(x) for x in oid)


@dataclass(frozen=True)
class PowerReading:
    """Where and how a vendor's switch answers the power drawn on port p: `oid.<offset + p>`."""

    oid: Oid
    offset: int
    syntax: str  # "gauge-mW" (Gauge32), "integer-mW" (INTEGER: 2700) or "string-W" (STRING: "4.0")

    def value(self, mw: int) -> Any:
        if self.syntax == "string-W":
            return v2c.OctetString(f"{mw / 1000:.1f}")
        return v2c.Gauge32(mw) if self.syntax == "gauge-mW" else v2c.Integer(mw)


@dataclass(frozen=True)
class Vendor:
    """A switch profile: its per-port power reading, its sysObjectID (in the vendor's enterprise
    subtree) and how it names its ports."""

    power: PowerReading
    object_id: Oid
    descr: str
    if_descr: str  # ifDescr, with {p} for the port
    if_name: str  # ifName, with {p}


# RFC 3621 has no per-port reading, so each vendor has its own (see the protocols reference).
VENDORS: dict[str, Vendor] = {
    "cisco": Vendor(
        PowerReading(PORT_POWER_OID, 0, "gauge-mW"), (1, 3, 6, 1, 4, 1, 9, 1, 1208),
        "Cisco IOS Software, C2960X Software (C2960X-UNIVERSALK9-M)", "GigabitEthernet1/0/{p}", "Gi1/0/{p}",
    ),
    "linksys": Vendor(
        PowerReading((1, 3, 6, 1, 4, 1, 3955, 1000, 201, 108, 1, 1, 5, 1), 48, "integer-mW"),
        (1, 3, 6, 1, 4, 1, 3955, 1000, 201, 108), "Linksys LGS308P 8-Port Gigabit PoE+ Smart Switch",
        "gigabitethernet{p}", "gi{p}",
    ),
    "dlink": Vendor(
        PowerReading((1, 3, 6, 1, 4, 1, 171, 11, 153, 1000, 22, 1, 1, 9, 1), 0, "string-W"),
        (1, 3, 6, 1, 4, 1, 171, 10, 153, 1000), "DGS-1210-28P/ME Gigabit Ethernet Switch",
        "D-Link DGS-1210-28P R2.00.001 Port {p}", "{p}",
    ),
}


class PortBackend(Protocol):
    """What the switch needs from the cluster: one PoE output (and its Ethernet link) per port."""

    @property
    def port_count(self) -> int: ...

    def port_enabled(self, port: int) -> bool: ...

    def set_port_enabled(self, port: int, enabled: bool) -> None: ...

    def port_power_mw(self, port: int) -> int: ...


def link_up(backend: PortBackend, port: int) -> bool:
    """A port's link is up while the device on it is powered and its cable plugged in. Backends
    without a `port_link` method (a plain PoE table) have a device on every port."""
    probe: Callable[[int], bool] | None = getattr(backend, "port_link", None)
    return probe(port) if probe is not None else backend.port_enabled(port)


@dataclass
class PortCounters:
    oper_up: bool = False
    last_change: int = 0  # sysUpTime (1/100 s) of the last ifOperStatus change
    octets_in: int = 0
    octets_out: int = 0
    mps_absent: int = 0  # pethPsePortMPSAbsentCounter: power removed because the device went away


@dataclass
class SwitchState:
    """What lives in the switch between requests: the writable objects and the counters."""

    name: str
    contact: str = "testbed-admins@example.org"
    location: str = "PiSeduce simulated rack"
    usage_threshold: int = 90
    priorities: dict[int, int] = field(default_factory=dict)  # port → critical(1)/high(2)/low(3)
    port_types: dict[int, str] = field(default_factory=dict)
    aliases: dict[int, str] = field(default_factory=dict)
    counters: dict[int, PortCounters] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    last_build: float = field(default_factory=time.monotonic)

    def uptime(self) -> int:
        return int((time.monotonic() - self.started) * 100) % 2**32


def _tick(state: SwitchState, backend: PortBackend, now: float) -> None:
    elapsed = max(now - state.last_build, 0.0)
    state.last_build = now
    uptime = state.uptime()
    for p in range(1, backend.port_count + 1):
        c = state.counters.setdefault(p, PortCounters())
        up = link_up(backend, p)
        if up != c.oper_up:
            c.oper_up, c.last_change = up, uptime
            if not up and backend.port_enabled(p):
                c.mps_absent += 1
        if up:
            moved = int(elapsed * CHATTER_BYTES_PER_S)
            c.octets_in = (c.octets_in + moved) % 2**64
            c.octets_out = (c.octets_out + moved * 2) % 2**64


def build_rows(
    state: SwitchState, backend: PortBackend, vendor_name: str, max_power_w: int
) -> dict[Oid, Any]:
    _tick(state, backend, time.monotonic())
    vendor = VENDORS[vendor_name]
    ports = range(1, backend.port_count + 1)
    powers = {p: backend.port_power_mw(p) for p in ports}
    rows: dict[Oid, Any] = {
        SYS_DESCR_OID: v2c.OctetString(f"{vendor.descr} (PiSeduce simulated PoE switch {state.name})"),
        SYS_OBJECT_ID_OID: v2c.ObjectIdentifier(vendor.object_id),
        SYS_UPTIME_OID: v2c.TimeTicks(state.uptime()),
        SYS_CONTACT_OID: v2c.OctetString(state.contact),
        SYS_NAME_OID: v2c.OctetString(state.name),
        SYS_LOCATION_OID: v2c.OctetString(state.location),
        SYS_SERVICES_OID: v2c.Integer(2),  # a layer-2 device (bridge)
        IF_NUMBER_OID: v2c.Integer(len(ports)),
        MAIN_PSE_POWER_OID: v2c.Gauge32(max_power_w),
        MAIN_PSE_STATUS_OID: v2c.Integer(1),
        MAIN_PSE_CONSUMPTION_OID: v2c.Gauge32(sum(powers.values()) // 1000),
        MAIN_PSE_THRESHOLD_OID: v2c.Integer(state.usage_threshold),
    }
    for p in ports:
        rows.update(_if_rows(state, vendor, p))
        rows.update(_pse_rows(state, backend, p, powers[p]))
        reading = vendor.power
        rows[reading.oid + (reading.offset + p,)] = reading.value(powers[p])
    return rows


def _if_rows(state: SwitchState, vendor: Vendor, p: int) -> dict[Oid, Any]:
    c = state.counters[p]
    mac = bytes([0x00, 0x1B, 0x54, 0x50, 0x53, p % 256])
    name = vendor.if_name.format(p=p)
    status = 1 if c.oper_up else 2  # up(1) / down(2)
    columns: dict[int, Any] = {
        1: v2c.Integer(p), 2: v2c.OctetString(vendor.if_descr.format(p=p)), 3: v2c.Integer(6),
        4: v2c.Integer(1500), 5: v2c.Gauge32(GIGABIT if c.oper_up else 0), 6: v2c.OctetString(mac),
        7: v2c.Integer(1), 8: v2c.Integer(status), 9: v2c.TimeTicks(c.last_change),
        10: v2c.Counter32(c.octets_in % 2**32), 11: v2c.Counter32(c.octets_in // 500 % 2**32),
        13: v2c.Counter32(0), 14: v2c.Counter32(0), 15: v2c.Counter32(0),
        16: v2c.Counter32(c.octets_out % 2**32), 17: v2c.Counter32(c.octets_out // 500 % 2**32),
        19: v2c.Counter32(0), 20: v2c.Counter32(0),
    }
    xcolumns: dict[int, Any] = {
        1: v2c.OctetString(name), 2: v2c.Counter32(0), 3: v2c.Counter32(c.octets_in // 9000 % 2**32),
        4: v2c.Counter32(0), 5: v2c.Counter32(0),
        6: v2c.Counter64(c.octets_in), 7: v2c.Counter64(c.octets_in // 500), 8: v2c.Counter64(0),
        9: v2c.Counter64(c.octets_in // 9000), 10: v2c.Counter64(c.octets_out),
        11: v2c.Counter64(c.octets_out // 500), 12: v2c.Counter64(0), 13: v2c.Counter64(0),
        14: v2c.Integer(1), 15: v2c.Gauge32(1000 if c.oper_up else 0), 16: v2c.Integer(2),
        17: v2c.Integer(1), 18: v2c.OctetString(state.aliases.get(p, "")), 19: v2c.TimeTicks(0),
    }
    rows: dict[Oid, Any] = {IF_ENTRY + (col, p): val for col, val in columns.items()}
    rows.update({IFX_ENTRY + (col, p): val for col, val in xcolumns.items()})
    return rows


def _pse_rows(state: SwitchState, backend: PortBackend, p: int, power_mw: int) -> dict[Oid, Any]:
    enabled = backend.port_enabled(p)
    delivering = enabled and power_mw > 0
    detection = 3 if delivering else 2 if enabled else 1  # deliveringPower / searching / disabled
    columns: dict[int, Any] = {
        3: v2c.Integer(1 if enabled else 2), 4: v2c.Integer(2), 5: v2c.Integer(1),
        6: v2c.Integer(detection), 7: v2c.Integer(state.priorities.get(p, 3)),
        8: v2c.Counter32(state.counters[p].mps_absent), 9: v2c.OctetString(state.port_types.get(p, "")),
        10: v2c.Integer(PI_POE_CLASS if delivering else 1),
        11: v2c.Counter32(0), 12: v2c.Counter32(0), 13: v2c.Counter32(0), 14: v2c.Counter32(0),
    }
    return {PSE_PORT_ENTRY + (col, 1, p): val for col, val in columns.items()}


class WriteRefused(Exception):
    """An SNMP SET the switch refuses: `status` is the RFC 3416 error name."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _text(val: Any, limit: int) -> str:
    if not isinstance(val, univ.OctetString) or isinstance(val, v2c.IpAddress | v2c.Opaque):
        raise WriteRefused("wrongType")
    raw = bytes(val)
    if len(raw) > limit:
        raise WriteRefused("wrongLength")
    return raw.decode("utf-8", "replace")


def _integer(val: Any, allowed: range) -> int:
    # Any INTEGER (a v1 SET arrives as the plain ASN.1 type), never an unsigned application type.
    unsigned = (v2c.Gauge32, v2c.Counter32, v2c.Counter64, v2c.TimeTicks, v2c.Unsigned32)
    if not isinstance(val, univ.Integer) or isinstance(val, unsigned):
        raise WriteRefused("wrongType")
    if int(val) not in allowed:
        raise WriteRefused("wrongValue")
    return int(val)


Change = Callable[[], None]


def plan_write(state: SwitchState, backend: PortBackend, oid: Oid, val: Any) -> Change:
    """Check one SET binding and return the change to apply (SET is atomic: every binding of a
    request is checked before any is applied). Read-only or unknown objects are notWritable."""
    scalars: dict[Oid, tuple[str, int]] = {
        SYS_CONTACT_OID: ("contact", 255), SYS_NAME_OID: ("name", 255), SYS_LOCATION_OID: ("location", 255),
    }
    if oid in scalars:
        attr, limit = scalars[oid]
        text = _text(val, limit)
        return lambda: setattr(state, attr, text)
    if oid == MAIN_PSE_THRESHOLD_OID:
        pct = _integer(val, range(1, 100))
        return lambda: setattr(state, "usage_threshold", pct)
    port = oid[-1] if len(oid) == len(POE_ADMIN_OID) + 1 else 0
    table, prefix = oid[:-1], oid[:-1]
    if len(oid) == len(IF_ALIAS) + 1 and oid[:-1] == IF_ALIAS:
        port, prefix = oid[-1], IF_ALIAS
    if not 1 <= port <= backend.port_count:
        raise WriteRefused("notWritable")
    if table == POE_ADMIN_OID:
        on = _integer(val, range(1, 3)) == 1
        return lambda: backend.set_port_enabled(port, on)
    if table == POE_PRIORITY_OID:
        level = _integer(val, range(1, 4))
        return lambda: state.priorities.__setitem__(port, level)
    if table == POE_TYPE_OID:
        kind = _text(val, 64)
        return lambda: state.port_types.__setitem__(port, kind)
    if prefix == IF_ALIAS:
        alias = _text(val, 64)
        return lambda: state.aliases.__setitem__(port, alias)
    raise WriteRefused("notWritable")
