"""Manage: the user's reservations by bin, live progress, events, connection info and actions."""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from piseduce.webui.agents import AgentHub, AgentRef, Identity
from piseduce.webui.models import User
from piseduce.webui.web import current_user, form_list, form_str, hub, identity, is_htmx, render

router = APIRouter(prefix="/manage")

ACTIONS = {
    "reboot": "Reboot",
    "redeploy": "Deploy again (erases the node)",
    "destroy": "Destroy (wipe and release)",
    "extend": "Extend",
    "bootfiles": "Update boot files",
}
REF_RE = re.compile(r"^(\d{1,9}):(\d{1,10})$")
STATUS_CLASS = {
    "configuring": "st-wait",
    "scheduled": "st-wait",
    "deploying": "st-run",
    "deployed": "st-ok",
    "failed": "st-bad",
    "destroying": "st-run",
    "ended": "st-off",
    "cancelled": "st-off",
}


@dataclass
class Item:
    agent: AgentRef
    r: dict[str, Any]

    @property
    def dom_id(self) -> str:
        return f"n{self.agent.id}-{int(self.r.get('id', 0))}"

    @property
    def ref(self) -> str:
        return f"{self.agent.id}:{int(self.r.get('id', 0))}"

    @property
    def can_save_env(self) -> bool:
        """A deployed Pi at rest can be saved as an environment (the Environment factory page)."""
        return (self.agent.node_type == "raspberry" and self.r.get("status") == "deployed"
                and not self.r.get("process"))

    @property
    def status_class(self) -> str:
        return STATUS_CLASS.get(str(self.r.get("status")), "st-wait")

    @property
    def progress(self) -> int:
        """Overall % of the running process: finished steps plus the current step's share."""
        if self.r.get("status") == "deployed" and not self.r.get("process"):
            return 100
        try:
            step_pct = max(0.0, min(100.0, float(self.r.get("progress") or 0)))
            count = int(self.r.get("step_count") or 0)
            index = int(self.r.get("step_index") or 0)
        except (TypeError, ValueError):
            return 0
        if count > 0:
            return int(min(100.0, (min(index, count) + step_pct / 100) / count * 100))
        return int(step_pct)

    @property
    def ssh(self) -> str:
        conn = self.r.get("connection") or {}
        return str(conn.get("ssh", "")) if isinstance(conn, dict) else ""

    @property
    def connection(self) -> dict[str, Any]:
        conn = self.r.get("connection") or {}
        # The full host key is for machines (known_hosts); people compare the fingerprint.
        hidden = {"ssh", "host_key", "password_set"}
        return {k: v for k, v in conn.items() if k not in hidden} if isinstance(conn, dict) else {}


async def mine(h: AgentHub, who: Identity) -> tuple[list[Item], list[str]]:
    refs = h.refs()
    replies = await h.fan_out(
        refs, lambda r: h.call(r, "GET", "/api/reservations", who=who, params={"status": "active"})
    )
    items: list[Item] = []
    errors: list[str] = []
    for reply in replies:
        if not reply.ok or not isinstance(reply.data, list):
            errors.append(reply.words if not reply.ok else f"{reply.agent.name}: unexpected answer")
            continue
        for r in reply.data:
            # Defence in depth: only the user's own reservations, whatever an agent answers.
            if isinstance(r, dict) and r.get("owner") == who.email and isinstance(r.get("id"), int):
                items.append(Item(reply.agent, r))
    items.sort(key=lambda i: (str(i.r.get("bin")), i.agent.name, str(i.r.get("node"))))
    return items, errors


def _bins(items: list[Item]) -> list[tuple[str, list[Item]]]:
    bins: dict[str, list[Item]] = {}
    for it in items:
        if it.r.get("status") != "configuring":
            bins.setdefault(str(it.r.get("bin") or ""), []).append(it)
    return sorted(bins.items())


def _signature(items: list[Item]) -> str:
    keys = sorted(f"{i.ref}:{i.r.get('status') == 'configuring'}" for i in items)
    return hashlib.sha256("|".join(keys).encode()).hexdigest()[:16]


def _context(items: list[Item], errors: list[str]) -> dict[str, Any]:
    return {
        "bins": _bins(items),
        "errors": errors,
        "signature": _signature(items),
        "actions": ACTIONS,
        "waiting": sum(1 for i in items if i.r.get("status") == "configuring"),
    }


