"""Reservations: booking, listing, the deploy form, deploy, and the actions on a reservation.

A user sees and acts only on their own reservations (404 for the others'); admins on all. Every
state change is one transaction; the driver's hooks (which may call a remote testbed) run outside
the transaction, and what they refuse is rolled back by a second one.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from piseduce.agent import env_factory, scheduling
from piseduce.agent.actions import add_event, start_action
from piseduce.agent.api.deps import AgentState, StateDep, booking_http, db, driver_errors, driver_http
from piseduce.agent.api.nodes import refresh_inventory
from piseduce.agent.api.views import (
    current_action,
    last_events,
    open_actions,
    reservation_out,
    reservation_view,
)
from piseduce.agent.auth import Caller, CallerDep
from piseduce.agent.drivers.base import ActionRefused, FormField, ReservationView
from piseduce.agent.models import (
    ACTIVE_STATUSES,
    CANCELLED,
    CONFIGURING,
    DEPLOYED,
    DEPLOYING,
    DESTROYING,
    FAILED,
    FINAL_STATUSES,
    SCHEDULED,
    Action,
    Reservation,
    utcnow,
)
from piseduce.agent.schemas import (
    AcceptedOut,
    BookingOut,
    DeployRequest,
    ExtendRequest,
    RegisterEnvRequest,
    ReservationOut,
    ReservationRequest,
)
from piseduce.db import write_session

router = APIRouter(prefix="/api/reservations", tags=["reservations"])

ReservationId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The reservation's id")]
StatusQuery = Literal[
    "configuring",
    "scheduled",
    "deploying",
    "deployed",
    "failed",
    "destroying",
    "ended",
    "cancelled",
    "active",
]


def _get(s: Session, caller: Caller, rid: int) -> Reservation:
    r = s.get(Reservation, rid)
    if r is None or not caller.may_see(r.owner):
        raise HTTPException(404, f"reservation {rid} not found")
    return r


def _load(state: AgentState, caller: Caller, rid: int) -> tuple[ReservationView, str, bool]:
    """The driver's view of a reservation, its status and whether it ever had an action."""
    with state.sessions() as s:
        r = _get(s, caller, rid)
        had = s.scalar(select(Action.id).where(Action.reservation_id == rid).limit(1)) is not None
        return reservation_view(r), r.status, had


def _out(state: AgentState, caller: Caller, rid: int, events: bool = False) -> ReservationOut:
    with state.sessions() as s:
        r = _get(s, caller, rid)
        return reservation_out(r, caller, state, current_action(s, r), last_events(s, r.id) if events else ())


# ---------------------------------------------------------------- booking


def _book(
    state: AgentState, caller: Caller, req: ReservationRequest, start: dt.datetime, remote: list[Any]
) -> tuple[list[ReservationView], list[ReservationOut]]:
    try:
        with write_session(state.sessions) as s:
            rs = scheduling.book(
                s,
                owner=caller.user,
                filters=req.filters,
                start=start,
                duration=dt.timedelta(hours=req.duration_hours),
                limits=state.limits,
                bin=req.bin,
                credentials=caller.credentials_token,
                remote=remote,
            )
            return [reservation_view(r) for r in rs], [reservation_out(r, caller, state) for r in rs]
    except scheduling.BookingError as exc:
        raise booking_http(exc) from None
    except IntegrityError:
        # The exclusion constraint (PostgreSQL) caught a booking that raced this one.
        raise HTTPException(
            409, "another booking took one of these nodes at the same moment; try again"
        ) from None


def _cancel_booking(state: AgentState, ids: list[int], reason: str) -> None:
    with write_session(state.sessions) as s:
        for r in s.scalars(select(Reservation).where(Reservation.id.in_(ids))):
            r.status = CANCELLED
            r.credentials = None
            add_event(s, r, f"booking rolled back: {reason}", level="warning")


def _store_states(state: AgentState, updates: dict[int, dict[str, Any]]) -> None:
    # The driver's bookkeeping is not part of the answer, which the booking transaction built.
    with write_session(state.sessions) as s:
        for r in s.scalars(select(Reservation).where(Reservation.id.in_(list(updates)))):
            r.driver_state = {**(r.driver_state or {}), **updates[r.id]}


