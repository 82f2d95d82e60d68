"""Configure: one deploy form per booked node, built from its agent's form schema."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from piseduce.protocol import CONFIGURING, FormField, ReservationOut
from piseduce.sshkeys import parse_key
from piseduce.webui import audit
from piseduce.webui.agent_client import AgentClient, agents
from piseduce.webui.agents import AgentRef, Identity, iso
from piseduce.webui.models import User
from piseduce.webui.node_words import name_the_node
from piseduce.webui.repeats import repeated_reservation
from piseduce.webui.routes.configure_form import (
    BIN_LIMIT,
    BIN_PATTERN,
    BIN_RE,
    Submitted,
    card_bin,
    deploy_params,
    submitted,
)
from piseduce.webui.web import current_user, flash, form_list, form_str, identity, redirect, render

router = APIRouter(prefix="/configure")

# ASCII digits only: \d would also match "١٠" (which int() reads as 10).
REF_RE = re.compile(r"^([0-9]{1,9}):([0-9]{1,10})$")
MAX_CARDS = 500


@dataclass
class Card:
    idx: int
    agent: AgentRef
    reservation: ReservationOut
    fields: list[FormField] = field(default_factory=list)
    error: str = ""
    # What the user entered, when the page comes back with an error (see configure_form).
    values: Submitted | None = None
    group: int = 0

    @property
    def ref(self) -> str:
        return f"{self.agent.id}:{self.reservation.id}"

    @property
    def ticked(self) -> bool:
        return self.values.ticked if self.values is not None else True

    def value(self, name: str, default: Any = None) -> Any:
        """The value to show in field `name`: what was entered, else the form's default."""
        if self.values is None:
            return default
        if name in self.values.checked_fields:
            return name in self.values.checked
        return self.values.fields.get(name, default)


@dataclass
class Group:
    """The cards of one run: reservations of one bin starting at one time, deployed under one bin."""

    idx: int
    bin: str
    start: str
    end: str
    cards: list[Card] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return sorted({c.agent.node_type for c in self.cards})


def group_cards(cards: list[Card]) -> list[Group]:
    """Cards grouped by the bin typed at Reserve (kept on the reservation) and start time; soonest
    first. A bin entered on this page before an error wins over the stored one."""
    groups: dict[tuple[str, str], Group] = {}
    for c in cards:
        key = (iso(c.reservation.start), c.reservation.bin)
        g = groups.get(key)
        if g is None:
            g = Group(0, key[1], key[0], iso(c.reservation.end))
            groups[key] = g
        if c.values is not None and c.values.bin is not None:
            g.bin = c.values.bin
        g.cards.append(c)
    ordered = [groups[k] for k in sorted(groups)]
    for i, g in enumerate(ordered):
        g.idx = i
        for c in g.cards:
            c.group = i
    return ordered


async def configuring(h: AgentClient, who: Identity) -> tuple[list[Card], list[str]]:
    """The user's reservations waiting for their deploy form, with the form of each."""
    held, failed = await h.held(who, status=CONFIGURING)
    errors = [f"Agent {e}" for e in failed]
    cards = [Card(i, x.agent, x.r) for i, x in enumerate(held) if x.mine][:MAX_CARDS]
    forms = await asyncio.gather(*(h.form(c.agent, who, c.reservation.id) for c in cards))
    for card, form in zip(cards, forms, strict=True):
        if form.value is not None:
            card.fields = form.value
        else:
            card.error = f"deploy form unavailable: {form.error}"
    cards.sort(
        key=lambda c: (
            c.reservation.start, c.reservation.bin, c.agent.node_type, c.agent.name, c.reservation.node
        )
    )
    for i, c in enumerate(cards):
        c.idx = i
    return cards, errors


def _account_keys(user: User) -> list[dict[str, str]]:
    out = []
    for line in user.ssh_keys or []:
        try:
            k = parse_key(line)
        except ValueError:
            continue
        out.append({"fingerprint": k.fingerprint, "kind": k.kind, "comment": k.comment, "line": k.line})
    return out