@router.get("")
async def manage_page(
    request: Request, user: User = Depends(current_user), h: AgentHub = Depends(hub)
) -> Response:
    items, errors = await mine(h, identity(request, user))
    return render(request, "manage.html", {"page": "manage", **_context(items, errors)})


@router.get("/bins")
async def bins_fragment(
    request: Request, user: User = Depends(current_user), h: AgentHub = Depends(hub)
) -> Response:
    items, errors = await mine(h, identity(request, user))
    return render(request, "_manage_bins.html", _context(items, errors))


@router.get("/updates")
async def updates(
    request: Request, user: User = Depends(current_user), h: AgentHub = Depends(hub)
) -> Response:
    """Out-of-band swaps of every node's live part; the page keeps its checkboxes and open panels."""
    items, errors = await mine(h, identity(request, user))
    return render(
        request,
        "_manage_updates.html",
        {
            "items": [i for i in items if i.r.get("status") != "configuring"],
            "errors": errors,
            "signature": _signature(items),
            "actions": ACTIONS,
        },
    )


@router.get("/events/{agent_id}/{rid}")
async def events(
    agent_id: int, rid: int, request: Request, user: User = Depends(current_user), h: AgentHub = Depends(hub)
) -> Response:
    who = identity(request, user)
    ref = next((r for r in h.refs() if r.id == agent_id), None)
    if ref is None:
        return render(request, "_events.html", {"error": "no such agent", "events": []})
    reply = await h.call(ref, "GET", f"/api/reservations/{rid}", who=who)
    if not reply.ok or not isinstance(reply.data, dict) or reply.data.get("owner") != who.email:
        return render(request, "_events.html", {"error": reply.error or "not found", "events": []})
    evs = [e for e in reply.data.get("events", []) or [] if isinstance(e, dict)]
    return render(request, "_events.html", {"events": list(reversed(evs)), "error": ""})


@router.post("/action")
async def action(
    request: Request, user: User = Depends(current_user), h: AgentHub = Depends(hub)
) -> Response:
    form = await request.form()
    who = identity(request, user)
    name = form_str(form, "action", 16)
    messages: list[tuple[str, str]] = []
    refs = {r.id: r for r in h.refs()}
    targets = []
    for ref_text in form_list(form, "sel", 32)[:1000]:
        m = REF_RE.match(ref_text)
        if m and int(m.group(1)) in refs:
            targets.append((refs[int(m.group(1))], int(m.group(2))))
    body: dict[str, Any] | None = None
    if name not in ACTIONS:
        messages.append(("error", "Choose an action."))
    elif not targets:
        messages.append(("error", "Select at least one node (tick its box)."))
    elif name == "extend":
        hours_text = form_str(form, "hours", 16).strip() or "0"
        try:
            hours = float(hours_text)
        except ValueError:
            hours = -1
        if not 0 <= hours <= 24 * 366:
            messages.append(("error", "Extend by a number of hours (0 = by the reservation's own length)."))
        body = {"hours": hours}
    if not messages:
        # The node names come from the user's own list, read in the same round trip.
        listing, replies = await asyncio.gather(
            mine(h, who),
            asyncio.gather(
                *(
                    h.call(ref, "POST", f"/api/reservations/{rid}/{name}", who=who, json=body)
                    for ref, rid in targets
                )
            ),
        )
        names = {it.ref: str(it.r.get("node")) for it in listing[0]}
        for (ref, rid), reply in zip(targets, replies, strict=True):
            data = reply.data if isinstance(reply.data, dict) else {}
            node = data.get("node") or names.get(f"{ref.id}:{rid}") or f"reservation {rid}"
            if reply.ok:
                extra = data.get("message") or data.get("status") or "accepted"
                messages.append(("ok", f"{ACTIONS[name].split(' (')[0]}: {node} on {ref.name}: {extra}"))
            else:
                messages.append(
                    (
                        "error",
                        f"{ACTIONS[name].split(' (')[0]}: reservation {rid} on {ref.name}: {reply.error}",
                    )
                )
    ctx = {"messages": messages}
    if is_htmx(request):
        resp = render(request, "_action_result.html", ctx)
        resp.headers["HX-Trigger"] = "manage-refresh"
        return resp
    items, errors = await mine(h, who)
    return render(request, "manage.html", {"page": "manage", **_context(items, errors), **ctx})