@router.post("", status_code=201, response_model=BookingOut)
async def create(req: ReservationRequest, state: StateDep, caller: CallerDep) -> BookingOut:
    """Book every filter or nothing (409 with the reason). The reservations start `configuring`."""
    now = utcnow()
    start = req.start if isinstance(req.start, dt.datetime) else now
    duration = dt.timedelta(hours=req.duration_hours)
    try:
        scheduling.check_times(start, duration, state.limits, now)
    except scheduling.BookingError as exc:
        raise booking_http(exc) from None
    await refresh_inventory(state, caller)
    remote: list[Any] = []
    if state.driver.remote_inventory:
        async with driver_errors(state, "reading the remote calendar"):
            remote = await state.driver.remote_busy(
                start, start + duration + state.limits.gap, caller.credentials
            )
    views, out = await db(_book, state, caller, req, start, remote)
    ids = [v.id for v in views]
    try:
        updates = await state.driver.on_booked(views, caller.credentials)
    except Exception as exc:
        await db(_cancel_booking, state, ids, str(exc) or type(exc).__name__)
        raise driver_http(state.config, exc, "booking on the testbed") from exc
    updates = {rid: upd for rid, upd in (updates or {}).items() if upd and rid in ids}
    if updates:
        await db(_store_states, state, updates)
    return BookingOut(reservations=out)


# ---------------------------------------------------------------- reading


def _list(
    state: AgentState, caller: Caller, everyone: bool, status: str | None, limit: int
) -> list[ReservationOut]:
    with state.sessions() as s:
        q = select(Reservation)
        if not everyone:
            q = q.where(Reservation.owner == caller.user)
        if status == "active":
            q = q.where(Reservation.status.in_(ACTIVE_STATUSES))
        elif status:
            q = q.where(Reservation.status == status)
        rows = list(s.scalars(q.order_by(Reservation.start.desc(), Reservation.id.desc()).limit(limit)))
        acts = open_actions(s, [r.id for r in rows])
        return [reservation_out(r, caller, state, acts.get(r.id)) for r in rows]