@router.get("")
async def configure_page(
    request: Request, user: User = Depends(current_user), h: AgentClient = Depends(agents)
) -> Response:
    cards, errors = await configuring(h, identity(request, user))
    return _page(request, user, cards, errors)


def _page(request: Request, user: User, cards: list[Card], errors: list[str], status: int = 200) -> Response:
    groups = group_cards(cards)
    return render(
        request,
        "configure.html",
        {
            "page": "configure",
            "cards": cards,
            "groups": groups,
            "errors": errors,
            "types": sorted({c.agent.node_type for c in cards}),
            "account_keys": _account_keys(user),
            "bin_pattern": BIN_PATTERN,
        },
        status=status,
    )


def _jobs(
    form: FormData, refs: dict[int, AgentRef]
) -> tuple[list[tuple[int, AgentRef, int]], dict[str, Submitted], list[str]]:
    """The ticked cards of the form as (index, agent, reservation id); what every card held, by
    reservation reference; and the form's errors in words."""
    jobs: list[tuple[int, AgentRef, int]] = []
    entered: dict[str, Submitted] = {}
    errors: list[str] = []
    bad_bins: set[str] = set()
    for i in range(MAX_CARDS):
        ref_text = form_str(form, f"r{i}.ref", 32)
        if not ref_text:
            continue
        m = REF_RE.match(ref_text)
        if not m or int(m.group(1)) not in refs:
            errors.append(f"Unknown reservation {ref_text!r}.")
            continue
        entered[ref_text] = values = submitted(form, i)
        if not values.ticked:
            continue  # not deployed now; its values are kept for later
        if not BIN_RE.match(values.bin or "") and (values.bin or "") not in bad_bins:
            bad_bins.add(values.bin or "")
            errors.append(
                f"The bin name takes at most {BIN_LIMIT} characters." if len(values.bin or "") > BIN_LIMIT
                else "Give each ticked group a bin name (letters, digits, spaces, '.', '_', '-'): "
                "it groups its nodes on Manage."
            )
        jobs.append((i, refs[int(m.group(1))], int(m.group(2))))
    if not jobs and not errors:
        errors.append("No node is ticked: tick the nodes to deploy (or the box of their group).")
    return jobs, entered, errors


async def _again(
    request: Request,
    user: User,
    h: AgentClient,
    who: Identity,
    entered: dict[str, Submitted],
    messages: list[str],
    card_errors: dict[str, str] | None = None,
) -> Response:
    """The page again (400), every card still waiting showing what the user had entered, and the
    reason a card was not deployed on that card and in the banner, both naming its node."""
    cards, agent_errors = await configuring(h, who)
    by_ref = {c.ref: c for c in cards}
    for c in cards:
        c.values = entered.get(c.ref)
    for ref_text, error in (card_errors or {}).items():
        card = by_ref.get(ref_text)
        if card is None:  # no longer waiting (ended, or deployed meanwhile)
            agent_id, _, rid = ref_text.partition(":")
            agent = next((r.name for r in await h.refs() if str(r.id) == agent_id), "its agent")
            messages.append(f"Reservation {rid} on {agent}: {error}")
            continue
        node = card.reservation.node
        error = name_the_node(error, card.reservation.id, node)
        card.error = f"Not deployed: {error}"
        messages.append(f"{node} ({card.agent.name}): {error}")
    return _page(request, user, cards, messages + agent_errors, status=400)


async def _own(h: AgentClient, who: Identity, user: User) -> dict[str, tuple[str, str]]:
    """For an admin (who may post a card for anybody's reservation), every reservation waiting
    for its form, by reference: (owner, node), read before the deployment moves it on; a card the
    list lacks is audited as another user's. A user's posts concern only their own reservations,
    which the trail does not record (audit.on_reservations)."""
    if not user.is_admin:
        return {}
    held, _errors = await h.held(who, status=CONFIGURING, everyone=True)
    return {f"{x.agent.id}:{x.r.id}": (x.r.owner, x.r.node) for x in held}


