"""A PoE switch answering SNMP v1, v2c and v3 (USM) on a loopback UDP port.

pysnmp's own agent engine does the protocol work (message processing of the three versions, USM
authentication and privacy with engine-ID discovery and time windows, v1 ↔ v2 PDU translation,
GETBULK); the switch plugs in a MIB controller that serves `switch_mib`'s sorted instance table,
rebuilt per request so that values follow the boards. v1/v2c share one read-write community and
v3 users have their own keys; a wrong community or key gets no answer (v3: a USM report), as on
real switches. The `loss` knob drops datagrams before the engine sees them.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import socket
from dataclasses import dataclass, field
from typing import Any

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto.api import v2c
from pysnmp.smi import error as smi_error
from pysnmp.smi import instrum

from piseduce.sim.rpi.switch_mib import (
    MAIN_PSE_CONSUMPTION_OID,
    MAIN_PSE_POWER_OID,
    MAIN_PSE_STATUS_OID,
    POE_ADMIN_OID,
    POE_DETECTION_OID,
    PORT_POWER_OID,
    SYS_DESCR_OID,
    SYS_NAME_OID,
    SYS_UPTIME_OID,
    VENDORS,
    Oid,
    PortBackend,
    PowerReading,
    SwitchState,
    WriteRefused,
    build_rows,
    oid_str,
    plan_write,
)

__all__ = [
    "MAIN_PSE_CONSUMPTION_OID", "MAIN_PSE_POWER_OID", "MAIN_PSE_STATUS_OID", "POE_ADMIN_OID",
    "POE_DETECTION_OID", "PORT_POWER_OID", "SYS_DESCR_OID", "SYS_NAME_OID", "SYS_UPTIME_OID",
    "VENDORS", "PortBackend", "PowerReading", "SnmpSwitch", "SwitchOptions", "V3User", "oid_str",
]

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
AUTH_PROTOCOLS = {"SHA": config.USM_AUTH_HMAC96_SHA, "SHA-256": config.USM_AUTH_HMAC192_SHA256}
PRIV_PROTOCOLS = {"AES": config.USM_PRIV_CFB128_AES, "none": config.USM_PRIV_NONE}
_REFUSALS = {
    "notWritable": smi_error.NotWritableError,
    "wrongType": smi_error.WrongTypeError,
    "wrongValue": smi_error.WrongValueError,
    "wrongLength": smi_error.WrongLengthError,
}


@dataclass(frozen=True)
class V3User:
    """A USM user: authPriv with `auth`/`priv` (authNoPriv when priv is "none")."""

    name: str
    auth_key: str
    priv_key: str = ""
    auth: str = "SHA"
    priv: str = "AES"

    def __post_init__(self) -> None:
        if self.auth not in AUTH_PROTOCOLS or self.priv not in PRIV_PROTOCOLS:
            raise ValueError(f"SNMPv3 user {self.name}: auth one of {list(AUTH_PROTOCOLS)}, "
                             f"priv one of {list(PRIV_PROTOCOLS)}")
        if len(self.auth_key) < 8 or (self.priv != "none" and len(self.priv_key) < 8):
            raise ValueError(f"SNMPv3 user {self.name}: pass phrases have at least 8 characters")


@dataclass
class SwitchOptions:
    name: str = "sw1"
    host: str = "127.0.0.1"
    port: int = 0
    community: str = "private"
    loss: float = 0.0
    max_power_w: int = 370
    vendor: str = "cisco"
    v3_users: tuple[V3User, ...] = field(default_factory=tuple)


class _Table(instrum.AbstractMibInstrumController):
    """pysnmp's MIB controller interface over the switch's instance table."""

    def __init__(self, switch: SnmpSwitch) -> None:
        self.switch = switch

    def _rows(self) -> tuple[dict[Oid, Any], list[Oid]]:
        sw = self.switch
        rows = build_rows(sw.state, sw.backend, sw.options.vendor, sw.options.max_power_w)
        return rows, sorted(rows)

    def read_variables(self, *var_binds: Any, **ctx: Any) -> list[tuple[Any, Any]]:
        rows, keys = self._rows()
        out = []
        for name, _ in var_binds:
            oid = tuple(name)
            if oid in rows:
                out.append((name, rows[oid]))
            elif any(k[:-1] == oid[:-1] for k in keys):
                out.append((name, v2c.NoSuchInstance("")))  # a known column or scalar, no such row
            else:
                out.append((name, v2c.NoSuchObject("")))
        return out

    def read_next_variables(self, *var_binds: Any, **ctx: Any) -> list[tuple[Any, Any]]:
        rows, keys = self._rows()
        v1 = _security_model(ctx) == 1
        out = []
        for name, _ in var_binds:
            i = bisect.bisect_right(keys, tuple(name))
            # RFC 2576 §4.1.2.1: a v1 manager never sees Counter64 objects; GETNEXT skips them.
            while v1 and i < len(keys) and isinstance(rows[keys[i]], v2c.Counter64):
                i += 1
            if i < len(keys):
                out.append((v2c.ObjectIdentifier(keys[i]), rows[keys[i]]))
            else:
                out.append((name, v2c.EndOfMibView("")))
        return out

    def write_variables(self, *var_binds: Any, **ctx: Any) -> list[tuple[Any, Any]]:
        sw = self.switch
        changes = []
        for i, (name, val) in enumerate(var_binds):
            try:
                changes.append(plan_write(sw.state, sw.backend, tuple(name), val))
            except WriteRefused as exc:
                raise _REFUSALS[exc.status](name=name, idx=i) from None
        for change in changes:
            try:
                change()
            except Exception:
                log.exception("SNMP SET on switch %s failed", sw.options.name)
                raise smi_error.CommitFailedError(idx=0) from None
        return list(var_binds)


def _security_model(ctx: dict[str, Any]) -> int:
    snmp_engine = ctx.get("snmpEngine")
    if snmp_engine is None:
        return 0
    try:
        exec_ctx = snmp_engine.observer.get_execution_context("rfc3412.receiveMessage:request")
        return int(exec_ctx["securityModel"])
    except (KeyError, TypeError, AttributeError):
        return 0


class _LossyUdp(udp.UdpAsyncioTransport):
    """pysnmp's UDP transport, with the switch's loss knob and request counter in front."""

    switch: SnmpSwitch

    def datagram_received(self, datagram: bytes, transportAddress: Any) -> None:  # noqa: N803 (pysnmp's name)
        sw = self.switch
        sw.requests += 1
        if sw.options.loss and sw.rng.random() < sw.options.loss:
            return
        super().datagram_received(datagram, transportAddress)


class SnmpSwitch:
    def __init__(self, backend: PortBackend, options: SwitchOptions, rng: random.Random | None = None):
        if options.vendor not in VENDORS:
            raise ValueError(f"unknown switch vendor {options.vendor!r} (one of {', '.join(VENDORS)})")
        self.backend = backend
        self.options = options
        self.rng = rng or random.Random()
        self.state = SwitchState(options.name)
        self.engine: engine.SnmpEngine | None = None
        self.port = 0
        self.requests = 0

    async def start(self) -> None:
        snmp = engine.SnmpEngine()
        # The socket is bound here so that a taken port fails now, and port 0 tells its number.
        family = socket.AF_INET6 if ":" in self.options.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((self.options.host, self.options.port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        transport = _LossyUdp()
        transport.switch = self
        config.add_transport(snmp, udp.DOMAIN_NAME, transport.open_server_mode(sock=sock))
        # v1 and v2c managers share the switch's read-write community (one security name).
        config.add_v1_system(snmp, "piseduce-rw", self.options.community)
        for user in self.options.v3_users:
            priv = PRIV_PROTOCOLS[user.priv]
            config.add_v3_user(snmp, user.name, AUTH_PROTOCOLS[user.auth], user.auth_key,
                               priv, user.priv_key if user.priv != "none" else None)
        ctx = context.SnmpContext(snmp)
        ctx.unregister_context_name(b"")
        ctx.register_context_name(b"", _Table(self))
        for responder in (cmdrsp.GetCommandResponder, cmdrsp.NextCommandResponder,
                          cmdrsp.BulkCommandResponder, cmdrsp.SetCommandResponder):
            responder(snmp, ctx)
        snmp.open_dispatcher()
        self.engine = snmp
        async with asyncio.timeout(START_TIMEOUT_S):
            await transport._lport  # the endpoint is ready once pysnmp's future is done

    async def stop(self) -> None:
        if self.engine is not None:
            self.engine.close_dispatcher()
            self.engine = None

