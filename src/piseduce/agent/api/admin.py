"""Admin routes of every agent: nodes (registered by hand on agents without a remote inventory)
and the open actions. Drivers add their own under the same prefix (`Driver.admin_router`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from sqlalchemy import func, select

from piseduce.agent.actions import add_event
from piseduce.agent.api.deps import AgentState, StateDep, db
from piseduce.agent.api.views import public_attrs
from piseduce.agent.auth import AdminDep, Caller, admin
from piseduce.agent.models import ACTION_OPEN, ACTIVE_STATUSES, Action, Node, Reservation, Switch
from piseduce.agent.schemas import ActionOut, AdminNodeOut, NodeIn, NodeStatusIn
from piseduce.db import write_session

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(admin)])

NodeName = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@:+-]*$")]


def node_out(n: Node) -> AdminNodeOut:
    return AdminNodeOut(
        name=n.name,
        ip=n.ip,
        status=n.status,
        present=n.present,
        properties=dict(n.properties or {}),
        attrs=public_attrs(n.attrs),
    )


def _list(state: AgentState) -> list[AdminNodeOut]:
    with state.sessions() as s:
        return [node_out(n) for n in s.scalars(select(Node).order_by(Node.name))]


@router.get("/nodes", response_model=list[AdminNodeOut])
async def list_nodes(state: StateDep) -> list[AdminNodeOut]:
    """Every node, absent ones included."""
    return await db(_list, state)


def _add(state: AgentState, caller: Caller, body: NodeIn) -> AdminNodeOut:
    with write_session(state.sessions) as s:
        if body.switch is not None and s.get(Switch, body.switch) is None:
            raise HTTPException(422, f"switch: unknown switch {body.switch!r}; add the switch first")
        node = s.get(Node, body.name)
        if node is not None and node.present:
            raise HTTPException(409, f"node {body.name} already exists")
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


@router.post("/nodes", status_code=201, response_model=AdminNodeOut)
async def add_node(body: NodeIn, state: StateDep, caller: AdminDep) -> AdminNodeOut:
    """Register a node (raspberry agents); agents with a remote inventory sync theirs (409)."""
    if state.driver.remote_inventory:
        raise HTTPException(
            409, f"{state.config.node_type} nodes come from the testbed's inventory; they cannot be added"
        )
    return await db(_add, state, caller, body)


def _status(state: AgentState, caller: Caller, name: str, status: str) -> AdminNodeOut:
    with write_session(state.sessions) as s:
        node = s.get(Node, name)
        if node is None or not node.present:
            raise HTTPException(404, f"node {name} not found")
        if node.status != status:
            old, node.status = node.status, status
            add_event(s, None, f"node {name}: {old} → {status} by {caller.user}")
        s.flush()
        return node_out(node)


@router.patch("/nodes/{name}", response_model=AdminNodeOut)
async def patch_node(name: NodeName, body: NodeStatusIn, state: StateDep, caller: AdminDep) -> AdminNodeOut:
    """Set a node available, in maintenance or broken (only `available` nodes are bookable)."""
    return await db(_status, state, caller, name, body.status)


@router.post("/nodes/{name}/status", response_model=AdminNodeOut)
async def post_node_status(
    name: NodeName, body: NodeStatusIn, state: StateDep, caller: AdminDep
) -> AdminNodeOut:
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


@router.delete("/nodes/{name}")
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
