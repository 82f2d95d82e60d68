"""The admin page of every agent's nodes: the nodes with who holds them now, and, on the agents
that keep a node registry, Add Node, a node's status and its deletion (forwarded to the agent's
admin API; its refusal shown in words). On the agents whose nodes sit on PoE ports, Detect: the
agent's node detection, its ports' progress polled by the page (htmx, as the Manage page)."""

from __future__ import annotations

import asyncio
import re
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from piseduce.numbers import StrictInt, parse_int
from piseduce.protocol import NODE_STATUSES, Deleted, Feature
from piseduce.webui import audit
from piseduce.webui.agent_client import AgentClient, Result, agents
from piseduce.webui.agents import AgentRef, Identity
from piseduce.webui.models import User
from piseduce.webui.oversight import node_usage
from piseduce.webui.routes.infra_calls import (
    AgentBlock,
    back_to,
    change,
    delete_item,
    find_agent,
)
from piseduce.webui.routes.infra_forms import (
    NODE_NAME_RE,
    FormError,
    form_dict,
    int_field,
    parse_properties,
)
from piseduce.webui.web import admin_user, form_str, identity, render

# ASCII digits and spaces only (\d and \s would let "١-٤" or "2\n" through to int(): numbers.py).
PORTS_RE = re.compile(r" *[0-9]{1,6}( *- *[0-9]{1,6})?( *, *[0-9]{1,6}( *- *[0-9]{1,6})?)* *", re.ASCII)
MAX_PORTS = 256  # what one detection takes (the agent's limit)
JOB_RE = re.compile(r"^[0-9a-f]{12}$")

router = APIRouter(prefix="/admin")
NODES_PAGE = "/admin/nodes"


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


async def _node_block(h: AgentClient, ref: AgentRef, who: Identity) -> AgentBlock:
    block = AgentBlock(ref)

    async def switches() -> list[str]:
        if not block.power:
            return []
        reply = await h.switches(ref, who)
        return [s.name for s in reply.value or []]

    async def detections() -> list[Any]:
        if not block.power:
            return []
        reply = await h.detections(ref, who)
        return list(reply.value or [])

    nodes, block.switches, block.usage, block.detections = await asyncio.gather(
        h.admin_nodes(ref, who), switches(), node_usage(h, ref, who), detections()
    )
    if nodes.value is None:
        block.error = nodes.error
        return block
    block.items = nodes.value
    return block


async def _nodes_page(
    request: Request,
    me: User,
    h: AgentClient,
    *,
    form_agent: int = 0,
    form: dict[str, str] | None = None,
    error: str = "",
    status: int = 200,
) -> Response:
    who = identity(request, me)
    blocks = await asyncio.gather(*(_node_block(h, r, who) for r in await h.refs()))
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
    request: Request, me: User = Depends(admin_user), h: AgentClient = Depends(agents)
) -> Response:
    return await _nodes_page(request, me, h)


def node_body(form: dict[str, str]) -> dict[str, Any]:
    """The agent's NodeIn from the Add Node form (only the checks the web UI can word better)."""
    name = form.get("name", "").strip()
    if not NODE_NAME_RE.match(name):
        raise FormError("name: 1 to 128 letters, digits or . _ @ : + - (starting with a letter or digit)")
    body: dict[str, Any] = {"name": name, "ip": form.get("ip", "").strip()}
    switch = form.get("switch", "").strip()
    port = int_field(form, "port", "PoE port", 0, 4096, None)
    if switch:
        body["switch"] = switch
        if port is None:
            raise FormError("PoE port: the switch port of the node is needed with a switch")
    if port is not None:
        body["port"] = port
    body["ssh_port"] = int_field(form, "ssh_port", "SSH port", 1, 65535, 22)
    for key in ("model", "serial", "mac", "host_key"):
        value = form.get(key, "").strip()
        if value:
            body[key] = value
    body["properties"] = parse_properties(form.get("properties", ""))
    return body


@router.post("/nodes/{agent_id}")
async def add_node(
    agent_id: StrictInt, request: Request, me: User = Depends(admin_user), h: AgentClient = Depends(agents)
) -> Response:
    form = form_dict(await request.form(), NODE_FORM_KEYS)
    ref = await find_agent(h, agent_id)
    if ref is None:
        return back_to(request, NODES_PAGE, "No such agent.")
    if not ref.supports(Feature.NODE_REGISTRY):
        return back_to(
            request, NODES_PAGE, f"{ref.name}: {ref.node_type} nodes come from the testbed's inventory."
        )
    form_again = partial(_nodes_page, request, me, h, form_agent=agent_id, form=form, status=400)
    try:
        body = node_body(form)
    except FormError as exc:
        return await form_again(error=str(exc))
    _reply, problem = await change(h, ref, h.add_node(ref, identity(request, me), body))
    if problem:
        return await form_again(error=f"Node not added: {problem}")
    await audit.note(request, me, "node.add", ("node", f"{ref.name}/{body['name']}"))
    return back_to(request, NODES_PAGE, f"Node {body['name']} added to {ref.name}.", "ok")


