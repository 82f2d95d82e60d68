"""The admin page of the PoE switches (agents with the power feature): each switch, Add and Edit
(SNMP v1/v2c/v3; pass phrases never written back into a page), deletion, a switch's ports and
their power, each call bounded by the hub's deadline."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from piseduce.numbers import StrictInt
from piseduce.protocol import Feature
from piseduce.protocol_rpi import PortOut
from piseduce.webui import audit
from piseduce.webui.agent_client import AgentClient, Result, agents
from piseduce.webui.agents import AgentRef
from piseduce.webui.models import User
from piseduce.webui.routes.infra_calls import (
    agents_with,
    alive_but_slow,
    back_to,
    change,
    delete_item,
    find_agent,
    list_block,
)
from piseduce.webui.routes.infra_forms import (
    ITEM_NAME_RE,
    FormError,
    form_dict,
    int_field,
)
from piseduce.webui.web import admin_user, flash, form_str, identity, redirect, render

router = APIRouter(prefix="/admin")
SWITCHES_PAGE = "/admin/switches"


SWITCH_INTS = {
    "snmp_port": (1, 65535),
    "oid_offset": (0, 100_000),
    "power_oid_offset": (0, 100_000),
    "port_count": (1, 1024),
    "master_port": (0, 1024),
}


SWITCH_FORM_KEYS = (
    "name",
    "ip",
    "snmp_port",
    "poe_oid",
    "oid_offset",
    "port_count",
    "power_oid",
    "power_oid_offset",
    "master_port",
    "snmp_version",
    "v3_user",
    "v3_auth_protocol",
    "v3_priv_protocol",
)


# The SNMP choices of a switch (the agent's SwitchIn): version, v3 USM protocols.
SWITCH_CHOICES = {
    "snmp_version": ("SNMP version", ("v2c", "v1", "v3")),
    "v3_auth_protocol": ("v3 authentication", ("SHA", "SHA-256")),
    "v3_priv_protocol": ("v3 privacy", ("AES", "none")),
}


async def _switches_page(
    request: Request,
    me: User,
    h: AgentClient,
    *,
    form_agent: int = 0,
    form: dict[str, str] | None = None,
    error: str = "",
    status: int = 200,
    editing: str = "",
) -> Response:
    who = identity(request, me)
    refs = await agents_with(h, Feature.POWER)
    blocks, netconfigs = await asyncio.gather(
        asyncio.gather(*(list_block(h.switches(r, who), "switches") for r in refs)),
        asyncio.gather(*(h.network_config(r, who) for r in refs)),
    )
    defaults = {
        "snmp_port": "161",
        "poe_oid": "1.3.6.1.2.1.105.1.1.1.3.1",
        "oid_offset": "0",
        "power_oid_offset": "0",
        "port_count": "8",
        "master_port": "0",
        "snmp_version": "v2c",
        "v3_auth_protocol": "SHA",
        "v3_priv_protocol": "AES",
    }
    return render(
        request,
        "admin_switches.html",
        {
            "page": "admin_switches",
            "blocks": blocks,
            # Each agent's boards' network configuration (read-only, to copy onto the pimaster).
            "netconfigs": {n.agent.id: n for n in netconfigs},
            "form_agent": form_agent,
            "form": form or defaults,
            "defaults": defaults,
            "choices": {k: v[1] for k, v in SWITCH_CHOICES.items()},
            "error": error,
            "editing": editing,  # the switch whose edit form comes back filled, with `error`
        },
        status=status,
    )


@router.get("/switches")
async def switches_page(
    request: Request, me: User = Depends(admin_user), h: AgentClient = Depends(agents)
) -> Response:
    return await _switches_page(request, me, h)


def _switch_snmp(form: dict[str, str], secrets: dict[str, str]) -> dict[str, Any]:
    """The SNMP part of a switch body: version, v3 user and protocols, and the pass phrases typed
    (an empty one on an edit keeps the agent's stored one)."""
    body: dict[str, Any] = {}
    for key, (label, choices) in SWITCH_CHOICES.items():
        value = form.get(key, "").strip() or choices[0]
        if value not in choices:
            raise FormError(f"{label}: one of {', '.join(choices)}")
        body[key] = value
    user = form.get("v3_user", "").strip()
    if body["snmp_version"] == "v3" and not user:
        raise FormError("v3 user: the SNMPv3 (USM) user name of the switch")
    body["v3_user"] = user
    for key in ("v3_auth_key", "v3_priv_key"):
        if secrets.get(key) and not 8 <= len(secrets[key]) <= 128:
            raise FormError(f"{'v3 authentication' if 'auth' in key else 'v3 privacy'} pass phrase: "
                            "8 to 128 characters")
    body.update({k: v for k, v in secrets.items() if v})
    return body


def switch_body(
    form: dict[str, str], community: str, v3_keys: dict[str, str] | None = None
) -> dict[str, Any]:
    name = form.get("name", "").strip()
    if not ITEM_NAME_RE.match(name):
        raise FormError("name: 1 to 128 letters, digits, '.', '_' or '-'")
    ip = form.get("ip", "").strip()
    if not ip:
        raise FormError("IP: the switch's management address")
    body: dict[str, Any] = {"name": name, "ip": ip}
    labels = {
        "snmp_port": "SNMP port",
        "oid_offset": "OID offset",
        "power_oid_offset": "Power OID offset",
        "port_count": "Port count",
        "master_port": "Master port",
    }
    for key, (lo, hi) in SWITCH_INTS.items():
        number = int_field(form, key, labels[key], lo, hi, None)
        if number is not None:
            body[key] = number
    for key in ("poe_oid", "power_oid"):
        oid = form.get(key, "").strip()
        if oid:
            body[key] = oid
    body.update(_switch_snmp(form, {"community": community, **(v3_keys or {})}))
    return body


@router.post("/switches/{agent_id}")
async def add_switch(
    agent_id: StrictInt, request: Request, me: User = Depends(admin_user), h: AgentClient = Depends(agents)
) -> Response:
    return await _save_switch(agent_id, None, request, me, h)


@router.post("/switches/{agent_id}/edit/{name}")
async def edit_switch(
    agent_id: StrictInt,
    name: str,
    request: Request,
    me: User = Depends(admin_user),
    h: AgentClient = Depends(agents),
) -> Response:
    return await _save_switch(agent_id, name, request, me, h)


async def _save_switch(
    agent_id: StrictInt, editing: str | None, request: Request, me: User, h: AgentClient
) -> Response:
    """Add a switch (errors shown in the add form, kept filled) or change `editing` (errors flashed)."""
    raw = await request.form()
    form = form_dict(raw, SWITCH_FORM_KEYS, 300)
    if editing is not None:
        form["name"] = editing  # no renaming
    # The community is a password of the switch: sent to the agent, never written back in the page.
    # Left empty on an edit, the agent keeps the stored one.
    community = form_str(raw, "community", 200)
    v3_keys = {key: form_str(raw, key, 200) for key in ("v3_auth_key", "v3_priv_key")}
    ref = await find_agent(h, agent_id, Feature.POWER)
    if ref is None or (editing is not None and not ITEM_NAME_RE.match(editing)):
        return back_to(request, SWITCHES_PAGE, "No such agent with PoE switches, or no such switch.")
    if editing is None:
        failed = "Switch not added"
        done = f"Switch {form.get('name', '').strip()} added to {ref.name}."
    else:
        failed = f"Switch {editing} not changed"
        done = f"Switch {editing} on {ref.name} saved."

    async def refused(message: str) -> Response:
        # The add or edit form again, still filled, with the reason.
        return await _switches_page(
            request, me, h, form_agent=agent_id, form=form, error=message, status=400, editing=editing or ""
        )

    try:
        body = switch_body(form, community, v3_keys)
    except FormError as exc:
        return await refused(f"{failed}: {exc}")
    _reply, problem = await change(h, ref, h.save_switch(ref, identity(request, me), body, editing))
    if problem:
        return await refused(f"{failed}: {problem}")
    target = ("switch", f"{ref.name}/{body['name']}")
    await audit.note(request, me, "switch.edit" if editing else "switch.add", target)
    return back_to(request, SWITCHES_PAGE, done, "ok")


@router.post("/switches/{agent_id}/delete/{name}")
async def delete_switch(
    agent_id: StrictInt,
    name: str,
    request: Request,
    me: User = Depends(admin_user),
    h: AgentClient = Depends(agents),
) -> Response:
    return await delete_item(
        request, me, h, agent_id, name, "switch", "switches", SWITCHES_PAGE,
        lambda ref, _reply: f"Switch {name} deleted from {ref.name}.",
    )


def _switch_problem(ref: AgentRef, name: str, reply: Result[Any], slow: bool, timeout: float) -> str:
    if slow:
        # Only late, not refused: a busy switch (or agent) answers a moment later.
        return (
            f"Switch {name} did not answer in time: {ref.name} was still waiting for it after "
            f"{timeout:g} s (the switch or the agent may be busy). Reload the page; if this persists, "
            "check the switch's IP, SNMP port and community."
        )
    if reply.status == 502:
        # The agent's SNMP retries all went unanswered: now the settings are worth a look.
        return (f"Switch {name} unreachable: {reply.error}. No answer after the agent's retries: "
                "check the switch's IP, SNMP port and community.")
    return reply.words


@router.get("/switches/{agent_id}/ports/{name}")
async def switch_ports(
    agent_id: StrictInt,
    name: str,
    request: Request,
    me: User = Depends(admin_user),
    h: AgentClient = Depends(agents),
) -> Response:
    """The PoE port table of one switch (an htmx fragment: the SNMP walk never delays the page)."""
    ref = await find_agent(h, agent_id)
    ports: list[PortOut] = []
    problem = ""
    if ref is None or not ITEM_NAME_RE.match(name):
        problem = "No such agent or switch."
    else:
        reply = await h.switch_ports(ref, identity(request, me), name)
        if reply.value is not None:
            ports = reply.value
        else:
            slow = await alive_but_slow(h, ref, reply)
            problem = _switch_problem(ref, name, reply, slow, h.snmp_deadline)
    return render(
        request,
        "_switch_ports.html",
        {"agent_id": agent_id, "switch": name, "ports": ports, "problem": problem},
    )


@router.post("/switches/{agent_id}/power/{name}/{port}/{state}")
async def power_port(
    agent_id: StrictInt,
    name: str,
    port: StrictInt,
    state: str,
    request: Request,
    me: User = Depends(admin_user),
    h: AgentClient = Depends(agents),
) -> Response:
    ref = await find_agent(h, agent_id)
    back = f"{SWITCHES_PAGE}#sw-{agent_id}-{name}" if ITEM_NAME_RE.match(name) else SWITCHES_PAGE
    if ref is None or not ITEM_NAME_RE.match(name) or state not in ("on", "off") or not 1 <= port <= 4096:
        return back_to(request, SWITCHES_PAGE, "No such agent, switch, port or power state.")
    reply = await h.power(ref, identity(request, me), name, port, state == "on")
    if reply.value is not None:
        node, now = reply.value.node, reply.value.status
        port_id = ("port", f"{ref.name}/{name}/{port}")
        await audit.note(request, me, "port.power", port_id, {"state": state, "node": node})
        flash(
            request, f"Switch {name} port {port}" + (f" ({node})" if node else "") + f": power {now}.", "ok"
        )
    else:
        slow = await alive_but_slow(h, ref, reply)
        flash(
            request,
            f"Port {port} not powered {state}: {_switch_problem(ref, name, reply, slow, h.snmp_deadline)}",
            "error",
        )
    return redirect(request, back)
