"""/api/v1/reservations: book, list, look at, deploy and act on the caller's reservations.

A reservation is named `{agent}/{id}`: the agent's name in the web UI and the agent's own id.
Another user's reservation is answered 404, exactly like one that does not exist (admins see
and act on every one). Booking goes through the Reserve page's service (webui/booking.py).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response

from piseduce.api_models import EventOut, FormFieldOut, ReservationDetailOut, ReservationOut
from piseduce.numbers import StrictInt
from piseduce.protocol import ReservationOut as AgentReservation
from piseduce.sshkeys import parse_key
from piseduce.webui import audit, booking
from piseduce.webui.agent_client import AgentClient, agents
from piseduce.webui.agents import AgentRef
from piseduce.webui.api import calls, views
from piseduce.webui.api.auth import Caller, caller, identity_of, writer
from piseduce.webui.api.schemas import BookingIn, DeployIn, ExtendIn, SaveEnvironmentIn
from piseduce.webui.booking import BookingRequest, start_problem
from piseduce.webui.node_filters import parse_expression
from piseduce.webui.repeats import repeated_node

router = APIRouter(prefix="/reservations", tags=["reservations"])

AgentName = Annotated[str, Path(min_length=1, max_length=64)]
Rid = Annotated[StrictInt, Path(ge=1, le=2**31 - 1)]
STATUS_RE = r"^(active|configuring|scheduled|deploying|deployed|failed|destroying|ended|cancelled)$"
SIMPLE_ACTIONS = ("reboot", "redeploy", "destroy", "release", "bootfiles")
PARTIAL = "X-Piseduce-Unavailable"


def partial(response: Response, errors: list[str]) -> None:
    """A list from several agents says in a header which agents did not answer."""
    if errors:
        text = "; ".join(errors)[:900]
        response.headers[PARTIAL] = text.encode("ascii", "replace").decode()


@router.get("", response_model=list[ReservationOut])
async def list_reservations(
    request: Request,
    response: Response,
    bin: Annotated[str | None, Query(max_length=64)] = None,  # noqa: A002
    status: Annotated[str | None, Query(pattern=STATUS_RE)] = None,
    agent: Annotated[str | None, Query(max_length=64)] = None,
    all: bool = False,  # noqa: A002
    who: Caller = Depends(caller),
    h: AgentClient = Depends(agents),
) -> Response:
    """The caller's reservations of every agent, soonest first ('active': not ended; admins add
    all=true for every user's). Agents that did not answer are named in X-Piseduce-Unavailable."""
    if all and not who.is_admin:
        raise HTTPException(403, "Only administrators may list every user's reservations (all=true).")
    ident = identity_of(request, who)
    found, errors = await calls.reservations(h, ident, await calls.agents_of(h, agent), status or "", all)
    partial(response, errors)
    out = [views.reservation_out(ref, r) for ref, r in found if bin is None or r.bin == bin]
    out.sort(key=lambda r: (r.start, r.agent, r.node))
    return views.listed(out, response)


def booking_request(body: BookingIn, refs: dict[str, AgentRef]) -> BookingRequest:
    """The booking asked for, checked; 422 in words otherwise."""
    if (body.nodes is None) == (body.count is None):
        raise HTTPException(
            422, "Give either 'nodes' ([{agent, node}]) or 'count' (with 'filters'), not both."
        )
    if body.nodes is not None and body.filters:
        raise HTTPException(422, "'filters' go with 'count'; named nodes are booked as they are.")
    now = body.start.strip().lower() == "now"
    start = dt.datetime.now(dt.UTC)
    if not now:
        try:
            start = dt.datetime.fromisoformat(body.start.strip().replace("Z", "+00:00"))
        except ValueError:
            raise HTTPException(
                422, f"start: {body.start[:40]!r} is not 'now' nor an ISO-8601 time."
            ) from None
        if start.tzinfo is None:
            raise HTTPException(422, "start: give a time zone (such as 2030-01-01T10:00:00Z or +02:00).")
        start = start.astimezone(dt.UTC)
        if problem := start_problem(start):
            raise HTTPException(422, f"start: {problem}")
    req = BookingRequest(start, now, body.hours, body.bin.strip())
    if body.count is not None:
        try:
            req.filters = [parse_expression(f) for f in body.filters]
        except ValueError as exc:
            raise HTTPException(422, f"{exc}.") from None
        req.count = body.count
    for n in body.nodes or []:
        ref = refs.get(n.agent)
        if ref is None:
            raise HTTPException(422, f"nodes: no agent is named {n.agent[:80]!r} (GET /api/v1/agents).")
        req.nodes.setdefault(ref.id, []).append(n.node)
    if problem := repeated_node(req.nodes, {r.id: r for r in refs.values()}):
        raise HTTPException(422, problem)
    return req


