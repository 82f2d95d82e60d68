"""Admin routes of every agent: nodes (registered by hand on agents without a remote inventory)
and the open actions. Drivers add their own under the same prefix (`Driver.admin_router`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from piseduce.agent.actions import add_event
from piseduce.agent.api.deps import AgentState, StateDep, db
from piseduce.agent.api.views import public_attrs
from piseduce.agent.auth import AdminDep, Caller, admin
from piseduce.agent.lifecycle import ACTIVE_STATUSES
from piseduce.agent.models import ACTION_OPEN, Action, Node, Reservation, Switch
from piseduce.agent.schemas import NodeIn, NodePatchIn, NodeStatusIn
from piseduce.db import write_session
from piseduce.protocol import ActionOut, AdminNode, Deleted
from piseduce.protocol_events import EventKind

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(admin)])

NodeName = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@:+-]*$")]


def node_out(n: Node) -> AdminNode:
    return AdminNode(
        name=n.name,
        ip=n.ip,
        status=n.status,
        present=n.present,
        properties=dict(n.properties or {}),
        attrs=public_attrs(n.attrs),
    )


def _list(state: AgentState) -> list[AdminNode]:
    with state.sessions() as s:
        return [node_out(n) for n in s.scalars(select(Node).order_by(Node.name))]


@router.get("/nodes", response_model=list[AdminNode])
async def list_nodes(state: StateDep) -> list[AdminNode]:
    """Every node, absent ones included."""
    return await db(_list, state)


def _check_port(s: Session, body: NodeIn) -> None:
    """A node's PoE port must exist on its switch, not be the uplink, and be nobody else's:
    two nodes on one port would power each other off."""
    if body.switch is None:
        return
    sw = s.get(Switch, body.switch)
    if sw is None:
        raise HTTPException(422, f"switch: unknown switch {body.switch!r}; add the switch first")
    if body.port is None:
        return
    if not 1 <= body.port <= sw.port_count:
        raise HTTPException(422, f"port: switch {sw.name} has ports 1 to {sw.port_count}; "
                                 f"{body.port} is not one of them")
    if sw.master_port and body.port == sw.master_port:
        raise HTTPException(409, f"port {body.port} of switch {sw.name} is its master (uplink) port, the "
                                 "pimaster's link: it never powers a node; choose another port")
    used: dict[int, str] = {}  # every other present node's port (a change keeps its own)
    for other in s.scalars(select(Node).where(Node.present.is_(True), Node.name != body.name)):
        attrs = other.attrs or {}
        port = str(attrs.get("port", ""))
        if attrs.get("switch") == sw.name and port.isascii() and port.isdigit():
            used[int(port)] = other.name
    if body.port in used:
        free = [p for p in range(1, sw.port_count + 1) if p not in used and p != sw.master_port]
        hint = f"free ports: {', '.join(map(str, free))}" if free else "the switch has no free port"
        raise HTTPException(409, f"port {body.port} of switch {sw.name} already powers {used[body.port]}; "
                                 f"{hint}")


def _check_serial(s: Session, body: NodeIn) -> None:
    """A serial names its board's TFTP folder: two nodes with one serial would boot each other's."""
    if not body.serial:
        return
    for other in s.scalars(select(Node).where(Node.present.is_(True), Node.name != body.name)):
        if (other.attrs or {}).get("serial") == body.serial:
            raise HTTPException(409, f"serial {body.serial} is {other.name}'s already: each board has its "
                                     "own (it names the board's TFTP folder)")


def _add(state: AgentState, caller: Caller, body: NodeIn) -> AdminNode:
    with write_session(state.sessions) as s:
        node = s.get(Node, body.name)
        # The name first: a node that exists already is the mistake, whatever its port says.
        if node is not None and node.present:
            raise HTTPException(409, f"node {body.name} already exists")
        _check_port(s, body)
        _check_serial(s, body)
        props: dict[str, Any] = dict(body.properties)
        if body.model:
            props["model"] = body.model
        attrs: dict[str, Any] = {"ssh_port": body.ssh_port}
        for key in ("switch", "port", "serial", "mac", "host_key"):
            value = getattr(body, key)
            if value not in (None, ""):
                attrs[key] = value
        if node is None:
            node = Node(name=body.name)
            s.add(node)
        # A node removed earlier (kept for its history) comes back with the new description.
        node.ip, node.status, node.properties, node.attrs, node.present = (
            body.ip,
            body.status,
            props,
            attrs,
            True,
        )
        s.flush()
        return node_out(node)


@router.post("/nodes", status_code=201, response_model=AdminNode)
async def add_node(body: NodeIn, state: StateDep, caller: AdminDep) -> AdminNode:
    """Register a node (raspberry agents); agents with a remote inventory sync theirs (409)."""
    if state.driver.inventory is not None:
        raise HTTPException(
            409, f"{state.config.node_type} nodes come from the testbed's inventory; they cannot be added"
        )
    return await db(_add, state, caller, body)


def _status(state: AgentState, caller: Caller, name: str, status: str) -> AdminNode:
    with write_session(state.sessions) as s:
        node = s.get(Node, name)
        if node is None or not node.present:
            raise HTTPException(404, f"node {name} not found")
        if node.status != status:
            old, node.status = node.status, status
            broken = EventKind.NODE_BROKEN if status == "broken" else None
            add_event(s, None, f"node {name}: {old} → {status} by {caller.user}", node=name,
                      actor=caller.user, kind=broken)
        s.flush()
        return node_out(node)


# What a node's description is made of (NodeIn without its name and status); the driver's own
# attributes (a deployed system's host key...) are kept by a change.
DESCRIPTION = ("ip", "switch", "port", "ssh_port", "model", "serial", "mac", "host_key", "properties")
ATTR_FIELDS = ("switch", "port", "serial", "mac", "host_key")


def _described(node: Node) -> dict[str, Any]:
    attrs, props = node.attrs or {}, dict(node.properties or {})
    out: dict[str, Any] = {"name": node.name, "ip": node.ip, "model": props.pop("model", ""),
                           "properties": props, "ssh_port": attrs.get("ssh_port", 22)}
    out.update({k: attrs[k] for k in ATTR_FIELDS if attrs.get(k) not in (None, "")})
    port = out.get("port")
    if not isinstance(port, int) or isinstance(port, bool):
        # Stored by hand or by an older version as text: a number when it reads as one.
        text = str(port or "")
        out["port"] = int(text) if text.isascii() and text.isdigit() else None
    return out


def _patch(state: AgentState, caller: Caller, name: str, body: NodePatchIn) -> AdminNode:
    with write_session(state.sessions) as s:
        node = s.get(Node, name)
        if node is None or not node.present:
            raise HTTPException(404, f"node {name} not found")
        old = _described(node)
        given = {k: getattr(body, k) for k in DESCRIPTION
                 if k in body.model_fields_set and getattr(body, k) is not None}
        changed = [k for k, v in given.items() if old.get(k) != v]
        if changed:
            new = {**old, **given}
            described = NodeIn.model_construct(**new)
            _check_port(s, described)
            _check_serial(s, described)
            props = dict(new["properties"])
            if new["model"]:
                props["model"] = new["model"]
            attrs = {**(node.attrs or {}), "ssh_port": new["ssh_port"]}
            for key in ATTR_FIELDS:
                if new.get(key) in (None, ""):
                    attrs.pop(key, None)
                else:
                    attrs[key] = new[key]
            node.ip, node.properties, node.attrs = new["ip"], props, attrs
            add_event(s, None, f"node {name}: {', '.join(changed)} changed by {caller.user}")
        if body.status is not None and node.status != body.status:
            previous, node.status = node.status, body.status
            add_event(s, None, f"node {name}: {previous} → {body.status} by {caller.user}", node=name)
        s.flush()
        return node_out(node)


@router.patch("/nodes/{name}", response_model=AdminNode)
async def patch_node(name: NodeName, body: NodePatchIn, state: StateDep, caller: AdminDep) -> AdminNode:
    """Change a node: its status (available, maintenance or broken; only `available` nodes are
    bookable) and any part of its description (ip, switch, port, ssh_port, model, serial, mac,
    host_key, properties), checked as when it was added. Omitted or null fields stay as they are;
    sending the same description again changes nothing."""
    return await db(_patch, state, caller, name, body)


@router.post("/nodes/{name}/status", response_model=AdminNode)
async def post_node_status(
    name: NodeName, body: NodeStatusIn, state: StateDep, caller: AdminDep
) -> AdminNode:
    """Same as PATCH /api/admin/nodes/{name} (for clients that only POST)."""
    return await db(_status, state, caller, name, body.status)


def _delete(state: AgentState, caller: Caller, name: str) -> dict[str, str]:
    with write_session(state.sessions) as s:
        node = s.get(Node, name)
        if node is None or not node.present:
            raise HTTPException(404, f"node {name} not found")
        active = s.scalar(
            select(func.count())
            .select_from(Reservation)
            .where(Reservation.node_name == name, Reservation.status.in_(ACTIVE_STATUSES))
        )
        if active:
            raise HTTPException(409, f"node {name} has {active} active reservation(s); destroy them first")
        history = s.scalar(select(Reservation.id).where(Reservation.node_name == name).limit(1))
        if history is None:
            s.delete(node)
            result = "deleted"
        else:
            # Past reservations keep their node: hide it instead of losing their history.
            node.present = False
            result = "removed (kept for the history of its past reservations)"
        add_event(s, None, f"node {name} {result} by {caller.user}")
        return {"name": name, "result": result}


@router.delete("/nodes/{name}", response_model=Deleted)
async def delete_node(name: NodeName, state: StateDep, caller: AdminDep) -> dict[str, str]:
    """Remove a node; refused while it has an active reservation."""
    return await db(_delete, state, caller, name)


def _actions(session_state: AgentState) -> list[ActionOut]:
    with session_state.sessions() as s:
        rows = s.execute(
            select(Action, Reservation.node_name, Reservation.owner)
            .outerjoin(Reservation, Reservation.id == Action.reservation_id)
            .where(Action.status.in_(ACTION_OPEN))
            .order_by(Action.id)
        ).all()
        return [
            ActionOut(
                id=a.id,
                reservation_id=a.reservation_id,
                node=node or "",
                owner=owner or "",
                process=a.process,
                status=a.status,
                step=a.step_name,
                progress=a.progress,
                error=a.error,
                locked_by=a.locked_by,
                created_at=a.created_at,
            )
            for a, node, owner in rows
        ]


@router.get("/actions", response_model=list[ActionOut])
async def open_actions(state: StateDep) -> list[ActionOut]:
    """Actions waiting for or being run by an executor."""
    return await db(_actions, state)
