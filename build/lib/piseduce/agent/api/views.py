"""Rows to API models and driver views, with what each caller may see."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from piseduce.agent import energy, lifecycle, sealed
from piseduce.agent.actions import open_action
from piseduce.agent.api.deps import AgentState
from piseduce.agent.auth import Caller
from piseduce.agent.lifecycle import DEPLOYED, Trigger
from piseduce.agent.models import ACTION_OPEN, Action, Event, Reservation
from piseduce.agent.sealed import is_secret
from piseduce.agent.snapshots import reservation_view
from piseduce.protocol import EnergyOut, EventOut, Feature, ReservationOut

log = logging.getLogger(__name__)

MAX_EVENTS = 200


def public_attrs(attrs: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (attrs or {}).items() if not is_secret(k)}


# What the manage page offers, in its order (saving an environment has a page of its own).
OFFERED = (
    Trigger.DEPLOY, Trigger.DESTROY, Trigger.EXTEND, Trigger.REBOOT, Trigger.REDEPLOY, Trigger.BOOTFILES
)


def available_actions(r: Reservation, current: Action | None, state: AgentState) -> list[str]:
    """What the caller may ask now (the manage page shows these buttons): what the lifecycle
    allows in this status, for the processes this driver has, and what an open action permits."""
    procs = state.processes()
    features = state.features()
    busy = current is not None and current.status in ACTION_OPEN
    out: list[str] = []
    for trigger in OFFERED:
        if not lifecycle.allows(r.status, trigger):
            continue
        if trigger == Trigger.EXTEND and Feature.EXTEND not in features:
            continue
        process = lifecycle.QUEUES.get(trigger)
        if trigger == Trigger.DESTROY:
            # A destroy supersedes any action but a destroy (the API refuses a second one).
            if current is not None and busy and current.process == "destroy":
                continue
        elif process is not None and (busy or process not in procs):
            continue
        if trigger == Trigger.REDEPLOY and not r.params:
            continue
        out.append(trigger.value)
    return out


def connection(r: Reservation, state: AgentState) -> dict[str, Any]:
    if not r.connection and r.status != DEPLOYED:
        return {}
    try:
        return dict(state.driver.connection_info(reservation_view(r)))
    except Exception:
        # A driver bug must not hide the reservation; what the engine stored is still right.
        return dict(r.connection or {})


def visible_params(r: Reservation, caller: Caller, state: AgentState) -> dict[str, Any]:
    """The deploy form's values; its secrets (the OS password) only for the owner, who may need
    it again on Manage, and only while the reservation lasts (they are erased when it ends)."""
    if caller.user != r.owner:
        # Admins see other users' reservations, never their passwords.
        return sealed.public(r.params)
    try:
        return sealed.unseal(state.fernet, r.params)
    except sealed.SealError as exc:
        log.warning("reservation %s: %s", r.id, exc)
        return sealed.public(r.params)


def reservation_out(
    r: Reservation,
    caller: Caller,
    state: AgentState,
    current: Action | None = None,
    events: Iterable[Event] = (),
    used: energy.Energy | None = None,
) -> ReservationOut:
    """`used`: the energy measured now (one reservation's GET); else what its end stored."""
    used = used if used is not None else energy.stored(r)
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
        params=visible_params(r, caller, state),
        node_properties=dict(r.node.properties or {}) if r.node is not None else {},
        actions=available_actions(r, current, state),
        energy=EnergyOut(**used.as_dict()) if used is not None else None,
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
