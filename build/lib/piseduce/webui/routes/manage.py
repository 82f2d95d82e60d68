"""Manage: the user's reservations by bin, live progress, events, connection info and actions."""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from piseduce import sshjump
from piseduce.numbers import StrictInt
from piseduce.protocol import (
    CANCELLED,
    CONFIGURING,
    DEPLOYED,
    DEPLOYING,
    DESTROYING,
    ENDED,
    FAILED,
    SCHEDULED,
    AcceptedOut,
    Feature,
    ReservationOut,
)
from piseduce.webui import audit
from piseduce.webui.agent_client import AgentClient, Result, agents
from piseduce.webui.agents import AgentRef, Identity
from piseduce.webui.form_values import form_decimal
from piseduce.webui.jumps import jump_of
from piseduce.webui.models import ROLE_ADMIN, User
from piseduce.webui.node_words import name_the_node
from piseduce.webui.repeats import repeated_reservation
from piseduce.webui.web import (
    browser_zone,
    current_user,
    form_list,
    form_str,
    identity,
    is_htmx,
    local_text,
    render,
)

router = APIRouter(prefix="/manage")

ACTIONS = {
    "reboot": "Reboot",
    "redeploy": "Deploy again (erases the node)",
    "destroy": "Destroy (wipe and release)",
    "extend": "Extend",
    "bootfiles": "Update boot files",
}
# ASCII digits only: \d would also match "١٠" (which int() reads as 10).
REF_RE = re.compile(r"^([0-9]{1,9}):([0-9]{1,10})$")
STATUS_CLASS = {
    CONFIGURING: "st-wait",
    SCHEDULED: "st-wait",
    DEPLOYING: "st-run",
    DEPLOYED: "st-ok",
    FAILED: "st-bad",
    DESTROYING: "st-run",
    ENDED: "st-off",
    CANCELLED: "st-off",
}
# An action offered only by the agents that advertise its feature (GET /api/info).
ACTION_FEATURES = {"extend": Feature.EXTEND, "reboot": Feature.REBOOT, "redeploy": Feature.REDEPLOY,
                   "bootfiles": Feature.BOOTFILES}


def offered(agent: AgentRef, action: str) -> bool:
    feature = ACTION_FEATURES.get(action)
    return feature is None or agent.supports(feature)


@dataclass
class Item:
    agent: AgentRef
    r: ReservationOut
    mine: bool = True  # False: another user's, in an admin's list

    @property
    def dom_id(self) -> str:
        return f"n{self.agent.id}-{self.r.id}"

    @property
    def ref(self) -> str:
        return f"{self.agent.id}:{self.r.id}"

    @property
    def at_rest(self) -> bool:
        return self.r.status == DEPLOYED and not self.r.process

    @property
    def actions(self) -> list[str]:
        """What its buttons offer: what the agent allows now, of what the agent supports."""
        return [a for a in self.r.actions if a in ACTIONS and offered(self.agent, a)]

    @property
    def can_save_env(self) -> bool:
        """A deployed node at rest can be saved as an environment (the Environment factory page)."""
        return self.mine and self.agent.supports(Feature.SAVE_ENV) and self.at_rest

    @property
    def status_class(self) -> str:
        return STATUS_CLASS.get(self.r.status, "st-wait")

    @property
    def progress(self) -> int:
        """The agent's `progress`, shown as it comes: it is already the whole process' percentage
        (protocol.ReservationOut.progress, 0-100), never recombined with the step here."""
        return 100 if self.at_rest else self.r.progress

    @property
    def ssh(self) -> str:
        return self.r.ssh

    @property
    def connection(self) -> dict[str, Any]:
        conn = self.r.connection
        # The full host key is on its own line (known_hosts, below); the password is only "set": the
        # page may be shared on a screen.
        hidden = {"ssh", "host_key", "password_set"}
        shown = {k: v for k, v in conn.items() if k not in hidden}
        if "password_set" in conn:
            shown["password"] = "set" if conn.get("password_set") else "not set"
        return shown

    @property
    def jump(self) -> sshjump.Jump | None:
        """Through the agent's SSH gateway (from outside the lab): the command, the ~/.ssh/config
        block and its known_hosts lines; None unless the agent runs a gateway and the board is up."""
        return jump_of(self.agent, self.r)

    @property
    def known_hosts(self) -> str:
        """The line to append to ~/.ssh/known_hosts, as OpenSSH names the host: `host` on port 22,
        `[host]:port` elsewhere."""
        conn = self.r.connection
        key, host, port = conn.get("host_key"), conn.get("host"), conn.get("port") or 22
        if not isinstance(key, str) or not key.strip() or not isinstance(host, str) or not host:
            return ""
        key_type_and_blob = " ".join(key.split()[:2])
        name = host if str(port) == "22" else f"[{host}]:{port}"
        return f"{name} {key_type_and_blob}"


