"""Admin routes of a raspberry agent for its PoE switches (under `/api/admin`): register, change,
remove, the state and draw of every port, and powering one port on or off."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from piseduce.agent.actions import add_event
from piseduce.agent.auth import AdminDep, admin
from piseduce.agent.drivers.raspberry import switch_identity
from piseduce.agent.drivers.raspberry.admin_schemas import (
    ERRORS,
    NameParam,
    Rpi,
    SwitchIn,
    merged_secrets,
    row_to_save,
    switch_out,
)
from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
from piseduce.agent.drivers.raspberry.power import PowerError, PowerRefused, PowerUnreachable
from piseduce.agent.drivers.raspberry.power_events import tell_holders
from piseduce.agent.drivers.raspberry.snmp import SwitchInfo
from piseduce.agent.drivers.raspberry.switch_secrets import SecretsUnavailable
from piseduce.agent.models import Node, Switch
from piseduce.db import write_session
from piseduce.numbers import StrictInt
from piseduce.protocol import Deleted
from piseduce.protocol_rpi import PortOut, SwitchOut

router = APIRouter(tags=["admin: raspberry"], dependencies=[Depends(admin)], responses=ERRORS)


def switches(driver: RaspberryDriver) -> list[SwitchOut]:
    with driver.sessions() as s:
        return [switch_out(r) for r in s.scalars(select(Switch).order_by(Switch.name))]


def switch_info(driver: RaspberryDriver, name: str) -> SwitchInfo:
    with driver.sessions() as s:
        row = s.get(Switch, name)
        if row is None:
            raise HTTPException(404, f"switch {name} not found")
        try:
            return driver.keyring.info(row)
        except SecretsUnavailable as exc:
            raise HTTPException(409, str(exc)) from None


def nodes_on(driver: RaspberryDriver, name: str) -> dict[int, str]:
    """The nodes of switch `name`, by port."""
    with driver.sessions() as s:
        out: dict[int, str] = {}
        for n in s.scalars(select(Node).where(Node.present.is_(True))):
            attrs = n.attrs or {}
            if attrs.get("switch") == name and attrs.get("port") not in (None, ""):
                try:
                    out[int(attrs["port"])] = n.name
                except (TypeError, ValueError):
                    continue
        return out


KEPT_UNLESS_GIVEN = ("snmp_version", "v3_user", "v3_auth_protocol", "v3_priv_protocol")


def save_switch(driver: RaspberryDriver, body: SwitchIn, create: bool, name: str | None = None) -> SwitchOut:
    if not create:
        # A node left on a port the switch no longer has (or on its uplink) could not be powered.
        stranded = {port: node for port, node in nodes_on(driver, name or body.name).items()
                    if port > body.port_count or port == body.master_port}
        if stranded:
            where = ", ".join(f"{node} (port {port})" for port, node in sorted(stranded.items()))
            raise HTTPException(409, f"{where} would be left outside the switch's ports or on its "
                                     "master port; move them first")
    own = body.name if create else (name or body.name)
    with driver.sessions() as s:  # the name's own answers first (a missing record, a taken name)
        row_to_save(s, Switch, "switch", body.name, create, name)
        s.rollback()
    existing = switch_identity.same_address(driver.sessions, body.ip, body.snmp_port, own)
    if existing:
        raise HTTPException(409, switch_identity.refusal(existing, body.ip, body.snmp_port))
    with write_session(driver.sessions) as s:
        existing = switch_identity.same_key(s, body.ip, body.snmp_port, own)
        if existing:
            raise HTTPException(409, switch_identity.refusal(existing, body.ip, body.snmp_port))
        row = row_to_save(s, Switch, "switch", body.name, create, name)
        if not create:
            # An update that leaves out the SNMP version and v3 settings keeps the stored ones
            # (admin guide §5), as it keeps the pass phrases: only a request naming them changes them.
            body = body.model_copy(update={f: getattr(row, f) for f in KEPT_UNLESS_GIVEN
                                           if f not in body.model_fields_set})
        for field in ("ip", "snmp_port", "poe_oid", "oid_offset", "port_count", "power_oid",
                      "power_oid_offset", "master_port", "snmp_version", "v3_user", "v3_auth_protocol",
                      "v3_priv_protocol"):
            setattr(row, field, getattr(body, field))
        try:
            driver.keyring.store(row, merged_secrets(driver.keyring, row, body))
        except SecretsUnavailable as exc:
            raise HTTPException(409, f"switch not saved: {exc}") from None
        s.flush()
        return switch_out(row)


def delete_switch_row(driver: RaspberryDriver, name: str) -> dict[str, str]:
    used = nodes_on(driver, name)
    if used:
        raise HTTPException(409, f"switch {name} powers node(s) {', '.join(sorted(used.values()))}; "
                                 "remove them or move them first")
    with write_session(driver.sessions) as s:
        row = s.get(Switch, name)
        if row is None:
            raise HTTPException(404, f"switch {name} not found")
        s.delete(row)
    return {"name": name, "result": "deleted"}


@router.get("/switches", response_model=list[SwitchOut])
async def list_switches(driver: Rpi) -> list[SwitchOut]:
    """The PoE switches (the SNMP community is never shown)."""
    return await run_in_threadpool(switches, driver)


@router.post("/switches", status_code=201, response_model=SwitchOut)
async def add_switch(body: SwitchIn, driver: Rpi) -> SwitchOut:
    """Register a PoE switch; `master_port` is its uplink to the pimaster (never switched)."""
    return await run_in_threadpool(save_switch, driver, body, True)


@router.get("/switches/{name}", response_model=SwitchOut)
async def get_switch(name: NameParam, driver: Rpi) -> SwitchOut:
    for sw in await run_in_threadpool(switches, driver):
        if sw.name == name:
            return sw
    raise HTTPException(404, f"switch {name} not found")


@router.put("/switches/{name}", response_model=SwitchOut)
async def update_switch(name: NameParam, body: SwitchIn, driver: Rpi) -> SwitchOut:
    return await run_in_threadpool(save_switch, driver, body, False, name)


@router.delete("/switches/{name}", response_model=Deleted)
async def delete_switch(name: NameParam, driver: Rpi) -> dict[str, str]:
    return await run_in_threadpool(delete_switch_row, driver, name)


@router.get("/switches/{name}/ports", response_model=list[PortOut])
async def switch_ports(name: NameParam, driver: Rpi) -> list[PortOut]:
    """PoE state of every port (one SNMP walk), with the node on it and its power draw."""
    sw = await run_in_threadpool(switch_info, driver, name)
    nodes = await run_in_threadpool(nodes_on, driver, name)
    try:
        states = await driver.power.statuses(sw)
    except PowerError as exc:
        raise HTTPException(502, str(exc)) from None
    out = []
    for port in range(1, sw.port_count + 1):
        power = None
        if sw.power_oid:
            try:
                power = await driver.power.draw(sw, port)
            except PowerError:
                power = None
        out.append(PortOut(port=port, status=states.get(port, "unknown"), master=port == sw.master_port,
                           node=nodes.get(port), power_w=power))
    return out


def _record(driver: RaspberryDriver, message: str, node: str | None, on: bool, user: str) -> None:
    with write_session(driver.sessions) as s:
        add_event(s, None, message)
        if node is not None:
            tell_holders(s, node, on, user)


def _shared_uplinks(driver: RaspberryDriver, name: str) -> dict[int, str]:
    with driver.sessions() as s:
        row = s.get(Switch, name)
        return switch_identity.uplinks_sharing(s, row) if row is not None else {}


async def _power(driver: RaspberryDriver, name: str, port: int, on: bool, user: str) -> PortOut:
    sw = await run_in_threadpool(switch_info, driver, name)
    if not 1 <= port <= sw.port_count:
        raise HTTPException(422, f"port: switch {name} has ports 1..{sw.port_count}")
    other = (await run_in_threadpool(_shared_uplinks, driver, name)).get(port)
    if other is not None:
        raise HTTPException(409, f"port {port} of switch {name} is the master (uplink) port of switch "
                                 f"{other}, the same switch: its power is never switched")
    try:
        await driver.power.set(sw, port, on)
        state = await driver.power.status(sw, port)
    except PowerRefused as exc:
        raise HTTPException(409, str(exc)) from None
    except PowerUnreachable as exc:
        raise HTTPException(502, str(exc)) from None
    node = (await run_in_threadpool(nodes_on, driver, name)).get(port)
    what = f"switch {name} port {port}" + (f" ({node})" if node else "")
    message = f"{what} powered {'on' if on else 'off'} by {user}"
    await run_in_threadpool(_record, driver, message, node, on, user)
    return PortOut(port=port, status=state, master=False, node=node)


@router.post("/switches/{name}/ports/{port}/on", response_model=PortOut)
async def port_on(name: NameParam, port: StrictInt, caller: AdminDep, driver: Rpi) -> PortOut:
    return await _power(driver, name, port, True, caller.user)


@router.post("/switches/{name}/ports/{port}/off", response_model=PortOut)
async def port_off(name: NameParam, port: StrictInt, caller: AdminDep, driver: Rpi) -> PortOut:
    """Refused (409) on the switch's master port. A reservation holding the node keeps its
    status (the system on its card is intact) and gets an event saying who powered it off;
    the owner's Reboot powers it on again."""
    return await _power(driver, name, port, False, caller.user)