@router.post("/nodes/{agent_id}/status/{name}")
async def node_status(
    agent_id: StrictInt,
    name: str,
    request: Request,
    me: User = Depends(admin_user),
    h: AgentClient = Depends(agents),
) -> Response:
    status = form_str(await request.form(), "status", 20)
    ref = await find_agent(h, agent_id)
    if ref is None or not NODE_NAME_RE.match(name) or status not in NODE_STATUSES:
        return back_to(request, NODES_PAGE, "No such agent, node or status.")
    _reply, problem = await change(h, ref, h.node_status(ref, identity(request, me), name, status))
    if problem:
        return back_to(request, NODES_PAGE, f"Status of {name} not changed: {problem}")
    await audit.note(request, me, "node.status", ("node", f"{ref.name}/{name}"), {"status": status})
    return back_to(request, NODES_PAGE, f"{name} ({ref.name}) is now {status}.", "ok")


@router.post("/nodes/{agent_id}/delete/{name}")
async def delete_node(
    agent_id: StrictInt,
    name: str,
    request: Request,
    me: User = Depends(admin_user),
    h: AgentClient = Depends(agents),
) -> Response:
    def done(ref: AgentRef, reply: Result[Deleted]) -> str:
        # A node with past reservations is only removed (kept for their history): the agent says which.
        return f"Node {name} {reply.value.result if reply.value else 'deleted'}."

    return await delete_item(request, me, h, agent_id, name, "node", "nodes", NODES_PAGE, done, NODE_NAME_RE)


def parse_ports(text: str, port_count: int | None = None, switch: str = "") -> list[int]:
    """ "1-4, 6" → [1, 2, 3, 4, 6], within the switch's ports when its `port_count` is known (the
    agent checks them again, uplink included)."""
    if not PORTS_RE.fullmatch(text):
        raise FormError("ports: numbers and ranges separated by commas, e.g. 1-4, 6")
    top = port_count if port_count else MAX_PORTS
    where = f"switch {switch} has ports 1 to {top}" if port_count else \
        f"a switch's ports are numbered 1 to {MAX_PORTS} at most"
    ports: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        a = parse_int(low, hand_typed=True)
        b = parse_int(high, hand_typed=True) if high else a
        if b < a:
            raise FormError(f"ports: a range goes up ({a}-{b} → {b}-{a})")
        if a < 1 or b > top:
            raise FormError(f"ports: {where}; {part.strip()} is not within them")
        ports.extend(range(a, b + 1))
    return ports


@router.post("/nodes/{agent_id}/detect")
async def detect_nodes(
    agent_id: StrictInt, request: Request, me: User = Depends(admin_user), h: AgentClient = Depends(agents)
) -> Response:
    form = form_dict(await request.form(), ("switch", "ports", "pattern"))
    ref = await find_agent(h, agent_id, Feature.POWER)
    if ref is None:
        return back_to(request, NODES_PAGE, "No such agent with PoE switches.")
    switch = form.get("switch", "").strip()
    known = await h.switches(ref, identity(request, me))
    count = next((sw.port_count for sw in known.value or [] if sw.name == switch), None)
    try:
        body = {"switch": switch, "ports": parse_ports(form.get("ports", ""), count, switch),
                "pattern": form.get("pattern", "").strip() or "pi-{port}"}
    except FormError as exc:
        return back_to(request, NODES_PAGE, f"Detection not started: {exc}")
    reply, problem = await change(h, ref, h.detect(ref, identity(request, me), body))
    if problem or reply.value is None:
        return back_to(request, NODES_PAGE, f"Detection not started: {problem}")
    ports = form.get("ports", "").strip()
    await audit.note(request, me, "node.detect", ("switch", f"{ref.name}/{body['switch']}"), {"ports": ports})
    return back_to(request, NODES_PAGE, f"Detecting ports {ports} of {body['switch']} on {ref.name}.", "ok")


@router.get("/nodes/{agent_id}/detect/{job_id}")
async def detection_progress(
    agent_id: StrictInt, job_id: str, request: Request, me: User = Depends(admin_user),
    h: AgentClient = Depends(agents),
) -> Response:
    """One detection's ports, for the page's poller (it stops once the job is done)."""
    ref = await find_agent(h, agent_id, Feature.POWER)
    if ref is None or not JOB_RE.match(job_id):
        return render(request, "_detection.html", {"detect_error": "No such agent or detection."}, status=404)
    reply = await h.detection(ref, identity(request, me), job_id)
    if reply.value is None:
        return render(request, "_detection.html", {"detect_error": reply.error or "no answer"}, status=200)
    return render(request, "_detection.html", {"job": reply.value, "agent_id": agent_id})