async def mine(h: AgentClient, who: Identity) -> tuple[list[Item], list[str]]:
    """The caller's active reservations of every agent; an admin's list holds every user's
    (`?all=true`, which the agents allow admins only)."""
    held, errors = await h.held(who, status="active", everyone=who.role == ROLE_ADMIN)
    items = [Item(x.agent, x.r, mine=x.mine) for x in held]
    items.sort(key=lambda i: (not i.mine, i.r.owner, i.r.bin, i.agent.name, i.r.node))
    return items, errors


def _shown(it: Item) -> bool:
    """One's own reservations waiting for their deploy form are on Configure, not here; an admin
    sees everyone else's whatever their status."""
    return not it.mine or it.r.status != CONFIGURING


def _bins(items: list[Item]) -> list[tuple[str, str, list[Item]]]:
    """(bin, owner, items): one's own bins first; another user's bin is headed with the owner."""
    bins: dict[tuple[bool, str, str], list[Item]] = {}
    for it in items:
        if _shown(it):
            owner = "" if it.mine else it.r.owner
            bins.setdefault((not it.mine, owner, it.r.bin), []).append(it)
    return [(bin_name, owner, its) for (_, owner, bin_name), its in sorted(bins.items())]


def _signature(items: list[Item]) -> str:
    keys = sorted(f"{i.ref}:{i.r.status == CONFIGURING}" for i in items)
    return hashlib.sha256("|".join(keys).encode()).hexdigest()[:16]


def _context(items: list[Item], errors: list[str]) -> dict[str, Any]:
    return {
        "bins": _bins(items),
        "errors": errors,
        "signature": _signature(items),
        "actions": ACTIONS,
        # The actions bar offers what at least one node shown supports (no Extend for IoT-LAB only).
        "bulk": {
            a: label for a, label in ACTIONS.items() if any(offered(i.agent, a) for i in items if _shown(i))
        },
        "waiting": sum(1 for i in items if i.mine and i.r.status == CONFIGURING),
        "everyone": any(not i.mine for i in items),
    }


@router.get("")
async def manage_page(
    request: Request, user: User = Depends(current_user), h: AgentClient = Depends(agents)
) -> Response:
    items, errors = await mine(h, identity(request, user))
    return render(request, "manage.html", {"page": "manage", **_context(items, errors)})


@router.get("/bins")
async def bins_fragment(
    request: Request, user: User = Depends(current_user), h: AgentClient = Depends(agents)
) -> Response:
    items, errors = await mine(h, identity(request, user))
    return render(request, "_manage_bins.html", _context(items, errors))


@router.get("/updates")
async def updates(
    request: Request, user: User = Depends(current_user), h: AgentClient = Depends(agents)
) -> Response:
    """Out-of-band swaps of every node's live part; the page keeps its checkboxes and open panels."""
    items, errors = await mine(h, identity(request, user))
    return render(
        request,
        "_manage_updates.html",
        {
            "items": [i for i in items if _shown(i)],
            "errors": errors,
            "signature": _signature(items),
            "actions": ACTIONS,
        },
    )


@router.get("/events/{agent_id}/{rid}")
async def events(
    agent_id: StrictInt,
    rid: StrictInt,
    request: Request,
    user: User = Depends(current_user),
    h: AgentClient = Depends(agents),
) -> Response:
    who = identity(request, user)
    ref = await h.find(agent_id)
    if ref is None:
        return render(request, "_events.html", {"error": "no such agent", "events": []})
    reply = await h.reservation(ref, who, rid)
    if reply.value is None or (reply.value.owner != who.email and who.role != ROLE_ADMIN):
        return render(request, "_events.html", {"error": reply.error or "not found", "events": []})
    return render(request, "_events.html", {"events": list(reversed(reply.value.events)), "error": ""})


