"""Environment factory: save the system of one of your deployed Raspberry Pi nodes as a new
environment (yours only) that you can deploy on other nodes.

The page lists the caller's deployed raspberry reservations of every agent (asked concurrently,
each call bounded by the hub's deadline); the POST forwards the name to that agent's
`register_env` action, whose progress shows on Manage like any other process."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from piseduce.webui.agents import AgentHub, AgentRef, Identity
from piseduce.webui.models import User
from piseduce.webui.web import current_user, flash, form_str, hub, identity, redirect, render

router = APIRouter(prefix="/env-factory")
PAGE = "/env-factory"
# The agent's own rule (agent/env_factory.py): a name that fails it would only earn a 422.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
REF_RE = re.compile(r"^(\d{1,9}):(\d{1,10})$")


async def deployed_nodes(h: AgentHub, who: Identity) -> tuple[list[dict[str, Any]], list[str]]:
    """The caller's deployed raspberry nodes: [{ref, node, agent, environment}], and agent errors."""
    refs = [r for r in h.refs() if r.node_type == "raspberry"]

    async def ask(ref: AgentRef) -> Any:
        return await h.call(ref, "GET", "/api/reservations", who=who, params={"status": "deployed"})

    nodes: list[dict[str, Any]] = []
    errors: list[str] = []
    for reply in await h.fan_out(refs, ask):
        if not reply.ok or not isinstance(reply.data, list):
            errors.append(reply.words if not reply.ok else f"{reply.agent.name}: unexpected answer")
            continue
        for r in reply.data:
            # Only the caller's own, whatever an agent answers.
            if (isinstance(r, dict) and r.get("owner") == who.email and r.get("status") == "deployed"
                    and isinstance(r.get("id"), int)):
                params = r.get("params") if isinstance(r.get("params"), dict) else {}
                nodes.append({
                    "ref": f"{reply.agent.id}:{r['id']}",
                    "node": str(r.get("node") or f"reservation {r['id']}"),
                    "agent": reply.agent.name,
                    "environment": str((params or {}).get("environment") or ""),
                })
    nodes.sort(key=lambda n: (n["agent"], n["node"]))
    return nodes, errors


@router.get("")
async def page(
    request: Request, node: str = "", user: User = Depends(current_user), h: AgentHub = Depends(hub)
) -> Response:
    """`node`: the reference of the node to preselect (Manage's "Save as environment" button)."""
    nodes, errors = await deployed_nodes(h, identity(request, user))
    return render(
        request, "env_factory.html", {"page": "env_factory", "nodes": nodes, "errors": errors, "chosen": node}
    )


@router.post("")
async def register(
    request: Request, user: User = Depends(current_user), h: AgentHub = Depends(hub)
) -> Response:
    form = await request.form()
    who = identity(request, user)
    ref_text = form_str(form, "node", 32)
    name = form_str(form, "name", 128).strip()
    if not NAME_RE.match(name):
        flash(request, "Environment name: 1 to 64 letters, digits, '.', '_' or '-', starting with a "
                       "letter or a digit.", "error")
        return redirect(request, PAGE)
    # Only a node of the caller's own list (read again now): a forged reference goes nowhere.
    nodes, _ = await deployed_nodes(h, who)
    chosen = next((n for n in nodes if n["ref"] == ref_text), None)
    m = REF_RE.match(ref_text)
    agent = next((r for r in h.refs() if m and r.id == int(m.group(1))), None)
    if chosen is None or m is None or agent is None:
        flash(request, "Choose one of your deployed Raspberry Pi nodes.", "error")
        return redirect(request, PAGE)
    reply = await h.call(agent, "POST", f"/api/reservations/{int(m.group(2))}/register_env", who=who,
                         json={"name": name})
    if reply.ok:
        flash(request, f"{chosen['node']} is being saved as the environment {name}: it reboots on its "
                       "netboot system, its card is copied, then it boots its own system again. Follow the "
                       "progress on Manage; the environment then appears in your Configure choices.", "ok")
    else:
        flash(request, f"{chosen['node']} could not be saved as {name}: {reply.words}", "error")
    return redirect(request, PAGE)
