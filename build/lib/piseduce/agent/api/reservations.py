"""Reservations: booking, listing, the deploy form, deploy, and the actions on a reservation.

A user sees and acts only on their own reservations (404 for the others'); admins on all. Every
state change is one transaction; the driver's hooks (which may call a remote testbed) run outside
the transaction, and what they refuse is rolled back by a second one.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from piseduce.agent import booking, energy, env_factory, lifecycle, sealed
from piseduce.agent.actions import add_event, start_action
from piseduce.agent.api.deps import AgentState, StateDep, booking_http, db, driver_errors, driver_http
from piseduce.agent.api.nodes import refresh_inventory
from piseduce.agent.api.views import (
    current_action,
    last_events,
    open_actions,
    reservation_out,
)
from piseduce.agent.auth import Caller, CallerDep
from piseduce.agent.drivers.base import ActionRefused, FormField, ReservationView
from piseduce.agent.lifecycle import ACTIVE_STATUSES, DESTROYING, Trigger
from piseduce.agent.models import Action, Reservation
from piseduce.agent.schemas import DeployRequest, ExtendRequest, RegisterEnvRequest, ReservationRequest
from piseduce.agent.snapshots import reservation_view
from piseduce.db import write_session
from piseduce.dbtypes import utcnow
from piseduce.numbers import StrictInt
from piseduce.protocol import AcceptedOut, BookingOut, Feature, ReservationOut

router = APIRouter(prefix="/api/reservations", tags=["reservations"])

ReservationId = Annotated[StrictInt, Path(ge=1, le=2**31 - 1, description="The reservation's id")]
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
        used = energy.of(s, r, utcnow()) if events else None
        return reservation_out(
            r, caller, state, current_action(s, r), last_events(s, r.id) if events else (), used
        )


def _move(r: Reservation, trigger: Trigger) -> None:
    """Apply a user's trigger to the reservation, or answer 409 with the lifecycle's reason."""
    try:
        lifecycle.move(r, trigger)
    except lifecycle.Refused as exc:
        raise HTTPException(409, exc.reason) from None


# ---------------------------------------------------------------- booking


def _book(
    state: AgentState, caller: Caller, req: ReservationRequest, start: dt.datetime, remote: list[Any]
) -> tuple[list[ReservationView], list[ReservationOut]]:
    try:
        with write_session(state.sessions) as s:
            rs = booking.book(
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
    except booking.BookingError as exc:
        raise booking_http(exc) from None
    except IntegrityError:
        # The exclusion constraint (PostgreSQL) caught a booking that raced this one.
        raise HTTPException(
            409, "another booking took one of these nodes at the same moment; try again"
        ) from None


def _cancel_booking(state: AgentState, ids: list[int], reason: str) -> None:
    with write_session(state.sessions) as s:
        for r in s.scalars(select(Reservation).where(Reservation.id.in_(ids))):
            if not lifecycle.allows(r.status, Trigger.ROLLBACK):
                # Deployed meanwhile (a start of "now" and a fast executor): its destroy ends it.
                add_event(s, r, f"the testbed refused this booking ({reason}): destroy it", level="warning")
                continue
            lifecycle.move(r, Trigger.ROLLBACK)
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
        booking.check_times(start, duration, state.limits, now)
    except booking.BookingError as exc:
        raise booking_http(exc) from None
    await refresh_inventory(state, caller)
    remote: list[Any] = []
    if state.driver.inventory is not None:
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
        used = energy.live(s, rows, utcnow())
        return [reservation_out(r, caller, state, acts.get(r.id), (), used.get(r.id)) for r in rows]


@router.get("", response_model=list[ReservationOut])
async def list_reservations(
    state: StateDep,
    caller: CallerDep,
    all: Annotated[bool, Query(description="Every user's reservations (admins only)")] = False,  # noqa: A002
    status: Annotated[StatusQuery | None, Query(description="Only this status ('active': not ended)")] = None,
    limit: Annotated[StrictInt, Query(ge=1, le=5000)] = 1000,
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
    refusal = lifecycle.refusal(status, Trigger.FORM, reservation_id)
    if refusal:
        raise HTTPException(409, refusal)
    async with driver_errors(state, "building the deploy form"):
        return list(await state.driver.deploy_form(view, caller.credentials))


# ---------------------------------------------------------------- deploy


def _store_deploy(
    state: AgentState, caller: Caller, rid: int, params: dict[str, Any], bin: str | None
) -> None:
    with write_session(state.sessions) as s:
        r = _get(s, caller, rid)
        _move(r, Trigger.DEPLOY)
        # The form's secrets (the OS password) are kept sealed with the key file, never in clear.
        r.params = sealed.seal(state.fernet, params)
        if bin is not None:
            r.bin = bin
        if caller.credentials_token:
            r.credentials = caller.credentials_token
        r.error = ""
        env = params.get("environment")
        add_event(
            s,
            r,
            f"deployment of {env} requested by {caller.user}"
            if env
            else f"deployment requested by {caller.user}",
            actor=caller.user,
        )


@router.post("/{reservation_id}/deploy", status_code=202, response_model=AcceptedOut)
async def deploy(
    reservation_id: ReservationId, body: DeployRequest, state: StateDep, caller: CallerDep
) -> AcceptedOut:
    """Store the deploy form (checked by the driver); the deployment starts at the reservation's
    start (at once when it has begun)."""
    view, status, _ = await db(_load, state, caller, reservation_id)
    refusal = lifecycle.refusal(status, Trigger.DEPLOY, reservation_id)
    if refusal:
        raise HTTPException(409, refusal)
    # Non-finite numbers and lone surrogates were refused with the body (schemas.Strict).
    submitted = body.model_dump(exclude={"bin"}, exclude_none=True)
    async with driver_errors(state, "checking the deploy form"):
        params = await state.driver.validate_deploy(view, submitted, caller.credentials)
    await db(_store_deploy, state, caller, reservation_id, dict(params), body.bin)
    return AcceptedOut(
        id=reservation_id,
        status=lifecycle.after(status, Trigger.DEPLOY),
        process="deploy",
        message="the deployment starts at the reservation's start",
    )


# ---------------------------------------------------------------- actions


def _destroy_tx(state: AgentState, caller: Caller, rid: int, cancel_ok: bool) -> AcceptedOut | None:
    """Cancel (no action ever, `cancel_ok`) or queue a destroy. None: the driver's on_cancel must
    run first."""
    with write_session(state.sessions) as s:
        r = _get(s, caller, rid)
        refusal = lifecycle.refusal(r.status, Trigger.DESTROY, rid)
        if refusal:
            raise HTTPException(409, refusal)
        cur = current_action(s, r)
        if r.status == DESTROYING and cur is not None and cur.process == "destroy":
            raise HTTPException(409, f"reservation {rid} is already being destroyed")
        never_acted = s.scalar(select(Action.id).where(Action.reservation_id == rid).limit(1)) is None
        if never_acted and lifecycle.allows(r.status, Trigger.CANCEL):
            if not cancel_ok:
                return None
            lifecycle.move(r, Trigger.CANCEL)
            add_event(s, r, f"cancelled by {caller.user}", actor=caller.user)
            return AcceptedOut(id=rid, status=r.status, message="cancelled; the node is free again")
        if "destroy" not in state.processes():
            raise HTTPException(409, "this agent's driver has no destroy process")
        if caller.credentials_token:
            r.credentials = caller.credentials_token
        start_action(s, r, "destroy", supersede=True, reason=f"destroy requested by {caller.user}",
                     actor=caller.user)
        lifecycle.move(r, Trigger.DESTROY)
        return AcceptedOut(
            id=rid, status=r.status, process="destroy", message="the node is being wiped and released"
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


def _action_tx(state: AgentState, caller: Caller, rid: int, trigger: Trigger) -> AcceptedOut:
    process = lifecycle.QUEUES[trigger]
    with write_session(state.sessions) as s:
        r = _get(s, caller, rid)
        if process not in state.processes():
            raise HTTPException(409, f"{state.config.node_type} nodes do not support {process}")
        refusal = lifecycle.refusal(r.status, trigger, rid)
        if refusal:
            raise HTTPException(409, refusal)
        if process == "redeploy" and not r.params:
            raise HTTPException(409, "nothing was deployed yet: send the deploy form first")
        if caller.credentials_token:
            r.credentials = caller.credentials_token
        try:
            start_action(s, r, process, reason=f"{process} requested by {caller.user}", actor=caller.user)
        except ActionRefused as exc:
            raise HTTPException(409, str(exc)) from None
        lifecycle.move(r, trigger)
        r.error = ""
        return AcceptedOut(id=rid, status=r.status, process=process, message=f"{process} queued")


def _action_route(trigger: Trigger) -> Any:
    async def run(reservation_id: ReservationId, state: StateDep, caller: CallerDep) -> AcceptedOut:
        return await db(_action_tx, state, caller, reservation_id, trigger)

    run.__name__ = trigger.value
    run.__doc__ = f"Queue the {trigger} process (202), or 409 with the reason it is not possible now."
    return run


for _trigger in (Trigger.REBOOT, Trigger.REDEPLOY, Trigger.BOOTFILES):
    router.post(
        f"/{{reservation_id}}/{_trigger}",
        status_code=202,
        response_model=AcceptedOut,
        name=_trigger.value,
    )(_action_route(_trigger))


def _register_env_tx(state: AgentState, caller: Caller, rid: int, name: str) -> AcceptedOut:
    with write_session(state.sessions) as s:
        r = _get(s, caller, rid)
        if env_factory.PROCESS not in state.processes():
            raise HTTPException(409, f"{state.config.node_type} nodes cannot be saved as environments")
        refusal = lifecycle.refusal(r.status, Trigger.REGISTER_ENV, rid)
        if refusal:
            raise HTTPException(409, refusal)
        taken = env_factory.name_taken(s, state.config.env_dir, name, r.owner)
        if taken:
            raise HTTPException(422, f"name: {taken}")
        unsafe = env_factory.unsafe_env_dir(state.config.env_dir)
        if unsafe:
            raise HTTPException(409, unsafe)
        try:
            start_action(s, r, env_factory.PROCESS, {"name": name},
                         reason=f"saving {r.node_name} as environment {name}, requested by {caller.user}",
                         actor=caller.user)
        except ActionRefused as exc:
            raise HTTPException(409, str(exc)) from None
        lifecycle.move(r, Trigger.REGISTER_ENV)
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
            old_end, new_end = booking.extend(s, r, hours, state.limits)
            return reservation_view(r), old_end, old_until
    except booking.BookingError as exc:
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
    if Feature.EXTEND not in state.features():
        # Refused before anything is written: the agent advertises no extension (GET /api/info).
        testbed = state.driver.labels.get("testbed") or f"{state.config.node_type} nodes"
        raise HTTPException(
            409, f"{testbed} cannot extend a reservation: book a longer slot, or book the node again after it"
        )
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