@router.get("", response_model=list[ReservationOut])
async def list_reservations(
    state: StateDep,
    caller: CallerDep,
    all: Annotated[bool, Query(description="Every user's reservations (admins only)")] = False,  # noqa: A002
    status: Annotated[StatusQuery | None, Query(description="Only this status ('active': not ended)")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> list[ReservationOut]:
    """The caller's reservations, newest first (events only in the single-reservation answer)."""
    if all and not caller.admin:
        raise HTTPException(403, "only administrators may list every user's reservations")
    return await db(_list, state, caller, all, status, limit)


@router.get("/{reservation_id}", response_model=ReservationOut)
async def get_reservation(
    reservation_id: ReservationId, state: StateDep, caller: CallerDep
) -> ReservationOut:
    """One reservation with its progress, its last events and the actions possible now."""
    return await db(_out, state, caller, reservation_id, True)


@router.get("/{reservation_id}/form", response_model=list[FormField])
async def deploy_form(reservation_id: ReservationId, state: StateDep, caller: CallerDep) -> list[FormField]:
    """The deploy form of this reservation's node type."""
    view, status, _ = await db(_load, state, caller, reservation_id)
    if status in FINAL_STATUSES or status == DESTROYING:
        raise HTTPException(409, f"reservation {reservation_id} is {status}")
    async with driver_errors(state, "building the deploy form"):
        return list(await state.driver.deploy_form(view, caller.credentials))


# ---------------------------------------------------------------- deploy


def _finite(value: Any) -> bool:
    return not (isinstance(value, float) and not math.isfinite(value))


def _deploy_refusal(status: str) -> str | None:
    if status == CONFIGURING:
        return None
    if status in (DEPLOYED, FAILED):
        return f"the reservation is {status}: use redeploy to deploy again"
    if status in (SCHEDULED, DEPLOYING):
        return f"the reservation is already {status}; destroy it or wait, then redeploy"
    return f"the reservation is {status}"


def _store_deploy(
    state: AgentState, caller: Caller, rid: int, params: dict[str, Any], bin: str | None
) -> None:
    with write_session(state.sessions) as s:
        r = _get(s, caller, rid)
        refusal = _deploy_refusal(r.status)
        if refusal:
            raise HTTPException(409, refusal)
        r.params = params
        if bin is not None:
            r.bin = bin
        if caller.credentials_token:
            r.credentials = caller.credentials_token
        r.status = SCHEDULED
        r.error = ""
        env = params.get("environment")
        add_event(
            s,
            r,
            f"deployment of {env} requested by {caller.user}"
            if env
            else f"deployment requested by {caller.user}",
        )


@router.post("/{reservation_id}/deploy", status_code=202, response_model=AcceptedOut)
async def deploy(
    reservation_id: ReservationId, body: DeployRequest, state: StateDep, caller: CallerDep
) -> AcceptedOut:
    """Store the deploy form (checked by the driver); the deployment starts at the reservation's
    start (at once when it has begun)."""
    view, status, _ = await db(_load, state, caller, reservation_id)
    refusal = _deploy_refusal(status)
    if refusal:
        raise HTTPException(409, refusal)
    submitted = body.model_dump(exclude={"bin"}, exclude_none=True)
    for key, value in submitted.items():
        if not _finite(value):
            raise HTTPException(422, f"{key}: must be a finite number")
    async with driver_errors(state, "checking the deploy form"):
        params = await state.driver.validate_deploy(view, submitted, caller.credentials)
    await db(_store_deploy, state, caller, reservation_id, dict(params), body.bin)
    return AcceptedOut(
        id=reservation_id,
        status=SCHEDULED,
        process="deploy",
        message="the deployment starts at the reservation's start",
    )


# ---------------------------------------------------------------- actions


def _destroy_tx(state: AgentState, caller: Caller, rid: int, cancel_ok: bool) -> AcceptedOut | None:
    """Cancel (no action ever, `cancel_ok`) or queue a destroy. None: the driver's on_cancel must
    run first."""
    with write_session(state.sessions) as s:
        r = _get(s, caller, rid)
        if r.status in FINAL_STATUSES:
            raise HTTPException(409, f"reservation {rid} is already {r.status}")
        cur = current_action(s, r)
        if r.status == DESTROYING and cur is not None and cur.process == "destroy":
            raise HTTPException(409, f"reservation {rid} is already being destroyed")
        never_acted = s.scalar(select(Action.id).where(Action.reservation_id == rid).limit(1)) is None
        if r.status in (CONFIGURING, SCHEDULED) and never_acted:
            if not cancel_ok:
                return None
            r.status = CANCELLED
            r.credentials = None
            add_event(s, r, f"cancelled by {caller.user}")
            return AcceptedOut(id=rid, status=CANCELLED, message="cancelled; the node is free again")
        if "destroy" not in state.processes():
            raise HTTPException(409, "this agent's driver has no destroy process")
        if caller.credentials_token:
            r.credentials = caller.credentials_token
        start_action(s, r, "destroy", supersede=True, reason=f"destroy requested by {caller.user}")
        r.status = DESTROYING
        return AcceptedOut(
            id=rid, status=DESTROYING, process="destroy", message="the node is being wiped and released"
        )


@router.post("/{reservation_id}/destroy", status_code=202, response_model=AcceptedOut)
async def destroy(reservation_id: ReservationId, state: StateDep, caller: CallerDep) -> AcceptedOut:
    """End this reservation (and only this one): cancelled at once when nothing ran yet, otherwise
    the node is wiped and released by the executor."""
    out = await db(_destroy_tx, state, caller, reservation_id, False)
    if out is not None:
        return out
    view, _, _ = await db(_load, state, caller, reservation_id)
    async with driver_errors(state, "cancelling on the testbed"):
        await state.driver.on_cancel(view, caller.credentials)
    out = await db(_destroy_tx, state, caller, reservation_id, True)
    assert out is not None
    return out


ALLOWED = {"reboot": (DEPLOYED, FAILED), "redeploy": (DEPLOYED, FAILED), "bootfiles": (DEPLOYED,)}


def _action_tx(state: AgentState, caller: Caller, rid: int, process: str) -> AcceptedOut:
    with write_session(state.sessions) as s:
        r = _get(s, caller, rid)
        proc = state.processes().get(process)
        if proc is None:
            raise HTTPException(409, f"{state.config.node_type} nodes do not support {process}")
        if r.status not in ALLOWED[process]:
            allowed = " or ".join(ALLOWED[process])
            raise HTTPException(409, f"{process} needs a {allowed} reservation; this one is {r.status}")
        if process == "redeploy" and not r.params:
            raise HTTPException(409, "nothing was deployed yet: send the deploy form first")
        if caller.credentials_token:
            r.credentials = caller.credentials_token
        try:
            start_action(s, r, process, reason=f"{process} requested by {caller.user}")
        except ActionRefused as exc:
            raise HTTPException(409, str(exc)) from None
        r.status = proc.running_status
        r.error = ""
        return AcceptedOut(id=rid, status=r.status, process=process, message=f"{process} queued")


def _action_route(process: str) -> Any:
    async def run(reservation_id: ReservationId, state: StateDep, caller: CallerDep) -> AcceptedOut:
        return await db(_action_tx, state, caller, reservation_id, process)

    run.__name__ = process
    run.__doc__ = f"Queue the {process} process (202), or 409 with the reason it is not possible now."
    return run


for _process in ("reboot", "redeploy", "bootfiles"):
    router.post(
        f"/{{reservation_id}}/{_process}",
        status_code=202,
        response_model=AcceptedOut,
        name=_process,
    )(_action_route(_process))


def _register_env_tx(state: AgentState, caller: Caller, rid: int, name: str) -> AcceptedOut:
    with write_session(state.sessions) as s:
        r = _get(s, caller, rid)
        proc = state.processes().get(env_factory.PROCESS)
        if proc is None:
            raise HTTPException(409, f"{state.config.node_type} nodes cannot be saved as environments")
        if r.status != DEPLOYED:
            raise HTTPException(
                409, f"only a deployed node can be saved as an environment; this one is {r.status}"
            )
        taken = env_factory.name_taken(s, state.config.env_dir, name)
        if taken:
            raise HTTPException(422, f"name: {taken}")
        try:
            start_action(s, r, env_factory.PROCESS, {"name": name},
                         reason=f"saving {r.node_name} as environment {name}, requested by {caller.user}")
        except ActionRefused as exc:
            raise HTTPException(409, str(exc)) from None
        r.status = proc.running_status
        r.error = ""
        return AcceptedOut(
            id=rid, status=r.status, process=env_factory.PROCESS,
            message=f"{r.node_name} is being saved as environment {name}",
        )


@router.post("/{reservation_id}/register_env", status_code=202, response_model=AcceptedOut)
async def register_env(
    reservation_id: ReservationId, body: RegisterEnvRequest, state: StateDep, caller: CallerDep
) -> AcceptedOut:
    """Save the system of this deployed node as a new environment owned by the reservation's
    owner (202); 409 when the node is not deployed or its driver cannot, 422 on a bad or taken name.
    The node netboots, its card is copied to the agent, then it boots its system again."""
    try:
        name = env_factory.check_name(body.name)
    except ValueError as exc:
        raise HTTPException(422, f"name: {exc}") from None
    return await db(_register_env_tx, state, caller, reservation_id, name)


def _extend_tx(
    state: AgentState, caller: Caller, rid: int, hours: float
) -> tuple[ReservationView, dt.datetime, dt.datetime]:
    try:
        with write_session(state.sessions) as s:
            r = _get(s, caller, rid)
            old_until = r.busy_until
            old_end, new_end = scheduling.extend(s, r, hours, state.limits)
            return reservation_view(r), old_end, old_until
    except scheduling.BookingError as exc:
        raise booking_http(exc) from None
    except IntegrityError:
        raise HTTPException(
            409, "another booking of this node was made at the same moment; try again"
        ) from None


def _extend_undo(
    state: AgentState,
    rid: int,
    new_end: dt.datetime,
    old_end: dt.datetime,
    old_until: dt.datetime,
    reason: str,
) -> None:
    with write_session(state.sessions) as s:
        r = s.get(Reservation, rid)
        if r is not None and r.end == new_end:
            r.end, r.busy_until = old_end, old_until
            add_event(s, r, f"extension refused: {reason}", level="warning")


def _extend_store(state: AgentState, caller: Caller, rid: int, update: dict[str, Any]) -> ReservationOut:
    with write_session(state.sessions) as s:
        r = _get(s, caller, rid)
        if update:
            r.driver_state = {**(r.driver_state or {}), **update}
        s.flush()
        return reservation_out(r, caller, state, current_action(s, r))


@router.post("/{reservation_id}/extend", status_code=202, response_model=ReservationOut)
async def extend(
    reservation_id: ReservationId, state: StateDep, caller: CallerDep, body: ExtendRequest | None = None
) -> ReservationOut:
    """Move the end later (by `hours`, or by the reservation's own duration when 0). Never runs
    into the node's next booking (409 naming when it starts) nor past the maximum duration."""
    hours = body.hours if body is not None else 0.0
    view, old_end, old_until = await db(_extend_tx, state, caller, reservation_id, hours)
    try:
        update = await state.driver.on_extend(view, view.end, caller.credentials)
    except Exception as exc:
        await db(
            _extend_undo, state, reservation_id, view.end, old_end, old_until, str(exc) or type(exc).__name__
        )
        raise driver_http(state.config, exc, "extending on the testbed") from exc
    return await db(_extend_store, state, caller, reservation_id, update or {})