async def _ask(
    h: AgentClient, who: Identity, ref: AgentRef, rid: int, name: str, hours: float
) -> Result[Any]:
    """One action on one reservation; refused here when its agent does not support it."""
    if not offered(ref, name):
        testbed = ref.about.testbed or f"{ref.node_type} nodes"
        return Result(ref, 409, None, f"{testbed} cannot {name} a reservation ({ref.name} does not offer it)")
    if name == "extend":
        return await h.extend(ref, who, rid, hours)
    return await h.act(ref, who, rid, name)


def _said(name: str, reply: Result[Any], zone: ZoneInfo) -> str:
    """What the agent's acceptance says, in words (extend: the new end, in the viewer's zone)."""
    value = reply.value
    if isinstance(value, ReservationOut):
        return f"now ends {local_text(value.end, zone)}"
    if isinstance(value, AcceptedOut):
        return value.message or value.status
    return "accepted"


async def _refused(request: Request, h: AgentClient, who: Identity, words: str) -> Response:
    """A bulk action refused as a whole for its selection (422; htmx swaps only a 2xx, so its
    fragment says it with 200 like the other refusals of the form)."""
    ctx = {"messages": [("error", words)]}
    if is_htmx(request):
        return render(request, "_action_result.html", ctx)
    items, errors = await mine(h, who)
    return render(request, "manage.html", {"page": "manage", **_context(items, errors), **ctx}, status=422)


@router.post("/action")
async def action(
    request: Request, user: User = Depends(current_user), h: AgentClient = Depends(agents)
) -> Response:
    form = await request.form()
    who = identity(request, user)
    name = form_str(form, "action", 16)
    messages: list[tuple[str, str]] = []
    refs = {r.id: r for r in await h.refs()}
    targets = []
    for ref_text in form_list(form, "sel", 32)[:1000]:
        m = REF_RE.match(ref_text)
        if m and int(m.group(1)) in refs:
            targets.append((refs[int(m.group(1))], int(m.group(2))))
    hours = 0.0
    if name not in ACTIONS:
        messages.append(("error", "Choose an action."))
    elif not targets:
        messages.append(("error", "Select at least one node (tick its box)."))
    elif again := repeated_reservation(targets):
        return await _refused(request, h, who, again)
    elif name == "extend":
        try:
            hours = form_decimal(form, "hours", "Extend by (hours)", lo=0, hi=24 * 366, default=0)
        except ValueError as exc:
            messages.append(("error", f"{exc} 0 extends by the reservation's own length."))
    if not messages:
        # The node names come from the user's own list, read in the same round trip.
        listing, replies = await asyncio.gather(
            mine(h, who), asyncio.gather(*(_ask(h, who, ref, rid, name, hours) for ref, rid in targets))
        )
        names = {it.ref: it.r.node for it in listing[0]}
        owners = {it.ref: it.r.owner for it in listing[0]}
        await audit.on_reservations(request, user, name, [
            (ref.name, rid, owners.get(f"{ref.id}:{rid}", ""), names.get(f"{ref.id}:{rid}", ""))
            for (ref, rid), reply in zip(targets, replies, strict=True) if reply.ok])
        for (ref, rid), reply in zip(targets, replies, strict=True):
            node = names.get(f"{ref.id}:{rid}") or f"reservation {rid}"
            verb = ACTIONS[name].split(" (")[0]
            if reply.ok:
                extra = _said(name, reply, browser_zone(request))
                kind = "ok"
            else:
                kind, extra = "error", reply.error
            messages.append((kind, f"{verb}: {node} on {ref.name}: {name_the_node(extra, rid, node)}"))
    ctx = {"messages": messages}
    if is_htmx(request):
        resp = render(request, "_action_result.html", ctx)
        resp.headers["HX-Trigger"] = "manage-refresh"
        return resp
    items, errors = await mine(h, who)
    return render(request, "manage.html", {"page": "manage", **_context(items, errors), **ctx})
