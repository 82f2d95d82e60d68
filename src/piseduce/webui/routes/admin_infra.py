"""Admin pages of the agents' infrastructure: nodes (every agent), PoE switches and environments
(raspberry agents). Each page asks every agent concurrently, each call bounded by the hub's
deadline; every change is a POST (CSRF-checked by the app) forwarded to the agent's admin API, and
the agent's refusal is shown in words."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from piseduce.webui.agents import AgentHub, AgentRef, Identity, Reply
from piseduce.webui.models import User
from piseduce.webui.web import admin_user, flash, form_str, hub, identity, redirect, render

router = APIRouter(prefix="/admin")
NODES_PAGE = "/admin/nodes"
SWITCHES_PAGE = "/admin/switches"
ENVS_PAGE = "/admin/environments"

# The agents' own patterns: a name that fails them would only earn a 404/422 from the agent.
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$")
ITEM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PROP_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
NODE_STATUSES = ("available", "maintenance", "broken")
# Agents whose node list is a mirror of a testbed's inventory: a local change would be undone.
SYNCED_TYPES = ("g5k", "iot-lab")
SWITCH_INTS = {
    "snmp_port": (1, 65535),
    "oid_offset": (0, 100_000),
    "power_oid_offset": (0, 100_000),
    "port_count": (1, 1024),
    "master_port": (0, 1024),
}
NODE_FORM_KEYS = (
    "name",
    "ip",
    "switch",
    "port",
    "ssh_port",
    "model",
    "serial",
    "mac",
    "host_key",
    "properties",
)
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
)
ENV_FORM_KEYS = (
    "name",
    "image",
    "size",
    "sector_start",
    "ssh_user",
    "checksum",
    "description",
    "state",
    "owner",
)


class FormError(ValueError):
    """A field the web UI can reject before asking the agent."""


@dataclass
class AgentBlock:
    """One agent's section of a page: its items, or why they are missing."""

    agent: AgentRef
    items: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    switches: list[str] = field(default_factory=list)

    @property
    def editable(self) -> bool:
        return self.agent.node_type not in SYNCED_TYPES


def _path(name: str) -> str:
    return quote(name, safe="")


def _find(h: AgentHub, agent_id: int) -> AgentRef | None:
    return next((r for r in h.refs() if r.id == agent_id), None)


def _find_raspberry(h: AgentHub, agent_id: int) -> AgentRef | None:
    ref = _find(h, agent_id)
    return ref if ref is not None and ref.node_type == "raspberry" else None


async def _alive_but_slow(h: AgentHub, ref: AgentRef, reply: Reply) -> bool:
    """After a timed-out call: True when the agent still answers its health check, i.e. only this
    request was slow (an SNMP switch that does not answer, a checksum being computed). The
    breaker, opened by the timeout, is closed again so the agent's other pages are not blanked."""
    if reply.status != 0 or "did not answer" not in reply.error:
        return False
    health = await h.call(ref, "GET", "/api/health", use_breaker=False)
    if health.ok:
        h.breaker(ref.id).success()
        return True
    return False


async def _change(
    h: AgentHub,
    ref: AgentRef,
    who: Identity,
    method: str,
    path: str,
    json: Any = None,
    *,
    slow_hint: str = "",
) -> tuple[Reply, str]:
    """A state-changing call; returns the reply and, when it failed, the message for the admin."""
    reply = await h.call(ref, method, path, who=who, json=json)
    if reply.ok:
        return reply, ""
    if await _alive_but_slow(h, ref, reply):
        return reply, (
            f"{ref.name}: the agent did not finish within {h.timeout:g} s"
            + (f"; {slow_hint}" if slow_hint else "")
            + ". Reload the page to see the outcome."
        )
    return reply, reply.words


def _back(request: Request, page: str, message: str, kind: str = "error") -> Response:
    """Flash a message and send the admin back to the page."""
    flash(request, message, kind)
    return redirect(request, page)


