"""Rows to API models and driver views, with what each caller may see."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from piseduce.agent.actions import open_action
from piseduce.agent.api.deps import AgentState
from piseduce.agent.auth import Caller
from piseduce.agent.drivers.base import NodeView, ReservationView
from piseduce.agent.models import (
    ACTION_OPEN,
    CONFIGURING,
    DEPLOYED,
    DEPLOYING,
    FAILED,
    SCHEDULED,
    Action,
    Event,
    Node,
    Reservation,
)
from piseduce.agent.schemas import EventOut, ReservationOut

MAX_EVENTS = 200
SECRET_WORDS = ("password", "secret", "token", "credential", "private", "community")


def is_secret(key: str) -> bool:
    k = key.lower()
    return any(w in k for w in SECRET_WORDS)


def public_attrs(attrs: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (attrs or {}).items() if not is_secret(k)}


def node_view(n: Node) -> NodeView:
    return NodeView(
        name=n.name, ip=n.ip, status=n.status, properties=dict(n.properties or {}), attrs=dict(n.attrs or {})
    )


def reservation_view(r: Reservation) -> ReservationView:
    return ReservationView(
        id=r.id,
        node=node_view(r.node),
        owner=r.owner,
        bin=r.bin,
        start=r.start,
        end=r.end,
        status=r.status,
        params=dict(r.params or {}),
        driver_state=dict(r.driver_state or {}),
        connection=dict(r.connection or {}),
    )


def available_actions(r: Reservation, current: Action | None, state: AgentState) -> list[str]:
    """What the caller may ask now (the manage page shows these buttons)."""
    procs = state.processes()
    busy = current is not None and current.status in ACTION_OPEN
    out: list[str] = []
    if r.status == CONFIGURING:
        out.append("deploy")
    if r.status in (CONFIGURING, SCHEDULED, DEPLOYING, DEPLOYED, FAILED):
        out.append("destroy")
        out.append("extend")
    if not busy and r.status in (DEPLOYED, FAILED):
        for name in ("reboot", "redeploy"):
            if name in procs and (name != "redeploy" or r.params):
                out.append(name)
        if r.status == DEPLOYED and "bootfiles" in procs:
            out.append("bootfiles")
    return out


def connection(r: Reservation, state: AgentState) -> dict[str, Any]:
    if not r.connection and r.status != DEPLOYED:
        return {}
    try:
        return dict(state.driver.connection_info(reservation_view(r)))
    except Exception:
        # A driver bug must not hide the reservation; what the engine stored is still right.
        return dict(r.connection or {})


def visible_params(r: Reservation, caller: Caller) -> dict[str, Any]:
    params = dict(r.params or {})
    if caller.user != r.owner:
        # Admins see other users' reservations, never their passwords.
        params = {k: v for k, v in params.items() if not is_secret(k)}
    return params


def reservation_out(
    r: Reservation,
    caller: Caller,
    state: AgentState,
    current: Action | None = None,
    events: Iterable[Event] = (),
) -> ReservationOut:
    out = ReservationOut(
        id=r.id,
        node=r.node_name,
        owner=r.owner,
        bin=r.bin,
        start=r.start,
        end=r.end,
        status=r.status,
        error=r.error,
        events=[EventOut(time=e.time, level=e.level, step=e.step, message=e.message) for e in events],
        connection=connection(r, state),
        params=visible_params(r, caller),
        node_properties=dict(r.node.properties or {}) if r.node is not None else {},
        actions=available_actions(r, current, state),
    )
    if current is not None:
        out.process = current.process
        out.step = current.step_name
        out.progress = current.progress
        out.error = current.error or r.error
        proc = state.processes().get(current.process)
        if proc is not None:
            out.step_count = len(proc.steps)
            out.step_index = current.step_index
            if 0 <= current.step_index < len(proc.steps):
                step = proc.steps[current.step_index]
                out.step_label = step.title
                out.step = out.step or step.name
    return out


def open_actions(session: Session, ids: list[int]) -> dict[int, Action]:
    """The open action of each reservation, in one query."""
    if not ids:
        return {}
    rows = session.scalars(
        select(Action)
        .where(Action.reservation_id.in_(ids), Action.status.in_(ACTION_OPEN))
        .order_by(Action.id)
    )
    out: dict[int, Action] = {}
    for a in rows:
        if a.reservation_id is not None:
            out[a.reservation_id] = a  # the newest wins
    return out


def last_events(session: Session, reservation_id: int, limit: int = MAX_EVENTS) -> list[Event]:
    rows = list(
        session.scalars(
            select(Event).where(Event.reservation_id == reservation_id).order_by(Event.id.desc()).limit(limit)
        )
    )
    rows.reverse()
    return rows


def current_action(session: Session, r: Reservation) -> Action | None:
    return open_action(session, r.id)