@router.post(
    "",
    status_code=201,
    response_model=list[ReservationOut],
    responses={409: {"description": "Not free: nothing was booked (all or nothing)"}},
)
async def book(
    body: BookingIn, request: Request, who: Caller = Depends(writer), h: AgentClient = Depends(agents)
) -> list[ReservationOut]:
    """Book named nodes, or `count` nodes matching `filters`, from `start` ('now' or ISO-8601)
    for `hours`: every node or none, across agents (the Reserve page's booking service)."""
    refs = await h.refs()
    req = booking_request(body, {r.name: r for r in refs})
    outcome = await booking.book(h, identity_of(request, who), req)
    if outcome.refused:
        words = " ".join(outcome.refused)
        if any(c == 0 or c >= 500 for c in outcome.codes):  # an agent did not answer: not a conflict
            raise HTTPException(503, f"{words} Try again shortly.", headers={"Retry-After": "5"})
        bad_input = outcome.codes and all(c in (400, 422) for c in outcome.codes)
        raise HTTPException(422 if bad_input else 409, words)
    return [views.reservation_out(b["ref"], b["data"]) for b in outcome.booked]


async def _target(
    request: Request, who: Caller, h: AgentClient, agent: str, rid: int
) -> tuple[AgentRef, AgentReservation]:
    ref = await calls.agent_named(h, agent)
    return ref, await calls.reservation(h, who, identity_of(request, who), ref, rid)


@router.get("/{agent}/{rid}", response_model=ReservationDetailOut)
async def get_reservation(
    agent: AgentName,
    rid: Rid,
    request: Request,
    who: Caller = Depends(caller),
    h: AgentClient = Depends(agents),
) -> ReservationDetailOut:
    """One reservation with its status, step, progress, connection and events."""
    ref, r = await _target(request, who, h, agent, rid)
    return views.detail_out(ref, r)


@router.get("/{agent}/{rid}/events", response_model=list[EventOut])
async def events(
    agent: AgentName,
    rid: Rid,
    request: Request,
    after: Annotated[StrictInt, Query(ge=0, le=10**9)] = 0,
    who: Caller = Depends(caller),
    h: AgentClient = Depends(agents),
) -> list[EventOut]:
    """The reservation's events numbered after `after` (poll with the last `n` seen)."""
    _ref, r = await _target(request, who, h, agent, rid)
    return [e for e in views.events_out(r) if e.n > after]


@router.get("/{agent}/{rid}/form", response_model=list[FormFieldOut])
async def deploy_form(
    agent: AgentName,
    rid: Rid,
    request: Request,
    who: Caller = Depends(caller),
    h: AgentClient = Depends(agents),
) -> list[FormFieldOut]:
    """The deploy form of the reservation, as Configure shows it (environments, firmware...)."""
    ref, _r = await _target(request, who, h, agent, rid)
    fields = await calls.form(h, identity_of(request, who), ref, rid)
    out = [
        FormFieldOut(
            name=f.name,
            label=f.label,
            kind=f.kind,
            choices=list(f.choices),
            required=f.required,
            help=f.help,
            default=f.default,
        )
        for f in fields
    ]
    return out