def _int_field(
    form: dict[str, str], key: str, label: str, lo: int, hi: int, default: int | None
) -> int | None:
    text = form.get(key, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise FormError(f"{label}: a whole number between {lo} and {hi}") from None
    if not lo <= value <= hi:
        raise FormError(f"{label}: a whole number between {lo} and {hi}")
    return value


def _prop_value(text: str) -> str | int | float | bool:
    """Numbers stay numbers (so that reserve filters can compare them), booleans stay booleans."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        n = int(text)
        if str(n) == text:
            return n
    except ValueError:
        pass
    try:
        f = float(text)
        if repr(f) == text or str(f) == text:
            return f
    except ValueError:
        pass
    return text


def parse_properties(text: str) -> dict[str, str | int | float | bool]:
    """`key=value` lines (or `;`-separated) into the node's free properties."""
    out: dict[str, str | int | float | bool] = {}
    for raw in re.split(r"[\n;]", text):
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not PROP_KEY_RE.match(key):
            raise FormError(
                f"properties: '{line[:60]}' is not key=value (keys: letters, digits, '_', '.', '-')"
            )
        if len(value) > 256:
            raise FormError(f"properties: the value of {key} is longer than 256 characters")
        out[key] = _prop_value(value)
    if len(out) > 32:
        raise FormError("properties: at most 32")
    return out


def _form_dict(form: FormData, keys: tuple[str, ...], limit: int = 4096) -> dict[str, str]:
    return {k: form_str(form, k, limit) for k in keys}


# ---------------------------------------------------------------- nodes


async def _node_block(h: AgentHub, ref: AgentRef, who: Identity) -> AgentBlock:
    block = AgentBlock(ref)
    calls = [h.call(ref, "GET", "/api/admin/nodes", who=who)]
    if ref.node_type == "raspberry":
        calls.append(h.call(ref, "GET", "/api/admin/switches", who=who))
    replies = await asyncio.gather(*calls)
    nodes = replies[0]
    if not nodes.ok or not isinstance(nodes.data, list):
        block.error = nodes.error or "the agent sent no node list"
        return block
    block.items = [n for n in nodes.data if isinstance(n, dict)]
    if len(replies) > 1 and replies[1].ok and isinstance(replies[1].data, list):
        block.switches = [str(s.get("name")) for s in replies[1].data if isinstance(s, dict)]
    return block


async def _nodes_page(
    request: Request,
    me: User,
    h: AgentHub,
    *,
    form_agent: int = 0,
    form: dict[str, str] | None = None,
    error: str = "",
    status: int = 200,
) -> Response:
    who = identity(request, me)
    blocks = await asyncio.gather(*(_node_block(h, r, who) for r in h.refs()))
    return render(
        request,
        "admin_nodes.html",
        {
            "page": "admin_nodes",
            "blocks": blocks,
            "statuses": NODE_STATUSES,
            "form_agent": form_agent,
            "form": form or {"ssh_port": "22"},
            "error": error,
        },
        status=status,
    )


@router.get("/nodes")
async def nodes_page(
    request: Request, me: User = Depends(admin_user), h: AgentHub = Depends(hub)
) -> Response:
    return await _nodes_page(request, me, h)


def node_body(form: dict[str, str]) -> dict[str, Any]:
    """The agent's NodeIn from the Add Node form (only the checks the web UI can word better)."""
    name = form.get("name", "").strip()
    if not NODE_NAME_RE.match(name):
        raise FormError("name: 1 to 128 letters, digits or . _ @ : + - (starting with a letter or digit)")
    body: dict[str, Any] = {"name": name, "ip": form.get("ip", "").strip()}
    switch = form.get("switch", "").strip()
    port = _int_field(form, "port", "PoE port", 0, 4096, None)
    if switch:
        body["switch"] = switch
        if port is None:
            raise FormError("PoE port: the switch port of the node is needed with a switch")
    if port is not None:
        body["port"] = port
    body["ssh_port"] = _int_field(form, "ssh_port", "SSH port", 1, 65535, 22)
    for key in ("model", "serial", "mac", "host_key"):
        value = form.get(key, "").strip()
        if value:
            body[key] = value
    body["properties"] = parse_properties(form.get("properties", ""))
    return body


@router.post("/nodes/{agent_id}")
async def add_node(
    agent_id: int, request: Request, me: User = Depends(admin_user), h: AgentHub = Depends(hub)
) -> Response:
    form = _form_dict(await request.form(), NODE_FORM_KEYS)
    ref = _find(h, agent_id)
    if ref is None:
        return _back(request, NODES_PAGE, "No such agent.")
    if ref.node_type in SYNCED_TYPES:
        return _back(
            request, NODES_PAGE, f"{ref.name}: {ref.node_type} nodes come from the testbed's inventory."
        )
    form_again = partial(_nodes_page, request, me, h, form_agent=agent_id, form=form, status=400)
    try:
        body = node_body(form)
    except FormError as exc:
        return await form_again(error=str(exc))
    _reply, problem = await _change(h, ref, identity(request, me), "POST", "/api/admin/nodes", body)
    if problem:
        return await form_again(error=f"Node not added: {problem}")
    return _back(request, NODES_PAGE, f"Node {body['name']} added to {ref.name}.", "ok")


@router.post("/nodes/{agent_id}/status/{name}")
async def node_status(
    agent_id: int, name: str, request: Request, me: User = Depends(admin_user), h: AgentHub = Depends(hub)
) -> Response:
    status = form_str(await request.form(), "status", 20)
    ref = _find(h, agent_id)
    if ref is None or not NODE_NAME_RE.match(name) or status not in NODE_STATUSES:
        return _back(request, NODES_PAGE, "No such agent, node or status.")
    _reply, problem = await _change(
        h, ref, identity(request, me), "POST", f"/api/admin/nodes/{_path(name)}/status", {"status": status}
    )
    if problem:
        return _back(request, NODES_PAGE, f"Status of {name} not changed: {problem}")
    return _back(request, NODES_PAGE, f"{name} ({ref.name}) is now {status}.", "ok")


@router.post("/nodes/{agent_id}/delete/{name}")
async def delete_node(
    agent_id: int, name: str, request: Request, me: User = Depends(admin_user), h: AgentHub = Depends(hub)
) -> Response:
    def done(ref: AgentRef, reply: Reply) -> str:
        # A node with past reservations is only removed (kept for their history): the agent says which.
        result = reply.data.get("result", "deleted") if isinstance(reply.data, dict) else "deleted"
        return f"Node {name} {result}."

    return await _delete_item(request, me, h, agent_id, name, "node", "nodes", NODES_PAGE, done, NODE_NAME_RE)


async def _delete_item(
    request: Request,
    me: User,
    h: AgentHub,
    agent_id: int,
    name: str,
    what: str,
    collection: str,
    page: str,
    done: Callable[[AgentRef, Reply], str],
    name_re: re.Pattern[str] = ITEM_NAME_RE,
) -> Response:
    """DELETE /api/admin/<collection>/<name> on the agent, then back to `page` with the outcome in words."""
    ref = _find(h, agent_id)
    if ref is None or not name_re.match(name):
        return _back(request, page, f"No such agent or {what}.")
    reply, problem = await _change(
        h, ref, identity(request, me), "DELETE", f"/api/admin/{collection}/{_path(name)}"
    )
    if problem:
        return _back(request, page, f"{what.capitalize()} {name} not deleted: {problem}")
    return _back(request, page, done(ref, reply), "ok")


# ---------------------------------------------------------------- switches


def _raspberry(h: AgentHub) -> list[AgentRef]:
    return [r for r in h.refs() if r.node_type == "raspberry"]


def _not_managed(reply: Reply, what: str) -> str:
    if reply.status in (404, 405):
        return f"this agent does not manage {what} (its driver has no such admin routes)"
    return reply.error or f"the agent sent no {what} list"


async def _list_block(h: AgentHub, ref: AgentRef, who: Identity, path: str, what: str) -> AgentBlock:
    reply = await h.call(ref, "GET", path, who=who)
    if not reply.ok or not isinstance(reply.data, list):
        return AgentBlock(ref, error=_not_managed(reply, what))
    return AgentBlock(ref, items=[i for i in reply.data if isinstance(i, dict)])


async def _switches_page(
    request: Request,
    me: User,
    h: AgentHub,
    *,
    form_agent: int = 0,
    form: dict[str, str] | None = None,
    error: str = "",
    status: int = 200,
) -> Response:
    who = identity(request, me)
    refs = _raspberry(h)
    blocks = await asyncio.gather(*(_list_block(h, r, who, "/api/admin/switches", "switches") for r in refs))
    defaults = {
        "snmp_port": "161",
        "poe_oid": "1.3.6.1.2.1.105.1.1.1.3.1",
        "oid_offset": "0",
        "power_oid_offset": "0",
        "port_count": "8",
        "master_port": "0",
    }
    return render(
        request,
        "admin_switches.html",
        {
            "page": "admin_switches",
            "blocks": blocks,
            "form_agent": form_agent,
            "form": form or defaults,
            "defaults": defaults,
            "error": error,
        },
        status=status,
    )


@router.get("/switches")
async def switches_page(
    request: Request, me: User = Depends(admin_user), h: AgentHub = Depends(hub)
) -> Response:
    return await _switches_page(request, me, h)


def switch_body(form: dict[str, str], community: str) -> dict[str, Any]:
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
        number = _int_field(form, key, labels[key], lo, hi, None)
        if number is not None:
            body[key] = number
    for key in ("poe_oid", "power_oid"):
        oid = form.get(key, "").strip()
        if oid:
            body[key] = oid
    if community:
        body["community"] = community
    return body


@router.post("/switches/{agent_id}")
async def add_switch(
    agent_id: int, request: Request, me: User = Depends(admin_user), h: AgentHub = Depends(hub)
) -> Response:
    return await _save_switch(agent_id, None, request, me, h)


@router.post("/switches/{agent_id}/edit/{name}")
async def edit_switch(
    agent_id: int, name: str, request: Request, me: User = Depends(admin_user), h: AgentHub = Depends(hub)
) -> Response:
    return await _save_switch(agent_id, name, request, me, h)


async def _save_switch(
    agent_id: int, editing: str | None, request: Request, me: User, h: AgentHub
) -> Response:
    """Add a switch (errors shown in the add form, kept filled) or change `editing` (errors flashed)."""
    raw = await request.form()
    form = _form_dict(raw, SWITCH_FORM_KEYS, 300)
    if editing is not None:
        form["name"] = editing  # no renaming
    # The community is a password of the switch: sent to the agent, never written back in the page.
    # Left empty on an edit, the agent keeps the stored one.
    community = form_str(raw, "community", 200)
    ref = _find_raspberry(h, agent_id)
    if ref is None or (editing is not None and not ITEM_NAME_RE.match(editing)):
        return _back(request, SWITCHES_PAGE, "No such raspberry agent or switch.")
    if editing is None:
        method, path, failed = "POST", "/api/admin/switches", "Switch not added"
        done = f"Switch {form.get('name', '').strip()} added to {ref.name}."
    else:
        method, path, failed = "PUT", f"/api/admin/switches/{_path(editing)}", f"Switch {editing} not changed"
        done = f"Switch {editing} on {ref.name} saved."

    async def refused(message: str) -> Response:
        if editing is None:  # the add form again, still filled, with the reason
            return await _switches_page(
                request, me, h, form_agent=agent_id, form=form, error=message, status=400
            )
        return _back(request, SWITCHES_PAGE, message)

    try:
        body = switch_body(form, community)
    except FormError as exc:
        return await refused(f"{failed}: {exc}")
    _reply, problem = await _change(h, ref, identity(request, me), method, path, body)
    if problem:
        return await refused(f"{failed}: {problem}")
    return _back(request, SWITCHES_PAGE, done, "ok")


@router.post("/switches/{agent_id}/delete/{name}")
async def delete_switch(
    agent_id: int, name: str, request: Request, me: User = Depends(admin_user), h: AgentHub = Depends(hub)
) -> Response:
    return await _delete_item(
        request, me, h, agent_id, name, "switch", "switches", SWITCHES_PAGE,
        lambda ref, _reply: f"Switch {name} deleted from {ref.name}.",
    )


def _switch_problem(ref: AgentRef, name: str, reply: Reply, slow: bool, timeout: float) -> str:
    if slow:
        return (
            f"Switch {name} unreachable: {ref.name} got no SNMP answer within {timeout:g} s; "
            "check the switch's IP, SNMP port and community."
        )
    if reply.status == 502:
        return f"Switch {name} unreachable: {reply.error}"
    return reply.words


@router.get("/switches/{agent_id}/ports/{name}")
async def switch_ports(
    agent_id: int, name: str, request: Request, me: User = Depends(admin_user), h: AgentHub = Depends(hub)
) -> Response:
    """The PoE port table of one switch (an htmx fragment: the SNMP walk never delays the page)."""
    ref = _find(h, agent_id)
    ports: list[dict[str, Any]] = []
    problem = ""
    if ref is None or not ITEM_NAME_RE.match(name):
        problem = "No such agent or switch."
    else:
        reply = await h.call(
            ref, "GET", f"/api/admin/switches/{_path(name)}/ports", who=identity(request, me)
        )
        if reply.ok and isinstance(reply.data, list):
            ports = [p for p in reply.data if isinstance(p, dict)]
        else:
            slow = await _alive_but_slow(h, ref, reply)
            problem = _switch_problem(ref, name, reply, slow, h.timeout)
    return render(
        request,
        "_switch_ports.html",
        {"agent_id": agent_id, "switch": name, "ports": ports, "problem": problem},
    )


@router.post("/switches/{agent_id}/power/{name}/{port}/{state}")
async def power_port(
    agent_id: int,
    name: str,
    port: int,
    state: str,
    request: Request,
    me: User = Depends(admin_user),
    h: AgentHub = Depends(hub),
) -> Response:
    ref = _find(h, agent_id)
    back = f"{SWITCHES_PAGE}#sw-{agent_id}-{name}" if ITEM_NAME_RE.match(name) else SWITCHES_PAGE
    if ref is None or not ITEM_NAME_RE.match(name) or state not in ("on", "off") or not 1 <= port <= 4096:
        return _back(request, SWITCHES_PAGE, "No such agent, switch, port or power state.")
    path = f"/api/admin/switches/{_path(name)}/ports/{port}/{state}"
    reply = await h.call(ref, "POST", path, who=identity(request, me))
    if reply.ok:
        node = reply.data.get("node") if isinstance(reply.data, dict) else None
        now = reply.data.get("status", state) if isinstance(reply.data, dict) else state
        flash(
            request, f"Switch {name} port {port}" + (f" ({node})" if node else "") + f": power {now}.", "ok"
        )
    else:
        slow = await _alive_but_slow(h, ref, reply)
        flash(
            request,
            f"Port {port} not powered {state}: {_switch_problem(ref, name, reply, slow, h.timeout)}",
            "error",
        )
    return redirect(request, back)


# ---------------------------------------------------------------- environments


async def _envs_page(
    request: Request,
    me: User,
    h: AgentHub,
    *,
    form_agent: int = 0,
    form: dict[str, str] | None = None,
    editing: str = "",
    error: str = "",
    status: int = 200,
) -> Response:
    who = identity(request, me)
    refs = _raspberry(h)
    blocks = await asyncio.gather(
        *(_list_block(h, r, who, "/api/admin/environments", "environments") for r in refs)
    )
    return render(
        request,
        "admin_environments.html",
        {
            "page": "admin_environments",
            "blocks": blocks,
            "form_agent": form_agent,
            "form": form or {"ssh_user": "root", "size": "0", "sector_start": "0", "state": "available"},
            "editing": editing,
            "error": error,
        },
        status=status,
    )


@router.get("/environments")
async def environments_page(
    request: Request, me: User = Depends(admin_user), h: AgentHub = Depends(hub)
) -> Response:
    """The environments; `?agent=<id>&edit=<name>` fills the form with one of them."""
    agent_text = request.query_params.get("agent", "")
    edit = request.query_params.get("edit", "")[:128]
    if agent_text.isdigit() and ITEM_NAME_RE.match(edit):
        ref = _find(h, int(agent_text))
        if ref is not None:
            reply = await h.call(
                ref, "GET", f"/api/admin/environments/{_path(edit)}", who=identity(request, me)
            )
            if reply.ok and isinstance(reply.data, dict):
                form = {k: "" if reply.data.get(k) is None else str(reply.data.get(k)) for k in ENV_FORM_KEYS}
                form["web"] = "on" if reply.data.get("web") else ""
                return await _envs_page(request, me, h, form_agent=ref.id, form=form, editing=edit)
            flash(request, f"Environment {edit}: {reply.words}", "error")
    return await _envs_page(request, me, h)


def env_body(form: dict[str, str]) -> dict[str, Any]:
    name = form.get("name", "").strip()
    if not ITEM_NAME_RE.match(name):
        raise FormError("name: 1 to 128 letters, digits, '.', '_' or '-'")
    image = form.get("image", "").strip()
    if not image:
        raise FormError("image: the file name of the image in the agent's env_path")
    body: dict[str, Any] = {
        "name": name,
        "image": image,
        "size": _int_field(form, "size", "size", 0, 2**53, 0),
        "sector_start": _int_field(form, "sector_start", "sector start", 0, 2**53, 0),
        "ssh_user": form.get("ssh_user", "").strip() or "root",
        "checksum": form.get("checksum", "").strip(),
        "description": form.get("description", "").strip(),
        "web": form.get("web", "") in ("on", "true", "1"),
        "state": form.get("state", "available")
        if form.get("state") in ("available", "disabled")
        else "available",
        "owner": form.get("owner", "").strip(),
    }
    return body


ENV_SLOW_HINT = "it may still be computing the image's sha256 (give the checksum to skip that)"


@router.post("/environments/{agent_id}")
async def save_environment(
    agent_id: int, request: Request, me: User = Depends(admin_user), h: AgentHub = Depends(hub)
) -> Response:
    """Add an environment, or update it when the form says which one it edits."""
    raw = await request.form()
    form = _form_dict(raw, ENV_FORM_KEYS)
    form["web"] = form_str(raw, "web", 10)
    editing = form_str(raw, "editing", 128)
    ref = _find_raspberry(h, agent_id)
    if ref is None:
        return _back(request, ENVS_PAGE, "No such raspberry agent.")
    form_again = partial(
        _envs_page, request, me, h, form_agent=agent_id, form=form, editing=editing, status=400
    )
    try:
        body = env_body(form)
        if editing and editing != body["name"]:
            raise FormError(f"name: an environment cannot be renamed ({editing}); add a new one instead")
    except FormError as exc:
        return await form_again(error=str(exc))
    if editing:
        method, path, verb = "PUT", f"/api/admin/environments/{_path(editing)}", "updated"
    else:
        method, path, verb = "POST", "/api/admin/environments", "added"
    _reply, problem = await _change(
        h, ref, identity(request, me), method, path, body, slow_hint=ENV_SLOW_HINT
    )
    if problem:
        return await form_again(error=f"Environment not {verb}: {problem}")
    return _back(request, ENVS_PAGE, f"Environment {body['name']} {verb} on {ref.name}.", "ok")


@router.post("/environments/{agent_id}/delete/{name}")
async def delete_environment(
    agent_id: int, name: str, request: Request, me: User = Depends(admin_user), h: AgentHub = Depends(hub)
) -> Response:
    return await _delete_item(
        request, me, h, agent_id, name, "environment", "environments", ENVS_PAGE,
        lambda ref, _reply: f"Environment {name} deleted from {ref.name} (the image file stays in env_path).",
    )


@router.post("/environments/{agent_id}/scan")
async def scan_environments(
    agent_id: int, request: Request, me: User = Depends(admin_user), h: AgentHub = Depends(hub)
) -> Response:
    ref = _find_raspberry(h, agent_id)
    if ref is None:
        return _back(request, ENVS_PAGE, "No such raspberry agent.")
    reply, problem = await _change(
        h, ref, identity(request, me), "POST", "/api/admin/environments/scan", slow_hint=ENV_SLOW_HINT
    )
    if problem:
        return _back(request, ENVS_PAGE, f"Scan of {ref.name} failed: {problem}")
    data = reply.data if isinstance(reply.data, dict) else {}
    added = [str(x) for x in data.get("added", [])]
    updated = [str(x) for x in data.get("updated", [])]
    skipped = data.get("skipped", {}) if isinstance(data.get("skipped"), dict) else {}
    parts = [
        f"{len(added)} added" + (f" ({', '.join(added)})" if added else ""),
        f"{len(updated)} updated" + (f" ({', '.join(updated)})" if updated else ""),
    ]
    flash(request, f"Scan of {ref.name}'s env_path: " + ", ".join(parts) + ".", "ok")
    for sidecar, why in list(skipped.items())[:8]:
        flash(request, f"Skipped {sidecar}: {why}", "error")
    return redirect(request, ENVS_PAGE)