@router.post("/deploy")
async def deploy(
    request: Request, user: User = Depends(current_user), h: AgentClient = Depends(agents)
) -> Response:
    """Deploy the ticked cards, each with the bin of its group; the others wait on the page."""
    form = await request.form()
    who = identity(request, user)
    jobs, entered, errors = _jobs(form, {r.id: r for r in await h.refs()})
    account = {k["fingerprint"]: k["line"] for k in _account_keys(user)}
    bodies: list[dict[str, Any]] = []
    refused: dict[str, str] = {}  # reservation reference -> why its card cannot be sent
    for i, ref, rid in jobs:
        try:
            params = await deploy_params(form, i, account)
        except ValueError as exc:
            refused[f"{ref.id}:{rid}"] = str(exc)
            continue
        params["bin"] = card_bin(form, i)
        bodies.append(params)
    if refused and not errors:
        errors.append("Nothing was deployed: correct the card(s) below, then Deploy again.")
    if errors:
        return await _again(request, user, h, who, entered, errors, refused)
    own = await _own(h, who, user)
    replies = await asyncio.gather(
        *(h.deploy(ref, who, rid, params) for (_i, ref, rid), params in zip(jobs, bodies, strict=True))
    )
    await audit.on_reservations(request, user, "deploy", [
        (ref.name, rid, *own.get(f"{ref.id}:{rid}", ("", "")))
        for (_i, ref, rid), reply in zip(jobs, replies, strict=True) if reply.ok])
    failed = {
        f"{ref.id}:{rid}": (ref, rid, reply.error)
        for (_i, ref, rid), reply in zip(jobs, replies, strict=True)
        if not reply.ok
    }
    started = len(jobs) - len(failed)
    bins = sorted({str(b["bin"]) for b in bodies})
    if not failed:
        flash(request, f"Deployment started on {started} node(s) of bin {', '.join(bins)}.", "ok")
        return redirect(request, "/manage")
    msgs = [f"{started} node(s) started deploying." if started else "No deployment started."]
    return await _again(request, user, h, who, entered, msgs, {k: v[2] for k, v in failed.items()})


@router.post("/cancel")
async def cancel(
    request: Request, user: User = Depends(current_user), h: AgentClient = Depends(agents)
) -> Response:
    form = await request.form()
    who = identity(request, user)
    refs = {r.id: r for r in await h.refs()}
    targets = []
    for ref_text in form_list(form, "sel", 32)[:MAX_CARDS]:
        m = REF_RE.match(ref_text)
        if m and int(m.group(1)) in refs:
            targets.append((refs[int(m.group(1))], int(m.group(2))))
    if not targets:
        flash(request, "Nothing selected to cancel.", "error")
        return redirect(request, "/configure")
    if again := repeated_reservation(targets):
        flash(request, again, "error")
        return redirect(request, "/configure")
    own = await _own(h, who, user)
    replies = await asyncio.gather(*(h.act(ref, who, rid, "destroy") for ref, rid in targets))
    await audit.on_reservations(request, user, "destroy", [
        (ref.name, rid, *own.get(f"{ref.id}:{rid}", ("", "")))
        for (ref, rid), reply in zip(targets, replies, strict=True) if reply.ok])
    ok = sum(1 for r in replies if r.ok)
    if ok:
        flash(request, f"{ok} reservation(s) cancelled; the nodes are free again.", "ok")
    names: dict[str, str] = {}
    if ok < len(replies):  # the refused ones are still waiting: their nodes' names
        names = {c.ref: c.reservation.node for c in (await configuring(h, who))[0]}
    for (ref, rid), reply in zip(targets, replies, strict=True):
        if not reply.ok:
            node = names.get(f"{ref.id}:{rid}") or f"reservation {rid}"
            why = name_the_node(reply.error, rid, node)
            flash(request, f"{node} on {ref.name}: not cancelled — {why}", "error")
    return redirect(request, "/configure")