async def _answer(request: Request, who: Caller, h: AgentClient, ref: AgentRef, rid: int) -> ReservationOut:
    r = await calls.reservation(h, who, identity_of(request, who), ref, rid)
    return views.reservation_out(ref, r)


def _account_keys(who: Caller) -> list[str]:
    keys = []
    for line in who.user.ssh_keys or []:
        try:
            keys.append(parse_key(line).line)
        except ValueError:
            continue
    return keys


@router.post("/{agent}/{rid}/deploy", status_code=202, response_model=ReservationOut)
async def deploy(
    agent: AgentName,
    rid: Rid,
    body: DeployIn,
    request: Request,
    who: Caller = Depends(writer),
    h: AgentClient = Depends(agents),
) -> ReservationOut:
    """Deploy with the form's `values` (GET …/form lists the fields); without `ssh_keys`, the
    account's SSH keys are installed. 202 with the reservation, or 409 with the refusal."""
    ref, r = await _target(request, who, h, agent, rid)
    values = dict(body.values)
    if "ssh_keys" not in values:
        values["ssh_keys"] = _account_keys(who)
    values.setdefault("bin", r.bin)
    await calls.deploy(h, identity_of(request, who), ref, rid, values)
    await audit.on_reservations(request, who.user, "deploy", [(ref.name, rid, r.owner, r.node)])
    return await _answer(request, who, h, ref, rid)


@router.post("/{agent}/{rid}/extend", status_code=202, response_model=ReservationOut)
async def extend(
    agent: AgentName,
    rid: Rid,
    body: ExtendIn,
    request: Request,
    who: Caller = Depends(writer),
    h: AgentClient = Depends(agents),
) -> ReservationOut:
    """Move the end later by `hours` (0: by the reservation's own length), never into the next booking."""
    ref, r = await _target(request, who, h, agent, rid)
    await calls.extend(h, identity_of(request, who), ref, rid, body.hours)
    await audit.on_reservations(request, who.user, "extend", [(ref.name, rid, r.owner, r.node)])
    return await _answer(request, who, h, ref, rid)


@router.post("/{agent}/{rid}/save-environment", status_code=202, response_model=ReservationOut)
async def save_environment(
    agent: AgentName,
    rid: Rid,
    body: SaveEnvironmentIn,
    request: Request,
    who: Caller = Depends(writer),
    h: AgentClient = Depends(agents),
) -> ReservationOut:
    """Save the deployed node's system as a new environment of yours, named `name`."""
    ref, _r = await _target(request, who, h, agent, rid)
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", body.name):
        raise HTTPException(422, "name: letters, digits, '.', '_' and '-' only (at most 64).")
    await calls.save_environment(h, identity_of(request, who), ref, rid, body.name)
    return await _answer(request, who, h, ref, rid)


def _action_route(action: str) -> Any:
    async def run(
        agent: AgentName,
        rid: Rid,
        request: Request,
        who: Caller = Depends(writer),
        h: AgentClient = Depends(agents),
    ) -> ReservationOut:
        ref, r = await _target(request, who, h, agent, rid)
        await calls.act(h, identity_of(request, who), ref, rid, views.ACTIONS[action])
        await audit.on_reservations(request, who.user, action, [(ref.name, rid, r.owner, r.node)])
        return await _answer(request, who, h, ref, rid)

    run.__name__ = action
    return run


# One route per action (a path parameter would answer POST …/form with a 422, not a 405).
ACTION_WORDS = {
    "reboot": "Reboot the node (202), or 409 with the reason it is not possible now.",
    "redeploy": "Deploy again with the same values (erases the node).",
    "bootfiles": "Update the deployed system's boot files.",
    "destroy": "Wipe the node and give it back (the reservation ends).",
    "release": "The same as destroy: wipe the node and give it back.",
}
for _action, _words in ACTION_WORDS.items():
    router.post(
        f"/{{agent}}/{{rid}}/{_action}",
        status_code=202,
        response_model=ReservationOut,
        name=_action,
        description=_words,
    )(_action_route(_action))
